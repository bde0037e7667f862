"""Reading why a trial failed, from the error file Ray Tune writes (shared by the recorder and the display)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["last_error_line"]


def last_error_line(error_file: str) -> str:
    """The exception line of a Tune error file (``SomeError: message``), or ''."""
    try:
        text = Path(error_file).read_text() if error_file else ""
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    except OSError:
        return ""
    found = [ln for ln in lines if ": " in ln and ln.split(":", 1)[0].replace(".", "").isidentifier()]
    return (found[-1] if found else lines[-1] if lines else "")[:500]
