"""Stored sweep state is trusted only when it is ours, private and signed (real Ray Tune, Optuna, MLflow).

Ray Tune's restore unpickles ``tuner.pkl``, the cloudpickled trials in ``experiment_state-*.json`` and
``searcher-state-*.pkl``: a file planted there runs code in the driver. The attacks below plant such a file
in a finished sweep; ``mcrlab sweep --resume`` must refuse it with one line and exit 2, and the planted code
must not run (its marker file stays absent). A control shows each planted file *would* run under a plain
``Tuner.restore``, so the refusal is what protects the driver. Locks: a second driver on one sweep or
ablation folder gets one line naming the folder and exit 2.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mcrlab.cli import main
from mcrlab.config import ConfigError
from mcrlab.trials import storage
from mcrlab.trials.storage import MANIFEST, FolderLock, TrustError, check_private, sign_tree, verify_tree

BASE = {"data": {"n_train": 64}, "model": {"hidden": 4, "latent": 2, "depth": 1},
        "method": {"name": "mcr", "num_perms": 2},
        "train": {"epochs": 1, "batch_size": 32, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}}
SPACE = {"name": "trust", "datasets": ["synthetic:competition"], "base": BASE, "metric": "val/acc",
         "mode": "max", "sampler": {"name": "random", "seed": 0}, "num_samples": 1,
         "scaling": {"workers": 1, "cpus_per_worker": 1},
         "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}}}


@pytest.fixture(autouse=True)
def private_key_home(tmp_path_factory, monkeypatch):
    """The per-user key goes to a test folder, never to the real ~/.config."""
    home = tmp_path_factory.mktemp("config")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


class _Payload:
    """Unpickling this writes a marker file: what a planted pickle would do."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------------------------------
# unit level: the key, the manifest, the mode checks


def test_key_is_created_0600_in_a_0700_folder_and_a_readable_key_is_refused(private_key_home):
    key = storage.state_key()
    path = storage.key_path()
    assert path.parent == private_key_home / "mcrlab" and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert storage.state_key() == key  # stable
    path.chmod(0o644)
    with pytest.raises(TrustError, match="mode 0600"):
        storage.state_key()


def test_manifest_refuses_edited_planted_and_unsigned_files(tmp_path):
    tree = tmp_path / "ray"
    (tree / "exp" / "trial_1").mkdir(parents=True)
    (tree / "exp" / "tuner.pkl").write_bytes(b"good")
    (tree / "exp" / "trial_1" / "params.pkl").write_bytes(b"params")
    (tree / "exp" / "trial_1" / "result.json").write_text("{}")  # data only: not signed, may change
    manifest = tmp_path / MANIFEST
    assert sign_tree(tree, manifest) == 2
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
    assert verify_tree(tree, manifest) == 2
    (tree / "exp" / "trial_1" / "result.json").write_text('{"epoch": 2}')
    assert verify_tree(tree, manifest) == 2
    # the previous version stays valid (Tune's staged copy may land after the driver died)
    (tree / "exp" / "tuner.pkl").write_bytes(b"newer")
    sign_tree(tree, manifest)
    (tree / "exp" / "tuner.pkl").write_bytes(b"good")
    verify_tree(tree, manifest)
    (tree / "exp" / "tuner.pkl").write_bytes(b"evil")
    with pytest.raises(TrustError, match="tuner.pkl does not match its signature"):
        verify_tree(tree, manifest)
    (tree / "exp" / "tuner.pkl").write_bytes(b"good")
    planted = tree / "exp" / "trial_1" / "checkpoint_000001" / "_dict_checkpoint.pkl"
    planted.parent.mkdir()
    planted.write_bytes(b"planted")  # never signed (signing skips checkpoints), always verified
    sign_tree(tree, manifest)
    with pytest.raises(TrustError, match="_dict_checkpoint.pkl is not in the manifest"):
        verify_tree(tree, manifest)
    planted.unlink()
    (tree / "exp" / "searcher-state-x.pkl").write_bytes(b"planted")
    with pytest.raises(TrustError, match="searcher-state-x.pkl is not in the manifest"):
        verify_tree(tree, manifest)
    # a manifest entry written without the key is worthless
    data = json.loads(manifest.read_text())
    data["files"]["exp/searcher-state-x.pkl"] = ["0" * 64]
    manifest.write_text(json.dumps(data))
    with pytest.raises(TrustError, match="does not match"):
        verify_tree(tree, manifest)
    manifest.unlink()
    with pytest.raises(TrustError, match="missing"):
        verify_tree(tree, manifest)


