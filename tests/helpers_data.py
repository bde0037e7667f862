"""A tiny hand-built two-modality dataset for loop tests (no generator dependency)."""

from __future__ import annotations

import numpy as np

from mcrlab.data import MultimodalDataset, Split


def toy_dataset(n_train: int = 96, seed: int = 0, num_modalities: int = 2) -> MultimodalDataset:
    """Binary labels; modality 0 carries a strong linear signal, the others a weak one. Shapes (N, 6/4)."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> Split:
        y = rng.integers(0, 2, n)
        xs = [(rng.normal(size=(n, 6)) + 1.5 * y[:, None]).astype(np.float32)]
        xs += [(rng.normal(size=(n, 4)) + 0.4 * y[:, None]).astype(np.float32)
               for _ in range(num_modalities - 1)]
        return Split(xs, y.astype(np.int64), rng.integers(0, 2, n))

    return MultimodalDataset("toy", [f"m{m}" for m in range(num_modalities)], 2,
                             {"train": split(n_train), "val": split(48), "test": split(48)}, ["a", "b"])
