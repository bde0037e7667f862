"""Security defaults: loopback binding, token auth on, safe YAML, weights-only checkpoints, no secrets.

The cluster tests here capture the exact commands and environments ``mcrlab cluster up`` would start
(the process spawner is replaced by a recorder, nothing is launched; tests/test_cluster.py starts the
real services and probes them). The secret-leak check on a real sweep is in test_tracking_faults.py
(it needs Ray).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from mcrlab.cli import main
from mcrlab.cli.cluster import RUNTIME_ENV, build_runtime_env
from mcrlab.ops import cluster

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "platform" / "mcrlab"
SOURCES = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "jobs").glob("*.py")])
SECRETS = {"MLFLOW_TRACKING_PASSWORD": "mlflow-pw-5e1f0c", "AWS_SECRET_ACCESS_KEY": "aws-secret-9d3b77",
           "RAY_AUTH_TOKEN": "ray-token-41aa2c"}


# --------------------------------------------------------------------------------------------------
# the code: YAML and checkpoints


def _calls(pattern: str) -> list[tuple[str, int, str]]:
    rx = re.compile(pattern)
    hits = []
    for path in SOURCES:
        for no, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if rx.search(code):
                hits.append((str(path.relative_to(ROOT)), no, line.strip()))
    return hits


def test_sources_are_scanned():
    assert len(SOURCES) > 40 and PACKAGE / "engine" / "fit.py" in SOURCES


def test_yaml_is_only_safe_loaded():
    import yaml

    from mcrlab.config import StrictLoader

    unsafe = _calls(r"yaml\.(load|load_all|unsafe_load|unsafe_load_all|full_load|full_load_all)\(|"
                    r"yaml\.(Unsafe|Full)?Loader\b|Loader=")
    # the one yaml.load call passes the strict loader, a SafeLoader (no Python tags, no code)
    assert [h for h in unsafe if "Loader=StrictLoader" not in h[2]] == [], unsafe
    assert issubclass(StrictLoader, yaml.SafeLoader) and not issubclass(StrictLoader, yaml.FullLoader)
    assert _calls(r"yaml\.safe_load\(|Loader=StrictLoader"), "expected safe loading to be used"


def test_torch_load_always_weights_only_and_no_raw_pickle():
    loads = _calls(r"torch\.load\(")
    assert loads, "fit's resume path should be found"
    assert all("weights_only=True" in line for _, _, line in loads), loads
    assert _calls(r"\bpickle\.loads?\(|cloudpickle\.loads?\(|allow_pickle=True") == []


class _Payload:
    """Unpickling this runs code (writes a file): what a tampered checkpoint would do."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


def test_a_tampered_checkpoint_is_refused_and_runs_nothing(tmp_path):
    from mcrlab.config import RunConfig
    from mcrlab.engine.fit import CHECKPOINT_FILE, fit, load_checkpoint

    marker = tmp_path / "side_effect"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"model": _Payload(str(marker)), "epoch": 0}, ckpt / CHECKPOINT_FILE)
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_checkpoint(ckpt)
    cfg = RunConfig.from_dict({"data": {"n_train": 64}, "model": {"hidden": 4, "latent": 2, "depth": 1},
                               "train": {"epochs": 1, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}})
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        fit(cfg, resume_from=str(ckpt))
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# the local cluster: what `mcrlab cluster up` would start


class _FakeProc:
    pid = -1
    returncode = None

    def poll(self):
        return None


@pytest.fixture
def spawned(monkeypatch):
    """Record every (name, argv, env) ``cluster.start`` spawns; launch nothing, report every service up."""
    calls: list[tuple[str, list[str], dict[str, str]]] = []

    def spawn(name, cmd, env, state_dir):
        calls.append((name, list(cmd), dict(env)))
        return cluster.Service(name=name, pid=-1, log=str(Path(state_dir) / f"{name}.log")), _FakeProc()

    monkeypatch.setattr(cluster, "_spawn", spawn)
    monkeypatch.setattr(cluster, "_wait_until", lambda *a, **k: None)
    monkeypatch.setattr(cluster, "_alive_nodes", lambda *a, **k: 9)
    monkeypatch.setattr(cluster, "_http_ok", lambda *a, **k: b"{}")
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    return calls


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_cluster_up_binds_every_service_to_loopback_with_token_auth(spawned, tmp_path, capsys):
    assert main(["cluster", "up", "--state-dir", str(tmp_path / "state"), "--worker-cpus", "1"]) == 0
    out = capsys.readouterr().out
    names = [name for name, _, _ in spawned]
    assert sorted(names) == ["mlflow", "ray-head", "ray-worker"]
    for name, argv, env in spawned:
        joined = " ".join(argv)
        assert "0.0.0.0" not in joined and "::" not in joined.replace("::1", "")
        if name == "mlflow":
            assert _flag(argv, "--host") == "127.0.0.1"
        if name == "ray-head":
            assert _flag(argv, "--node-ip-address") == "127.0.0.1"
            assert _flag(argv, "--dashboard-host") == "127.0.0.1"  # dashboard and job API
        if name == "ray-worker":
            assert _flag(argv, "--node-ip-address") == "127.0.0.1"
            assert _flag(argv, "--address").startswith("127.0.0.1:")
        # token auth on for every Ray process, the token by path only, never a value in argv or env
        assert env["RAY_AUTH_MODE"] == "token"
        token_path = Path(env["RAY_AUTH_TOKEN_PATH"])
        token = token_path.read_text().strip()
        assert len(token) >= 32 and token not in joined
        assert "RAY_AUTH_TOKEN" not in env  # the user's own token does not leak into the cluster
        assert (token_path.stat().st_mode & 0o077) == 0
    state = cluster.load(tmp_path / "state")
    assert state.address.startswith("http://127.0.0.1:") and state.tracking_uri.startswith("http://127.0.0.1:")
    for value in SECRETS.values():
        assert value not in out


