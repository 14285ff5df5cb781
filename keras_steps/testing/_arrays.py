"""NumPy snapshots and comparisons of Keras variables, tensors and outputs."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import torch


def to_numpy(value: Any) -> np.ndarray:
    """A NumPy copy of a Keras variable, a torch tensor or an array-like."""
    # Not keras.ops.convert_to_numpy: its np.array(tensor) makes NumPy 2 warn
    # about torch's __array__, once per variable, in the plugin's test run.
    if isinstance(value, keras.Variable):
        value = value.value
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.float() if value.dtype == torch.bfloat16 else value
        # A copy: .numpy() shares memory, and an in-place update of the
        # variable would change a "before" snapshot too.
        return value.numpy().copy()
    return np.array(value)


def all_finite(structure: Any) -> bool:
    """True when every leaf of ``structure`` holds finite values only."""
    return all(
        np.all(np.isfinite(np.asarray(to_numpy(v), dtype="float64")))
        for v in keras.tree.flatten(structure)
    )


def max_rel_diff(a: list[Any], b: list[Any]) -> float:
    """The largest difference between paired arrays, relative to their scale."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x = np.asarray(to_numpy(x), dtype="float64")
        y = np.asarray(to_numpy(y), dtype="float64")
        if x.shape != y.shape:
            return float("inf")
        scale = np.maximum(np.abs(x), np.abs(y)).max(initial=0.0)
        if scale:
            worst = max(worst, float(np.abs(x - y).max() / scale))
    return worst
