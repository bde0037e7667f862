"""Shared loaders for the infra/ and jobs/ structure tests (no cluster, no Docker, no network)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S_FILES = sorted([*INFRA.glob("kuberay/*.yaml"), *INFRA.glob("mlflow/*.yaml")])


def pinned(name: str) -> str:
    """The exact version of ``name`` in constraints.txt."""
    text = (ROOT / "constraints.txt").read_text()
    match = re.search(rf"^{re.escape(name)}==([^\s;#]+)", text, re.M | re.I)
    assert match, f"{name} is not pinned in constraints.txt"
    return match.group(1)


def k8s_docs() -> list[tuple[str, dict]]:
    """(file name, document) for every Kubernetes document under infra/."""
    out = []
    for path in K8S_FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((f"{path.parent.name}/{path.name}", doc))
    return out


@pytest.fixture(scope="module")
def docs() -> list[tuple[str, dict]]:
    return k8s_docs()


def by_kind(docs: list[tuple[str, dict]], kind: str) -> list[dict]:
    return [d for _, d in docs if d["kind"] == kind]


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(group name, pod spec) of every pod template in a workload document."""
    spec = doc.get("spec", {})
    if doc["kind"] == "RayCluster":
        groups = [("head", spec["headGroupSpec"]["template"]["spec"])]
        groups += [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
        return groups
    if doc["kind"] == "RayJob":
        return [("submitter", spec["submitterPodTemplate"]["spec"])]
    if doc["kind"] in ("Deployment", "StatefulSet"):
        return [(doc["metadata"]["name"], spec["template"]["spec"])]
    return []
