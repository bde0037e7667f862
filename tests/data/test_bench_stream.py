"""The streaming memory benchmark runs (its --smoke form) and reports peak RSS at two sizes 10x apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_stream_smoke_prints_peak_rss_for_both_loaders():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "bench_stream.py"), "--smoke"], capture_output=True,
                         text=True, env=env, check=True, timeout=600)
    result = json.loads(out.stdout)
    assert result["rows"] == [300, 3000]
    for loader in ("stream", "memory"):
        rss = result[loader]["peak_rss_mib"]
        assert len(rss) == 2 and all(r > 50 for r in rss)  # a real process with torch loaded
        assert result[loader]["ratio_10x"] == round(rss[1] / rss[0], 3)
        assert all(0.0 <= a <= 1.0 for a in result[loader]["test_acc"])
    assert all(r > 0 for r in result["stream"]["reader_peak_rss_mib"])  # data.workers=1: a reader process ran