def test_no_cli_flag_turns_ray_auth_off():
    from mcrlab.cli.app import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    up = next(a for a in sub.choices["cluster"]._actions if a.__class__.__name__ == "_SubParsersAction")
    flags = {s for a in up.choices["up"]._actions for s in a.option_strings}
    assert not any("auth" in f or "host" in f for f in flags), flags
    # and the package sets RAY_AUTH_MODE=disabled only in the cluster module's explicit auth=False branch
    disabled = [h for h in _calls(r"RAY_AUTH_MODE.{0,6}disabled|\"disabled\"") if "cluster.py" not in h[0]]
    assert disabled == [], disabled


def test_runtime_env_carries_no_secret_from_the_environment(monkeypatch):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    env = build_runtime_env(ROOT / RUNTIME_ENV, ROOT, "http://127.0.0.1:5000")
    rendered = repr(env)
    for key, value in SECRETS.items():
        assert key not in rendered and value not in rendered
    from mcrlab.config import ConfigError

    with pytest.raises(ConfigError, match="looks like a secret"):
        build_runtime_env(ROOT / RUNTIME_ENV, ROOT, None, {"AWS_SECRET_ACCESS_KEY": "x"})
    with pytest.raises(ConfigError, match="password"):
        build_runtime_env(ROOT / RUNTIME_ENV, ROOT, "http://user:pw@127.0.0.1:5000")


# --------------------------------------------------------------------------------------------------
# names that become paths, values that go into MLflow filters


@pytest.mark.parametrize("name,fragment", [("../../../escape", "path separator"), ("a/b", "path separator"),
                                           ("..", "start with a dot"), (".hidden", "start with a dot"),
                                           ("a..b", "'..'"), ("x" * 101, "at most 100"),
                                           ("tab\there", "non-printable"), ("", "non-empty")])
def test_names_that_become_paths_are_checked(name, fragment):
    from mcrlab.config import ConfigError, check_name

    with pytest.raises(ConfigError, match=re.escape(fragment)):
        check_name(name, "x.yaml: name")
    assert check_name("o'brien-2 (v1)", "x.yaml: name") == "o'brien-2 (v1)"


def test_a_space_name_cannot_escape_the_storage_folder(tmp_path):
    import yaml

    space = {"name": "../../../escape", "datasets": ["synthetic:competition"], "base": {"data": {"n_train": 64}},
             "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1}}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    assert main(["sweep", str(path), "--storage", str(tmp_path / "a" / "b" / "runs")]) == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["space.yaml"]  # nothing written anywhere


@pytest.mark.parametrize("value", ["it's", 'say "hi"', "back\\slash", "a`b", "plain"])
def test_tag_values_with_quotes_are_found_by_real_mlflow_filters(tmp_path, value):
    from mcrlab.tracking import Tracker, find_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, tmp_path)
    exp = tracker.experiment(f"sweep/{value}")
    run = tracker.start_run(exp, "r", tags={"mcrlab.kind": "study", "mcrlab.study": value, "mcrlab.sweep_id": value},
                            key_tags=("mcrlab.kind", "mcrlab.study"))
    tracker.start_run(exp, "other", tags={"mcrlab.kind": "study", "mcrlab.study": value + "x"})
    # reopening by key tags finds the same run (resume writes no duplicate), find_runs finds exactly it
    again = tracker.start_run(exp, "r", tags={"mcrlab.kind": "study", "mcrlab.study": value, "mcrlab.sweep_id": value},
                              key_tags=("mcrlab.kind", "mcrlab.study"))
    assert again == run
    found = find_runs(uri, kind="study", tags={"study": value, "sweep_id": value})
    assert [r["run_id"] for r in found] == [run]


def test_a_value_with_both_quotes_is_refused_in_one_line(tmp_path):
    import yaml

    from mcrlab.config import ConfigError
    from mcrlab.tracking import filter_value

    with pytest.raises(ConfigError, match="both ' and"):
        filter_value("it's \"x\"")
    space = {"name": "s", "datasets": ["/data/it's \"x\""], "base": {"data": {"n_train": 64}},
             "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1}}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    assert main(["check", str(path)]) == 2


@pytest.mark.ray
def test_a_sweep_whose_name_holds_an_apostrophe_runs_and_resumes(ray_local, tmp_path, monkeypatch):
    """The filter an apostrophe broke is used after Ray started (trial runs found by their tags)."""
    import yaml

    from mcrlab.tracking import find_runs

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    space = {"name": "o'brien", "datasets": ["synthetic:competition"], "metric": "val/acc",
             "base": {"data": {"n_train": 64}, "model": {"hidden": 4, "latent": 2, "depth": 1},
                      "train": {"epochs": 1, "batch_size": 32, "probe_epochs": 0, "eval_perms": 1,
                                "device": "cpu"}},
             "sampler": {"name": "random", "seed": 0}, "num_samples": 1,
             "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1}}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    runs = tmp_path / "runs"
    assert main(["sweep", str(path), "--storage", str(runs)]) == 0
    assert main(["sweep", str(path), "--resume", "--storage", str(runs)]) == 0
    trials = find_runs(f"sqlite:///{runs / 'mlflow.db'}", kind="trial")
    assert len(trials) == 1 and trials[0]["tags"]["mcrlab.sweep_id"].startswith("o'brien-")
