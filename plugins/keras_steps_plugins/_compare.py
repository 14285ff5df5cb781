"""Demo helper: one small digit classifier trained under several steps, curves drawn."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import keras

import keras_steps
from keras_steps_plugins import _demo

__all__ = ["digits_comparison", "digits_data"]


def digits_data(n_train: int = 300):
    """scikit-learn's digits as 8x8x1 images in [0, 1], split into train and validation.

    A small training set leaves room between training and validation accuracy,
    which is what regularising steps act on.

    Returns:
        ``((x_train, y_train), (x_val, y_val))`` with integer labels; the
        validation set is the last 797 images.
    """
    images, labels = _demo.load_digits(8)
    return (images[:n_train], labels[:n_train]), (images[1000:], labels[1000:])


def _classifier(step: str, options: Mapping[str, Any] | None):
    inputs = keras.Input(shape=(8, 8, 1))
    h = keras.layers.Flatten()(inputs)
    h = keras.layers.Dense(128, activation="relu")(h)
    outputs = keras.layers.Dense(10, activation="softmax")(h)
    return keras_steps.StepModel(inputs, outputs, step=step, step_options=options)


def digits_comparison(
    runs: Mapping[str, tuple[str, Mapping[str, Any] | None]],
    path: pathlib.Path,
    *,
    title: str,
    keys: Sequence[str],
    epochs: int,
    steps: int | None,
    seed: int = 0,
) -> dict[str, pathlib.Path]:
    """Fit one MLP per run from the same initial weights and plot ``keys`` of each.

    Args:
        runs: label to ``(step name, step options)``.
        path: the PNG to write.
        title: the plot's title.
        keys: the ``History`` entries to draw for every run.
        epochs: epochs per run.
        steps: batches per epoch, or ``None`` for a full pass.
        seed: seeds Keras before each run, so every run starts from the same
            weights and sees the batches in the same order.

    Returns:
        ``{"curves": path}``.
    """
    (x_train, y_train), (x_val, y_val) = digits_data()
    histories = {}
    for label, (step, options) in runs.items():
        keras.utils.set_random_seed(seed)
        model = _classifier(step, options)
        model.compile(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        print(f"[{label}: step {step!r}, options {dict(options or {})}]")
        histories[label] = model.fit(
            x_train,
            y_train,
            batch_size=32,
            epochs=epochs,
            steps_per_epoch=steps,
            validation_data=(x_val, y_val),
            verbose="auto",
        ).history
    curves = {f"{label} {key}": histories[label][key] for label in runs for key in keys}
    for label, values in curves.items():
        print(f"{label}: {values[-1]:.4f}")
    return {"curves": _demo.save_curves(curves, path, title=title)}
