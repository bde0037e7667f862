"""Bad input: every case of the corpus ends in one clear line and exit code 2, with nothing started.

The corpus (tests/reliability/corpus/index.yaml) holds malformed configs, search spaces, ablation specs
and data files, each run through the real CLI (``mcrlab.cli.app``, in-process; a few as subprocesses).
For each: exit code 2, exactly one error line naming the file and the key, no traceback, no Ray
started, and the working directory (where the default ./runs store would go) left empty.

Property-based tests (hypothesis) on the config parser: ``RunConfig.from_dict`` on random nested data
raises nothing but ConfigError, and valid random overrides round-trip. (The search-space parser has
its own hypothesis tests in tests/tune/test_space.py.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcrlab.cli import main
from mcrlab.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig

CORPUS = Path(__file__).resolve().parent / "corpus"
CASES = yaml.safe_load((CORPUS / "index.yaml").read_text())["cases"]


def _case_id(case: dict) -> str:
    return f"{case['command'][0]}:{case['file']}"


def _args(case: dict, tmp: Path) -> list[str]:
    return [a.replace("{file}", str(CORPUS / case["file"])).replace("{tmp}", str(tmp)) for a in case["command"]]


def _check_message(case: dict, err: str, out: str) -> None:
    assert "Traceback" not in err + out, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("mcrlab: error:", "error:"))]
    assert len(errors) == 1 and errors[0] == lines[-1], f"expected one final error line, got:\n{err}"
    message = errors[0]
    # values are quoted at most ~80 characters: a message stays short whatever the file holds
    assert len(message) <= 400, f"a {len(message)}-character message: {message[:200]}..."
    assert case["file"] in message, f"the message does not name {case['file']}: {message}"
    for fragment in case["expect"]:
        assert fragment in message, f"{fragment!r} not in: {message}"


def test_corpus_is_large_and_every_file_is_used():
    assert len(CASES) >= 40
    kinds = {c["file"].split("/")[0] for c in CASES}
    assert kinds == {"configs", "spaces", "ablations", "data"}
    used = {c["file"] for c in CASES}
    on_disk = {str(p.relative_to(CORPUS)) for kind in kinds for p in (CORPUS / kind).iterdir()}
    assert on_disk == used, f"corpus files without a case: {on_disk - used}"
    commands = {c["command"][0] if c["command"][0] != "data" else " ".join(c["command"][:2]) for c in CASES}
    assert commands == {"train", "check", "sweep", "ablate", "data import", "data show", "submit"}


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_input_ends_in_one_clear_line_and_exit_2(case, tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # the default run folder (./runs) would appear here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    err, out = io.StringIO(), io.StringIO()
    # another test of the session may have started the shared Ray fixture already: then only the
    # subprocess cases below can prove that nothing starts Ray
    ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(_args(case, work))
    assert code == 2, f"exit {code}; stderr:\n{err.getvalue()}"
    _check_message(case, err.getvalue(), out.getvalue())
    ray = sys.modules.get("ray")
    assert ray_before or ray is None or not ray.is_initialized(), "Ray was started"
    assert sorted(p.name for p in work.rglob("*")) == [], "files were written"


SUBPROCESS = ["configs/unknown_key_typo.yaml", "spaces/range_empty_low_above_high.yaml",
              "data/npz_not_an_archive.npz"]


@pytest.mark.slow  # each subprocess imports torch: seconds
@pytest.mark.parametrize("name", SUBPROCESS)
def test_a_few_cases_through_a_real_process(name, tmp_path):
    case = next(c for c in CASES if c["file"] == name)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "mcrlab.cli", *_args(case, tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    _check_message(case, proc.stderr, proc.stdout)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# property-based: the config parser


SECTION_KEYS = {name: [f.name for f in dataclasses.fields(cls)]
                for name, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig))}
SECTION_KEYS["method"] = ["name", "lambda_m", "num_perms", "divergence", "strategy"]
# keys and strings as a YAML file can hold them on one line (a message quoting them stays one line)
text = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=12)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), text)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(text, inner, max_size=3)),
                      max_leaves=6)
known_key = st.sampled_from(sorted(SECTION_KEYS)).flatmap(
    lambda s: st.tuples(st.just(s), st.sampled_from(SECTION_KEYS[s])))
section = st.dictionaries(st.one_of(st.sampled_from(sorted({k for ks in SECTION_KEYS.values() for k in ks})),
                                    text), values, max_size=4)
raw_configs = st.one_of(values, st.dictionaries(st.one_of(st.sampled_from(sorted(SECTION_KEYS)), text),
                                                st.one_of(section, values), max_size=4))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=raw_configs)
def test_from_dict_on_random_data_raises_only_config_error(raw):
    try:
        cfg = RunConfig.from_dict(raw, "<random>")
    except ConfigError as err:
        assert "\n" not in str(err) and str(err).startswith("<random>")
        return
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # whatever it accepts is a fixed point


@settings(max_examples=150, deadline=None)
@given(key=known_key, value=values)
def test_one_random_value_at_a_known_key_raises_only_config_error(key, value):
    raw = {key[0]: {key[1]: value}}
    if key[0] == "method" and key[1] != "name":
        raw["method"]["name"] = "mcr"
    try:
        RunConfig.from_dict(raw, "cfg.yaml")
    except ConfigError as err:
        assert str(err).startswith("cfg.yaml: ") and "\n" not in str(err)


def _valid_value(section: str, f: dataclasses.Field) -> st.SearchStrategy:
    meta = f.metadata or {}
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if f.name == "resplit":  # valid only beside a stored split; data.name keeps its synthetic default here
        return st.just("none")
    if meta.get("choices"):
        return st.sampled_from(meta["choices"])
    if isinstance(default, bool):
        return st.booleans()
    lo = meta.get("ge", meta.get("gt"))
    hi = meta.get("le")
    if isinstance(default, int):
        low = int(lo) if lo is not None else 0
        if f.name == "num_modalities":
            return st.sampled_from([0, 2, 3])
        return st.integers(low + (1 if meta.get("gt") is not None else 0), int(hi) if hi is not None else low + 500)
    if isinstance(default, float):
        low = float(lo) if lo is not None else 0.0
        return st.floats(low, float(hi) if hi is not None else low + 100.0, allow_nan=False,
                         exclude_min=meta.get("gt") is not None)
    return st.just(default)  # lists and strings with their own rules (data.name, player_lr) keep defaults


overrides = st.lists(
    st.sampled_from([(s, f) for s, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig))
                     for f in dataclasses.fields(cls)]).flatmap(
        lambda sf: st.tuples(st.just(f"{sf[0]}.{sf[1].name}"), _valid_value(*sf))),
    min_size=1, max_size=6)


@settings(max_examples=100, deadline=None)
@given(items=overrides)
def test_valid_random_overrides_round_trip(items):
    wanted = dict(items)
    cfg = RunConfig().replace(wanted)
    flat = cfg.flat()
    for key, value in wanted.items():
        assert flat[key] == value
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.hash() == cfg.hash()
    # and through the command-line form (section.key=value parsed as YAML)
    text = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in wanted.items()]
    assert RunConfig().replace(text) == cfg


# --------------------------------------------------------------------------------------------------
# classes of bad input through the real CLI (in-process), property-based: exit 2, one line, no traceback

# values no key accepts: NaN and infinities (every number must be finite), integers past 2^63 (past every
# declared bound, int32 and float precision) and strings past the length cap (for string keys) or of the
# wrong type (for every other key)
UNIVERSALLY_BAD = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf]),
                            st.integers(2**63, 2**70), st.integers(-(2**70), -(2**63)),
                            st.text(st.sampled_from("ab'\"/."), min_size=4097, max_size=4200))


def _all_keys() -> list[tuple[str, str]]:
    from mcrlab.methods import REGISTRY

    keys = [(s, f.name) for s, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig))
            for f in dataclasses.fields(cls)]
    keys += [("method", f.name) for f in dataclasses.fields(REGISTRY["mcr"].Params) if f.init]
    return keys


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def _assert_one_line(code: int, err: str, path: Path, key: str) -> None:
    assert code == 2, f"exit {code}: {err}"
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(("mcrlab: error:", "error:")), err
    assert str(path) in lines[0] and key in lines[0], lines[0]
    assert len(lines[0]) <= 400, lines[0][:200]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(_all_keys()), value=UNIVERSALLY_BAD, as_list=st.booleans())
def test_any_key_with_a_bad_value_is_exit_2_one_line(tmp_path, key, value, as_list):
    section, name = key
    if as_list and name in ("player_lr", "adaptive_band"):
        value = [1.0, value]  # inside a list too
    raw = {section: {name: value, **({"name": "mcr"} if section == "method" and name != "name" else {})}}
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(raw, width=10**6))
    code, err = _cli(["train", str(path), "--print-config"])
    _assert_one_line(code, err, path, f"{section}.{name}")


SPACE_KEYS = [("scaling", k) for k in ("workers", "cpus_per_worker", "gpus_per_worker", "max_concurrent")]
SPACE_KEYS += [("objective", k) for k in ("seeds", "z", "seed")] + [("sampler", "seed"), ("scheduler", "grace_period"),
                                                                  ("scheduler", "reduction_factor")]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(SPACE_KEYS), value=UNIVERSALLY_BAD)
def test_any_space_key_with_a_bad_value_is_exit_2_one_line(tmp_path, key, value):
    section, name = key
    raw = {"name": "fuzz", "datasets": ["synthetic:competition"], "base": {"data": {"n_train": 64}},
           "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1}},
           section: {name: value, **({"name": "asha"} if section == "scheduler" else {})}}
    path = tmp_path / "fuzz_space.yaml"
    path.write_text(yaml.safe_dump(raw, width=10**6))
    code, err = _cli(["check", str(path), "-n", "1"])
    _assert_one_line(code, err, path, f"{section}.{name}")


def test_file_kinds_that_are_not_yaml_text(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # reading it would block forever
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"train:\n  lr: 0.1\x00\n")
    for path, fragment in ((big, "at most 1048576 bytes"), (fifo, "not a regular file"), (folder, "is a folder"),
                           (nul, "character YAML does not allow")):
        code, err = _cli(["train", str(path), "--print-config"])
        _assert_one_line(code, err, path, fragment)
    # an override is YAML too: duplicate keys and alias bombs are refused there as well
    code, err = _cli(["train", "--print-config", "method.name=mcr", "train.player_lr=[&a 1, *a, *a]"])
    assert code == 0, err  # aliases as such are fine
    code, err = _cli(["train", "--print-config", "train.adaptive_band={a: 1, a: 2}"])
    assert code == 2 and "duplicate key 'a'" in err


def test_an_alias_bomb_is_refused_before_it_expands():
    """The 9^9-value document is refused from its node graph (tens of nodes), never built: the refusal
    comes from the size check itself, not from a timeout or memory error."""
    from mcrlab.config import MAX_YAML_NODES, StrictLoader, load_yaml_text

    bomb = (CORPUS / "configs" / "alias_bomb.yaml").read_text()
    assert len(bomb) < 600
    loader = StrictLoader(bomb)
    try:
        with pytest.raises(yaml.YAMLError, match=f"more than {MAX_YAML_NODES}"):
            loader.get_single_node()
    finally:
        loader.dispose()
    with pytest.raises(ConfigError, match="expands to more than"):
        load_yaml_text(bomb, "bomb.yaml")
    # the same shape, small enough, loads and shares its nodes
    small = load_yaml_text("a: &a [1, 2]\nb: [*a, *a]\n", "ok.yaml")
    assert small == {"a": [1, 2], "b": [[1, 2], [1, 2]]}


# --------------------------------------------------------------------------------------------------
# metric names and tracking URIs, checked before anything starts


def test_reported_metrics_are_what_fit_reports():
    """``check``'s list of metric names against a real (tiny) fit: a metric renamed in training, or one
    the list invents, fails here."""
    from mcrlab.data import load_dataset
    from mcrlab.engine.fit import fit
    from mcrlab.tune.check import present_info_types, reported_metrics

    cfg = RunConfig.from_dict({"data": {"n_train": 64}, "model": {"hidden": 4, "latent": 2, "depth": 1},
                               "train": {"epochs": 1, "batch_size": 32, "probe_epochs": 2, "eval_perms": 1,
                                         "device": "cpu"}})
    data = load_dataset(cfg.data)
    final = fit(cfg)
    got = {k for k in final if k.startswith(("val/", "test/"))} | ({"train/loss"} & set(final))
    assert present_info_types(data), "the synthetic preset has information types: the test needs them"
    assert got == reported_metrics(list(data.modalities), present_info_types(data), probes=True)
    without = reported_metrics(list(data.modalities), [], probes=False)
    assert not any(k.startswith(("test/probe/", "test/acc_type/")) for k in without)


@pytest.mark.parametrize("uri,fragment", [
    ("sqlite://x", "not a SQLite file URI"), ("sqlite:///:memory:", "names no database file"),
    ("databricks", "not supported"), ("databricks://profile", "not supported"),
    ("postgresql://u@db/mlflow", "unsupported scheme 'postgresql'"), ("./mlruns", "file store"),
    ("http:///mlflow", "has no host"), ("http://user:secret@127.0.0.1:5000", "credentials in the URI"),
    ("http://127.0.0.1:99999", "invalid port"),
])
def test_unsupported_tracking_uris_are_refused_before_anything_starts(uri, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    space = CORPUS.parent.parent.parent / "search_spaces" / "default.yaml"
    for argv in (["sweep", str(space), "--smoke", "--tracking-uri", uri, "--storage", str(tmp_path / "runs")],
                 ["check", str(space), "-n", "0", "--tracking-uri", uri]):
        code, err = _cli(argv)
        assert code == 2 and fragment in err and "Traceback" not in err, err
        assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
        assert "secret" not in err
    assert list(tmp_path.iterdir()) == [], "something was created (sqlite://x used to create 'sqlite:/')"


ABLATION_KEYS = [("resources", k) for k in ("workers", "cpus", "gpus", "max_concurrent")]
ABLATION_KEYS += [("arms", "b"), ("seeds", None), ("base", "train.lr")]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(ABLATION_KEYS), value=UNIVERSALLY_BAD)
def test_any_ablation_key_with_a_bad_value_is_exit_2_one_line(tmp_path, key, value):
    section, name = key
    raw = {"name": "fuzz", "experiment": "fuzz", "base": {"data": {"n_train": 64}, "train": {"epochs": 1}},
           "arms": {"b": {"train.lr": 0.01}}, "seeds": [0]}
    if section == "resources":
        raw["resources"] = {name: value}
        expect = f"resources.{name}"
    elif section == "arms":
        raw["arms"]["b"] = {"method.lambda_m": value}
        expect = "lambda_m"
    elif section == "seeds":
        raw["seeds"] = [0, value]
        expect = "seed"
    else:
        raw["base"]["train"]["lr"] = value
        expect = "train.lr"
    path = tmp_path / "fuzz_ablation.yaml"
    path.write_text(yaml.safe_dump(raw, width=10**6))
    code, err = _cli(["ablate", str(path), "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    _assert_one_line(code, err, path, expect)
    assert not (tmp_path / "m.db").exists()
