"""infra/launcher/aws.yaml against Ray's own cluster-config schema, plus the security and GPU choices."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml

from tests.infra.conftest import INFRA, k8s_docs

CONFIG = yaml.safe_load((INFRA / "launcher" / "aws.yaml").read_text())


def test_valid_against_rays_cluster_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(CONFIG, schema)
    broken = {**CONFIG, "available_node_types": {"gpu_worker": {"node_config": {}}}}  # no resources
    try:
        jsonschema.validate(broken, schema)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("the schema check accepts a node type without resources")


def test_node_types_gpu_worker_and_autoscaling_bounds():
    types = CONFIG["available_node_types"]
    assert CONFIG["head_node_type"] in types
    assert types[CONFIG["head_node_type"]]["resources"]["CPU"] == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu, "a GPU worker type"
    workers = [t for name, t in types.items() if name != CONFIG["head_node_type"]]
    for t in workers:
        assert 0 <= t["min_workers"] <= t["max_workers"]
    assert sum(t["max_workers"] for t in workers) <= CONFIG["max_workers"]


def test_same_image_as_kuberay_token_auth_and_nothing_open_to_the_world():
    kuberay_images = {c["image"] for _, d in k8s_docs() if d["kind"] == "RayCluster"
                      for g in [d["spec"]["headGroupSpec"], *d["spec"]["workerGroupSpecs"]]
                      for c in g["template"]["spec"]["containers"]}
    assert {CONFIG["docker"]["image"]} == kuberay_images
    assert "--env RAY_AUTH_MODE=token" in CONFIG["docker"]["run_options"]
    assert CONFIG["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    head = " ".join(CONFIG["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    rules = CONFIG["provider"]["security_group"]["IpPermissions"]
    cidrs = [r["CidrIp"] for rule in rules for r in rule.get("IpRanges", [])]
    assert cidrs and "0.0.0.0/0" not in cidrs
    assert {(rule["FromPort"], rule["ToPort"]) for rule in rules} == {(22, 22)}, "SSH only; the rest via tunnel"
    assert "/mnt/shared:/mnt/shared" in " ".join(CONFIG["docker"]["run_options"])