def _snapshot_tree(tmp_path):
    """A tree as Tune leaves it: experiment-level snapshot files and a trial folder, signed (driver running)."""
    tree = tmp_path / "sweep" / "ray"
    (tree / "exp" / "trial_1").mkdir(parents=True)
    (tree / "exp" / "experiment_state-a.json").write_text('{"v": 1}')
    (tree / "exp" / "tuner.pkl").write_bytes(b"tuner")
    (tree / "exp" / "trial_1" / "params.pkl").write_bytes(b"params")
    manifest = tmp_path / "sweep" / MANIFEST
    sign_tree(tree, manifest)
    return tree, manifest


def test_signing_keeps_the_signed_bytes_of_each_snapshot_file(tmp_path):
    tree, manifest = _snapshot_tree(tmp_path)
    copies = manifest.parent / storage.SIGNED_COPIES
    assert (copies / "exp" / "experiment_state-a.json").read_text() == '{"v": 1}'
    assert (copies / "exp" / "tuner.pkl").read_bytes() == b"tuner"
    assert not (copies / "exp" / "trial_1").exists()  # trial files are written once: no copies
    assert stat.S_IMODE((copies / "exp" / "tuner.pkl").stat().st_mode) == 0o600
    (tree / "exp" / "experiment_state-a.json").write_text('{"v": 2}')
    sign_tree(tree, manifest)
    assert (copies / "exp" / "experiment_state-a.json").read_text() == '{"v": 2}'
    assert json.loads(manifest.read_text())["closed"] is False
    sign_tree(tree, manifest, closed=True)
    assert json.loads(manifest.read_text())["closed"] is True


def test_a_snapshot_saved_after_the_last_signature_is_rolled_back_to_its_signed_version(tmp_path):
    """The kill window: Tune rewrote its snapshot, the driver died before signing it. The resume puts the
    signed bytes back (verify passes, the unsigned bytes are gone) and says so in one line per file."""
    tree, manifest = _snapshot_tree(tmp_path)
    state = tree / "exp" / "experiment_state-a.json"
    state.write_text('{"v": 2, "unsigned": true}')
    with pytest.raises(TrustError, match="does not match its signature"):
        verify_tree(tree, manifest, under=tree / "exp")
    lines = storage.recover_tree(tree, manifest, under=tree / "exp")
    assert len(lines) == 1 and "experiment_state-a.json" in lines[0] and "last signed version" in lines[0]
    assert state.read_text() == '{"v": 1}'
    assert verify_tree(tree, manifest, under=tree / "exp") == 3
    assert storage.recover_tree(tree, manifest, under=tree / "exp") == []  # nothing left to do


def test_the_previous_signed_copy_serves_when_the_driver_died_between_manifest_and_copy(tmp_path):
    """Signing writes the manifest first and the copies after; the manifest keeps the previous signature,
    so the copy left by a kill in between (the previous version) is still valid."""
    tree, manifest = _snapshot_tree(tmp_path)
    state = tree / "exp" / "experiment_state-a.json"
    copy = manifest.parent / storage.SIGNED_COPIES / "exp" / "experiment_state-a.json"
    state.write_text('{"v": 2}')
    sign_tree(tree, manifest)
    copy.write_text('{"v": 1}')  # as if the kill came before the copy of v2 was written
    state.write_text('{"v": 3}')  # and Tune saved once more
    assert len(storage.recover_tree(tree, manifest, under=tree / "exp")) == 1
    assert state.read_text() == '{"v": 1}'
    verify_tree(tree, manifest, under=tree / "exp")


def test_files_never_signed_are_set_aside_unread(tmp_path):
    """A snapshot (or trial file) written but never signed: moved out of the tree restore reads."""
    tree, manifest = _snapshot_tree(tmp_path)
    newer = tree / "exp" / "experiment_state-b.json"
    newer.write_text('{"v": "never signed"}')
    trial_pkl = tree / "exp" / "trial_2" / "params.pkl"
    trial_pkl.parent.mkdir()
    trial_pkl.write_bytes(b"never signed")
    lines = storage.recover_tree(tree, manifest, under=tree / "exp")
    assert len(lines) == 2 and all("never signed" in ln and "set aside" in ln for ln in lines)
    aside = manifest.parent / storage.UNVERIFIED / "exp"
    assert not newer.exists() and (aside / "experiment_state-b.json").read_text() == '{"v": "never signed"}'
    assert not trial_pkl.exists() and (aside / "trial_2" / "params.pkl").read_bytes() == b"never signed"
    assert stat.S_IMODE(aside.stat().st_mode) == 0o700
    verify_tree(tree, manifest, under=tree / "exp")


