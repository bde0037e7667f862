"""Studies built from sweeps and ablations: ``reproduce`` (the paper's comparison)."""
