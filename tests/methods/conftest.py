"""Tiny hand-built datasets for the method tests (3 classes; modality 0 strong, the others weak)."""

from __future__ import annotations

import numpy as np
import pytest

from mcrlab.data import MultimodalDataset, Split


def tiny_dataset(num_modalities: int = 2, n_train: int = 96, seed: int = 0, C: int = 3) -> MultimodalDataset:
    rng = np.random.default_rng(seed)

    def split(n: int) -> Split:
        y = rng.integers(0, C, n)
        xs = [(rng.normal(size=(n, 5)) + (1.5 if m == 0 else 0.5) * np.eye(C, 5)[y]).astype(np.float32)
              for m in range(num_modalities)]
        return Split(xs, y.astype(np.int64))

    return MultimodalDataset("tiny", [f"m{m}" for m in range(num_modalities)], C,
                             {"train": split(n_train), "val": split(48), "test": split(48)})


@pytest.fixture(autouse=True, scope="session")
def _pretrain_cache(tmp_path_factory):
    """Unimodal pre-trainings (model.init, UMT's teachers) go to a folder of this test session, not ~/.cache."""
    from mcrlab.engine.pretrain import CACHE_ENV

    mp = pytest.MonkeyPatch()
    mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("mcrlab-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny2() -> MultimodalDataset:
    return tiny_dataset(2)


@pytest.fixture(scope="session")
def tiny3() -> MultimodalDataset:
    return tiny_dataset(3)