def test_nothing_is_recovered_that_is_not_provably_ours(tmp_path):
    """Left for verify_tree to refuse: a trial file that does not match its signature; a snapshot whose
    signed copy was edited too; any change to a tree whose driver ended (closed); a missing manifest."""
    tree, manifest = _snapshot_tree(tmp_path)
    params = tree / "exp" / "trial_1" / "params.pkl"
    params.write_bytes(b"edited")
    assert storage.recover_tree(tree, manifest, under=tree / "exp") == []
    assert params.read_bytes() == b"edited"
    with pytest.raises(TrustError, match="params.pkl does not match"):
        verify_tree(tree, manifest, under=tree / "exp")
    params.write_bytes(b"params")
    tuner = tree / "exp" / "tuner.pkl"
    tuner.write_bytes(b"evil")
    (manifest.parent / storage.SIGNED_COPIES / "exp" / "tuner.pkl").write_bytes(b"evil too")
    assert storage.recover_tree(tree, manifest, under=tree / "exp") == []
    with pytest.raises(TrustError, match="tuner.pkl does not match"):
        verify_tree(tree, manifest, under=tree / "exp")
    tree2, manifest2 = _snapshot_tree(tmp_path / "closed")
    sign_tree(tree2, manifest2, closed=True)
    (tree2 / "exp" / "tuner.pkl").write_bytes(b"evil")
    (tree2 / "exp" / "searcher-state-x.pkl").write_bytes(b"planted")
    assert storage.recover_tree(tree2, manifest2, under=tree2 / "exp") == []
    assert (tree2 / "exp" / "tuner.pkl").read_bytes() == b"evil"
    with pytest.raises(TrustError):
        verify_tree(tree2, manifest2, under=tree2 / "exp")
    manifest2.unlink()
    assert storage.recover_tree(tree2, manifest2, under=tree2 / "exp") == []


def test_state_writable_by_others_or_linked_is_refused(tmp_path):
    root = storage.private_dir(tmp_path / "sweep")
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    tree = root / "ray"
    (tree / "exp").mkdir(parents=True)
    pkl = tree / "exp" / "tuner.pkl"
    pkl.write_bytes(b"x")
    pkl.chmod(0o600)
    check_private(root, tree)
    pkl.chmod(0o666)
    with pytest.raises(TrustError, match="writable by group or others"):
        check_private(root, tree)
    pkl.chmod(0o600)
    (tree / "exp").chmod(0o777)
    with pytest.raises(TrustError, match="writable by group or others"):
        check_private(root, tree)
    (tree / "exp").chmod(0o700)
    pkl.unlink()
    pkl.symlink_to(tmp_path / "elsewhere.pkl")
    with pytest.raises(TrustError, match="symbolic link"):
        check_private(root, tree)


# --------------------------------------------------------------------------------------------------
# locks: two processes


