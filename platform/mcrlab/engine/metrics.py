"""Evaluation metrics as pure functions over label tensors."""

from __future__ import annotations

import torch

__all__ = ["accuracy", "macro_f1"]


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """pred, y: (N,) int. Fraction correct."""
    return (pred == y).float().mean().item() if len(y) else float("nan")


def macro_f1(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    """Unweighted mean over classes of F1 = 2TP / (2TP + FP + FN); a class absent from both is skipped."""
    f1s = []
    for c in range(num_classes):
        tp = ((pred == c) & (y == c)).sum().item()
        fp = ((pred == c) & (y != c)).sum().item()
        fn = ((pred != c) & (y == c)).sum().item()
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s) if f1s else float("nan")
