"""The architecture as a checked contract: no import cycles, the layering of pyproject.toml's import-linter
contract, a CLI whose help never loads the heavy stack, and a package that works installed from a wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLATFORM = ROOT / "platform"
HEAVY = ("torch", "ray", "mlflow", "optuna", "pandas", "pyarrow", "scipy", "matplotlib", "sklearn")
COMMANDS = ["sweep", "check", "ablate", "compare", "data", "submit", "cluster", "reproduce"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(PLATFORM)}


def test_no_import_cycles_between_modules():
    import grimp

    graph = grimp.build_graph("mcrlab")
    cycles = sorted({tuple(sorted((a, b))) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
                     if graph.chain_exists(importer=b, imported=a)})
    assert cycles == [], cycles


def test_layering_contract_is_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_layering_contract_would_catch_an_upward_import(tmp_path):
    """The contract bites: a copy of the package whose config imports the engine is reported broken."""
    import shutil

    copy = tmp_path / "platform"
    shutil.copytree(PLATFORM / "mcrlab", copy / "mcrlab", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "mcrlab" / "config.py").write_text((copy / "mcrlab" / "config.py").read_text()
                                                + "\nfrom mcrlab.engine import fit as _upward  # noqa\n")
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(copy)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "mcrlab.config -> mcrlab.engine" in proc.stdout, proc.stdout[-2000:]


def _modules_loaded_by_help(argv: list[str]) -> set[str]:
    code = ("import contextlib, io, sys\nfrom mcrlab.cli.app import build_parser\n"
            f"try:\n    with contextlib.redirect_stdout(io.StringIO()):\n"
            f"        build_parser().parse_args({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(filter(None, proc.stdout.strip().split(",")))


@pytest.mark.parametrize("argv", [["--help"], *[[c, "--help"] for c in COMMANDS]], ids=lambda a: " ".join(a))
def test_help_loads_none_of_the_heavy_stack(argv):
    """What keeps ``mcrlab --help`` fast (measured in docs/performance.md): no torch, Ray, MLflow, ..."""
    assert _modules_loaded_by_help(argv) == set()


def test_wheel_installs_into_a_fresh_venv_and_trains(tmp_path):
    """Installed, not checked out: a wheel in a new venv (dependencies borrowed from this one, the
    checkout's own editable path not), run from a folder outside the repository."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, timeout=600, capture_output=True)
    wheel = next(wheels.glob("mcrlab-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies, without processing this venv's .pth files (one of them is the checkout's editable path)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, timeout=600, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(py), "-c", "import mcrlab, mcrlab.cli; print(mcrlab.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where
    proc = subprocess.run([str(venv / "bin" / "mcrlab"), "train", "train.epochs=1", "data.n_train=64",
                           "train.probe_epochs=0", "train.device=cpu", "--quiet"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/acc" in proc.stdout
    assert not (work / "runs").exists() or (work / "runs").is_dir()  # outputs only where the user runs it


def test_rays_private_code_is_touched_only_in_trials_session():
    """One guarded place for Ray's internals (trials/session.py, with its version checks and tests): no other
    module imports a private Ray module or reaches a private attribute of a Ray module."""
    import ast
    import re

    private_module = re.compile(r"^ray(\.\w+)*\.(_\w+)")  # ray._private..., ray.train._internal...

    def offences(path: Path) -> list[str]:
        found, ray_names = [], set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("ray"):
                        ray_names.add((a.asname or a.name).split(".")[0])
                        found += [a.name] if private_module.match(a.name) else []
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ray"):
                found += [node.module] if private_module.match(node.module or "") else []
                found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
                ray_names |= {a.asname or a.name for a in node.names}
        for node in ast.walk(ast.parse(path.read_text())):  # e.g. tune_module._setup_signal_catching
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in ray_names):
                found.append(f"{node.value.id}.{node.attr}")
        return found

    offenders = {str(p.relative_to(ROOT)): o for p in (ROOT / "platform" / "mcrlab").rglob("*.py")
                 if p.name != "session.py" and (o := offences(p))}
    assert offenders == {}, offenders
    assert offences(ROOT / "platform" / "mcrlab" / "trials" / "session.py")  # the check sees what it guards
