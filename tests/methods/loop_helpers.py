"""Helpers of the behavioural method tests: a tiny synthetic:imbalanced and the training loop's hook order."""

from __future__ import annotations

from mcrlab.data import MultimodalDataset


def imbalanced(n_train: int = 256, seed: int = 0) -> MultimodalDataset:
    """synthetic:imbalanced at a tiny size: modality 0 strong (8 dims, high SNR), modality 1 weak."""
    from mcrlab.config import DataConfig
    from mcrlab.data import load_dataset

    return load_dataset(DataConfig(name="synthetic:imbalanced", n_train=n_train, seed=seed))


def drive(method, model, data: MultimodalDataset, optimizer, epochs: int, batch_size: int = 32, seed: int = 0,
          on_step=None, on_epoch=None) -> None:
    """The hooks in the order ``mcrlab.engine.fit.fit`` calls them (no evaluation, no checkpoints), so a test can look
    at the method's state after every step: ``on_step(epoch, step)`` after optimizer.step, ``on_epoch(epoch)``
    after ``on_epoch_end``."""
    import torch

    from mcrlab.methods.base import StepContext

    xs = [torch.as_tensor(x, dtype=torch.float32) for x in data.splits["train"].x]
    y = torch.as_tensor(data.splits["train"].y, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    steps = max(1, len(y) // batch_size)
    g = 0
    for epoch in range(epochs):
        ctx = StepContext(epoch=epoch, step=0, global_step=g, epochs=epochs, steps_per_epoch=steps,
                          generator=gen, device=torch.device("cpu"), optimizer=optimizer)
        method.on_epoch_start(epoch, ctx)
        perm = torch.randperm(len(y), generator=gen)
        for step in range(steps):
            idx = perm[step * batch_size:(step + 1) * batch_size]
            ctx.step, ctx.global_step = step, g
            optimizer.zero_grad(set_to_none=True)
            res = method.training_step(model, [x[idx] for x in xs], y[idx], ctx)
            if not res.backward_done:
                res.loss.backward()
            method.after_backward(model, ctx)
            optimizer.step()
            g += 1
            if on_step is not None:
                on_step(epoch, step)
        method.on_epoch_end(epoch, {})
        if on_epoch is not None:
            on_epoch(epoch)