LOCKER = textwrap.dedent("""
    import sys, time
    from mcrlab.trials.storage import FolderLock
    with FolderLock(sys.argv[1], "sweep"):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_a_second_driver_on_a_locked_folder_gets_one_line(tmp_path):
    folder = storage.private_dir(tmp_path / "sweep")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(folder)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError) as err:
            FolderLock(folder, "sweep").acquire()
        assert str(folder) in str(err.value) and f"pid {holder.pid}" in str(err.value)
        assert "\n" not in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    # the kernel drops the lock of a killed driver: no stale lock to clean up by hand
    with FolderLock(folder, "sweep"):
        pass


def test_a_second_ablation_driver_stops_before_mlflow_or_ray(tmp_path):
    from mcrlab.ablate.runner import run_ablation
    from mcrlab.ablate.spec import parse_spec

    spec = parse_spec({"name": "locked", "base": {"data": {"n_train": 64}}, "arms": {"b": {"train.lr": 0.01}},
                       "seeds": [0]}, str(tmp_path / "spec.yaml"))
    folder = storage.private_dir(tmp_path / "ablations" / "locked")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(folder)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        with pytest.raises(ConfigError, match="another mcrlab driver .* is running this ablation"):
            run_ablation(spec, uri, storage_path=tmp_path)
        assert not (tmp_path / "mlflow.db").exists()  # refused before the store was touched
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------------------------------
# a real sweep, then the attacks


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, ray_local):
    """One tiny finished sweep; each test works on a copy of its folder."""
    import shutil

    from mcrlab.tune.runner import run_sweep
    from mcrlab.tune.space import parse_space

    tmp = tmp_path_factory.mktemp("trust")
    key_home = tmp / "config"
    old = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(key_home)
    try:
        space_file = tmp / "trust.yaml"
        space_file.write_text(yaml.safe_dump(SPACE))
        result = run_sweep(parse_space(SPACE, str(space_file)), storage_path=tmp / "runs", progress=False)
    finally:
        if old is None:
            os.environ.pop("XDG_CONFIG_HOME")
        else:
            os.environ["XDG_CONFIG_HOME"] = old
    yield {"tmp": tmp, "space": space_file, "result": result, "key_home": key_home, "copy": shutil.copytree}


def _copy(finished_sweep, tmp_path, monkeypatch) -> tuple[Path, Path]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(finished_sweep["key_home"]))
    runs = tmp_path / "runs"
    finished_sweep["copy"](finished_sweep["tmp"] / "runs", runs, symlinks=True)
    sweep_dir = runs / "sweeps" / finished_sweep["result"].sweep_id
    return runs, sweep_dir


def test_a_sweep_folder_is_private_and_signed(finished_sweep):
    sweep_dir = finished_sweep["result"].sweep_dir
    assert stat.S_IMODE(sweep_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(sweep_dir.parent.stat().st_mode) == 0o700
    manifest = json.loads((sweep_dir / MANIFEST).read_text())["files"]
    exp = sweep_dir / "ray" / "synthetic-competition"
    names = {Path(k).name for k in manifest}
    assert "tuner.pkl" in names and any(n.startswith("searcher-state-") for n in names)
    assert any(n.startswith("experiment_state-") for n in names) and "params.pkl" in names
    for pkl in exp.rglob("*.pkl"):  # created with the sweep's 077 umask
        assert stat.S_IMODE(pkl.stat().st_mode) & 0o077 == 0, pkl


@pytest.mark.ray
def test_resume_of_untampered_state_is_allowed(finished_sweep, tmp_path, monkeypatch):
    runs, sweep_dir = _copy(finished_sweep, tmp_path, monkeypatch)
    # the copy keeps every file: the verification passes and the restored (finished) sweep just ends
    n = verify_tree(sweep_dir / "ray", sweep_dir / MANIFEST, under=sweep_dir / "ray" / "synthetic-competition")
    assert n >= 4
    code, err = _run(["sweep", str(finished_sweep["space"]), "--resume", "--storage", str(runs)])
    assert code == 0, err


PLANTS = ["tuner.pkl", "searcher-state-{ts}.pkl", "experiment_state-{ts}.json", "trial/params.pkl"]


@pytest.mark.ray
@pytest.mark.parametrize("target", PLANTS)
def test_a_planted_pickle_is_refused_and_never_runs(finished_sweep, tmp_path, monkeypatch, target):
    runs, sweep_dir = _copy(finished_sweep, tmp_path, monkeypatch)
    exp = sweep_dir / "ray" / "synthetic-competition"
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker)))
    if target == "trial/params.pkl":
        path = next(exp.glob("*/params.pkl"))
        path.write_bytes(payload)
    elif target.startswith("experiment_state"):
        path = next(exp.glob("experiment_state-*.json"))
        state = json.loads(path.read_text())
        # Tune decodes {"_type": "CLOUDPICKLE_FALLBACK", "value": hex} fields with cloudpickle.loads
        state["runner_data"]["_planted"] = {"_type": "CLOUDPICKLE_FALLBACK", "value": payload.hex()}
        path.write_text(json.dumps(state))
    else:
        path = next(exp.glob(target.replace("{ts}", "*")))
        path.write_bytes(payload)
    for attempt in range(2):  # a refused resume signs nothing: the planted file stays refused
        code, err = _run(["sweep", str(finished_sweep["space"]), "--resume", "--storage", str(runs)])
        line = _one_line(err)
        assert code == 2 and path.name in line and "refusing" in line, (attempt, line)
        assert not marker.exists(), "the planted pickle ran"
    if target in ("tuner.pkl", "experiment_state-{ts}.json"):
        # control: Ray's own restore of the same folder does run it (so the refusal is what saved us)
        from ray import tune

        name = "mcrlab-synthetic-competition"  # the study's trainable name: Tune checks it on restore
        from mcrlab.trials.signer import restoring_into

        tune.register_trainable(name, lambda config: None)
        # (restoring_into: the restored signer signs this copy, not the shared finished sweep it came from)
        with contextlib.suppress(Exception), restoring_into(str(sweep_dir / "ray"), str(sweep_dir / MANIFEST)):
            tune.Tuner.restore(str(exp), trainable=name).fit()  # tuner.pkl is read by restore, the state by fit
        assert marker.exists()


@pytest.mark.ray
def test_a_second_driver_on_a_running_sweep_gets_exit_2(finished_sweep, tmp_path, monkeypatch):
    runs, sweep_dir = _copy(finished_sweep, tmp_path, monkeypatch)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(sweep_dir)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = _run(["sweep", str(finished_sweep["space"]), "--resume", "--storage", str(runs)])
        line = _one_line(err)
        assert code == 2 and str(sweep_dir) in line and "another mcrlab driver" in line, line
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.ray
def test_a_planted_extra_file_and_a_group_writable_one_are_refused(finished_sweep, tmp_path, monkeypatch):
    runs, sweep_dir = _copy(finished_sweep, tmp_path, monkeypatch)
    exp = sweep_dir / "ray" / "synthetic-competition"
    newest = exp / "experiment_state-9999-99-99_99-99-99.json"  # Tune restores the newest state file
    newest.write_text(next(exp.glob("experiment_state-*.json")).read_text())
    code, err = _run(["sweep", str(finished_sweep["space"]), "--resume", "--storage", str(runs)])
    assert code == 2 and "not in the manifest" in _one_line(err)
    newest.unlink()
    (exp / "tuner.pkl").chmod(0o664)
    code, err = _run(["sweep", str(finished_sweep["space"]), "--resume", "--storage", str(runs)])
    assert code == 2 and "writable by group or others" in _one_line(err)


@pytest.mark.ray
def test_a_file_planted_in_another_studys_folder_is_refused_before_any_study_runs(finished_sweep, tmp_path,
                                                                                   monkeypatch):
    """Every study's signer signs the whole Tune tree, so the tree is verified whole, before the first study
    runs: a pickle planted beside (not inside) the resumed study's folder was signed by that study's signer
    and loaded by the next resume of the other study."""
    runs, sweep_dir = _copy(finished_sweep, tmp_path, monkeypatch)
    other = sweep_dir / "ray" / "synthetic-balanced"
    other.mkdir(mode=0o700)
    marker = tmp_path / "pwned"
    planted = other / "tuner.pkl"
    planted.write_bytes(pickle.dumps(_Payload(str(marker))))
    planted.chmod(0o600)
    for _ in range(2):
        code, err = _run(["sweep", str(finished_sweep["space"]), "--resume", "--storage", str(runs)])
        line = _one_line(err)
        assert code == 2 and "synthetic-balanced/tuner.pkl is not in the manifest" in line, line
    assert "synthetic-balanced/tuner.pkl" not in json.loads((sweep_dir / MANIFEST).read_text())["files"]
    assert not marker.exists()


def test_resume_names_a_sweep_id_never_a_path(tmp_path):
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    code, err = _run(["sweep", str(space), "--resume", "../../etc", "--storage", str(tmp_path / "runs")])
    assert code == 2 and "path separator" in _one_line(err)


# --------------------------------------------------------------------------------------------------
# the Ray token file


def test_a_readable_token_file_is_made_0600(tmp_path, monkeypatch):
    from mcrlab.trials.session import protect_token_files

    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir(mode=0o755)
    token.write_text("t" * 32)
    token.chmod(0o644)
    other = tmp_path / "team_token"
    other.write_text("u" * 32)
    other.chmod(0o640)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(other))
    fixed = protect_token_files(home=tmp_path)
    assert sorted(fixed) == sorted([str(token), str(token.parent), str(other)])
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(other.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert protect_token_files(home=tmp_path) == []


RAY_INIT = textwrap.dedent("""
    import os, stat, sys
    from pathlib import Path
    os.umask(0o022)
    import ray
    if sys.argv[1] == "plain":
        ray.init(num_cpus=1, include_dashboard=False)
    else:
        from mcrlab.trials.session import ray_init_private
        ray_init_private(num_cpus=1, include_dashboard=False)
    token = Path.home() / ".ray" / "auth_token"
    print(oct(stat.S_IMODE(token.stat().st_mode)), flush=True)
    ray.shutdown()
""")


@pytest.mark.ray
@pytest.mark.slow  # starts two local Ray clusters
def test_the_token_ray_creates_for_a_local_sweep_is_0600(tmp_path):
    """The `make run` path: a local `ray.init()` with token auth on (Ray's default) creates ~/.ray/auth_token.
    Plain Ray leaves it 0644 (the control); through mcrlab it is 0600."""
    modes = {}
    for how in ("plain", "mcrlab"):
        home = tmp_path / how
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS",
                                                                  "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
        env.update(HOME=str(home), PYTHONPATH=os.pathsep.join(sys.path), RAY_USAGE_STATS_ENABLED="0")
        proc = subprocess.run([sys.executable, "-c", RAY_INIT, how], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        modes[how] = proc.stdout.strip().splitlines()[-1]
    assert modes == {"plain": "0o644", "mcrlab": "0o600"}
