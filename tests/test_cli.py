"""The command line: help texts, `mcrlab train` end to end with --json, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mcrlab.cli.app import build_parser, main


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "train" in out and "examples:" in out


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_train_help_lists_every_config_key(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for key in ("data.name", "train.epochs", "train.player_lr", "method.lambda_m", "model.fusion"):
        assert key in out


def test_train_writes_metrics_and_config_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["train", "data.name=synthetic:balanced", "data.n_train=200", "train.epochs=2",
               "train.probe_epochs=10", "method.num_perms=4", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["config"]["method"]["name"] == "mcr" and doc["config"]["train"]["epochs"] == 2
    names = set(doc["metrics"])
    assert {"test/acc", "test/f1", "val/acc"} <= names
    assert any(k.startswith("test/head/") for k in names)
    assert any(k.startswith("test/probe/") for k in names)
    assert any(k.startswith("test/acc_type/") for k in names)
    captured = capsys.readouterr()
    assert "epoch   1/2" in captured.err and "test/acc" in captured.out


def test_print_config_resolves_overrides(capsys):
    assert main(["train", "train.lr=0.05", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["lr"] == 0.05


def test_console_script_exit_code_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "mcrlab.cli", "train", "method.name=nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "method.name: unknown method 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_flag_of_other_commands_is_theirs(tmp_path, capsys):
    """`train --resume` needs --checkpoint-dir; `ablate --resume` must not be held to that rule."""
    assert main(["train", "--resume"]) == 2
    assert "--resume needs --checkpoint-dir" in capsys.readouterr().err
    assert main(["ablate", str(tmp_path / "missing.yaml"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "missing.yaml" in err and "checkpoint-dir" not in err
