"""The one Ray session module: its start-up workaround is applied only where it is needed and still fits.

These tests read the installed Ray (no cluster is started): they fail when a Ray bump makes the
workaround unnecessary (the hard-coded raylet wait is gone) or broken (``get_node`` changed), so the
guard in ``mcrlab.trials.session`` is revisited with every bump.
"""

from __future__ import annotations

import inspect
import time

import pytest

from mcrlab.trials import session


def test_workaround_applies_only_to_the_verified_ray_versions():
    assert session.patient_start_applies("2.60.0")
    assert session.patient_start_applies("2.60.3")
    assert not session.patient_start_applies("2.61.0")
    assert not session.patient_start_applies("3.0.0")


def test_installed_ray_still_hard_codes_the_raylet_wait_the_workaround_exists_for():
    import ray
    from ray._private import node, services

    if not session.patient_start_applies():
        pytest.fail(f"Ray {ray.__version__} is not in PATCHED_RAY: check whether the 30 s raylet wait is still "
                    "hard-coded (ray/_private/node.py), then extend PATCHED_RAY or delete the workaround")
    source = inspect.getsource(node.Node)
    assert "raylet_start_wait_time_s = 30" in source, "Ray no longer hard-codes the wait: drop the workaround"
    assert "ray._private.services.get_node(" in source, "Ray no longer polls get_node: the wrapper is useless"
    assert session.STARTUP_TIMEOUT_TEXT in source, "Ray's start-up timeout message changed: retries never match"
    assert list(inspect.signature(services.get_node).parameters) == ["gcs_address", "node_id"]


def test_patient_wrapper_retries_runtime_errors_until_the_node_registers():
    calls = []

    def flaky(gcs_address, node_id):
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RuntimeError("node info not available yet")
        return {"node_id": node_id}

    assert session._patient(flaky, wait_s=10.0)("addr", "n1") == {"node_id": "n1"}
    assert len(calls) == 3


def test_patient_wrapper_gives_up_after_its_wait_and_restores_get_node():
    from ray._private import services

    original = services.get_node

    def never(gcs_address, node_id):
        raise RuntimeError("never registers")

    with pytest.raises(RuntimeError, match="never registers"):
        session._patient(never, wait_s=0.0)("addr", "n1")
    with session._patient_raylet_wait(1.0):
        assert services.get_node is not original
    assert services.get_node is original
