"""Shared pieces of the shipped steps' demos: embedded data and pictures.

The data is scikit-learn's handwritten digits (1,797 8x8 images that ship
inside scikit-learn), so no demo needs the network. matplotlib draws the
pictures. Both come with the ``demo`` extra: ``pip install keras-steps[demo]``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["load_digits", "save_curves", "save_image_grid"]


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"The keras-steps demos need {module.split('.')[0]}; install them with "
            "`pip install 'keras-steps[demo]'`."
        ) from exc


def load_digits(size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Return scikit-learn's digits as float32 images in [0, 1] and int labels.

    Args:
        size: output height and width; the 8x8 originals are resized
            bilinearly (28 gives the MNIST shape of the seed guide's GAN).

    Returns:
        ``(images, labels)`` with shapes ``(1797, size, size, 1)`` and ``(1797,)``.
    """
    import torch

    datasets = _require("sklearn.datasets")
    digits = datasets.load_digits()
    images = torch.from_numpy(digits.images.astype("float32") / 16.0)[:, None]
    images = torch.nn.functional.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False
    )
    images = images.clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(images), digits.target.astype("int64")


def save_image_grid(
    images: np.ndarray, path: pathlib.Path, columns: int = 8, title: str | None = None
) -> pathlib.Path:
    """Write ``images`` (N, H, W, 1) with values in [0, 1] as a PNG grid."""
    plt = _pyplot()
    images = np.asarray(images, dtype="float32")
    rows = int(np.ceil(len(images) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns, rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image in zip(axes.flat, images):
        ax.imshow(np.clip(image[..., 0], 0, 1), cmap="gray", vmin=0, vmax=1)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def save_curves(
    history: Mapping[str, Sequence[float]],
    path: pathlib.Path,
    keys: Sequence[str] | None = None,
    title: str | None = None,
    xlabel: str = "epoch",
) -> pathlib.Path:
    """Plot the ``keys`` of a Keras ``History.history`` dict as curves in a PNG."""
    plt = _pyplot()
    keys = list(keys) if keys is not None else sorted(history)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        values = list(history[key])
        ax.plot(range(1, len(values) + 1), values, marker="o", label=key)
    ax.set_xlabel(xlabel)
    ax.legend()
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _pyplot():
    matplotlib = _require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    plt = _pyplot()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target, then rename: an interrupted demo never
    # leaves a truncated PNG behind.
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)
    return path
