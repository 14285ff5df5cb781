"""TensorBoard logs of a step's training, written by PyTorch (no TensorFlow).

``keras.callbacks.TensorBoard`` writes through ``tf.summary``, so on the torch
backend it needs TensorFlow. This callback writes the same kind of event files
with ``torch.utils.tensorboard``, which needs only the ``tensorboard`` package
(the ``tensorboard`` extra).
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np

from keras_steps import _extras
from keras_steps._errors import StepError

__all__ = ["TensorBoard"]


class TensorBoard(keras.callbacks.Callback):
    """Writes a step's metrics, learning rates and samples for TensorBoard.

    Under ``log_dir/train``: every training metric the step logs (``g_loss``,
    ``reconstruction_loss``...) per epoch as ``epoch_<name>``, and per batch
    as ``batch_<name>`` when ``update_freq`` asks for it; the learning rate
    of each optimizer role as ``epoch_learning_rate/<role>``; and a grid of
    samples (a near-square grid) as the image ``samples`` every ``images_every`` epochs. Under
    ``log_dir/validation``: the validation metrics, as ``epoch_<name>``
    (``val_`` dropped), as Keras's own TensorBoard callback writes them.

    Samples are ``model.predict(image_inputs)``. Without ``image_inputs``, a
    step whose options have a ``latent_dim`` (``gan``, ``wgan-gp``) is fed
    ``max_images`` fixed latents drawn from N(0, 1) with ``image_seed``; other
    steps write no images unless given inputs (for ``vae``, a few images to
    reconstruct). Predictions shaped ``(N, H, W)`` or ``(N, H, W, C)`` with
    1, 3 or 4 channels are images; values in [-1, 1] (tanh) are mapped to
    [0, 1], others outside [0, 1] are min-max scaled.

    Under ``torchrun``, only rank 0 writes.

    Args:
        log_dir: the folder TensorBoard reads (``tensorboard --logdir log_dir``).
        update_freq: ``"epoch"``, ``"batch"``, or an integer N: also write
            the training metrics every N batches, at step = batches run
            (with ``compile(steps_per_execution=K)``, Keras calls callbacks
            once per K batches, so at the first call on or after each N).
        images_every: write samples every this many epochs; 0 writes none.
        image_inputs: what ``predict`` is fed for samples, or None (see above).
        max_images: how many samples the grid shows.
        image_seed: seed of the fixed latents.

    Raises:
        StepError: a bad argument; or (at the first epoch with samples)
            ``image_inputs`` whose predictions are not images.
        ModuleNotFoundError: the ``tensorboard`` package is not installed;
            the message says ``pip install 'keras-steps[tensorboard]'``.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike = "logs",
        update_freq: str | int = "epoch",
        images_every: int = 1,
        image_inputs: Any = None,
        max_images: int = 16,
        image_seed: int = 0,
    ) -> None:
        super().__init__()
        _extras.require("tensorboard", "keras_steps.callbacks.TensorBoard")
        if update_freq == "batch":
            update_freq = 1
        if update_freq != "epoch" and not (
            isinstance(update_freq, int) and not isinstance(update_freq, bool) and update_freq > 0
        ):
            raise StepError(
                f"TensorBoard(update_freq={update_freq!r}): expected 'epoch', 'batch' or "
                "a positive number of batches."
            )
        for name, value, low in (("images_every", images_every, 0), ("max_images", max_images, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise StepError(
                    f"TensorBoard({name}={value!r}): expected an integer >= {low}."
                )
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self.images_every = images_every
        self.image_inputs = image_inputs
        self.max_images = max_images
        self.image_seed = image_seed
        self._writers: dict[str, Any] = {}

    # -- writers -----------------------------------------------------------------
    def _writer(self, name: str):
        if name not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[name] = SummaryWriter(log_dir=os.path.join(self.log_dir, name))
        return self._writers[name]

    def _close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    # -- hooks -----------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._batches = 0  # batches of earlier epochs of this fit()
        self._seen = 0  # batches run so far
        self._written = 0  # batches run when batch metrics were last written
        self._inputs = self._sample_inputs()

    def on_train_batch_end(self, batch, logs=None):
        # Keras passes the epoch's index of the last batch run (several per
        # call under steps_per_execution), so "every N" counts batches.
        seen = self._seen = self._batches + batch + 1
        if self.update_freq == "epoch":
            return
        if seen // self.update_freq == self._written // self.update_freq:
            return
        self._written = seen
        writer = self._writer("train")
        for name, value in _scalars(logs).items():
            writer.add_scalar(f"batch_{name}", value, seen)

    def on_epoch_end(self, epoch, logs=None):
        self._batches = self._seen
        train, validation = self._writer("train"), self._writer("validation")
        for name, value in _scalars(logs).items():
            if name.startswith("learning_rate"):
                continue  # logged by Keras's LR callbacks; written per role below
            if name.startswith("val_"):
                validation.add_scalar(f"epoch_{name[4:]}", value, epoch)
            else:
                train.add_scalar(f"epoch_{name}", value, epoch)
        for role, optimizer in self.model.optimizers.items():
            rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            train.add_scalar(f"epoch_learning_rate/{role}", rate, epoch)
        if self._inputs is not None and self.images_every and (epoch + 1) % self.images_every == 0:
            predictions = self.model.predict(self._inputs, verbose=0)
            images = _as_images(predictions)
            if images is not None:
                train.add_image("samples", _grid(images), epoch, dataformats="HWC")
            elif self.image_inputs is not None:
                raise self._not_images(predictions)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        self._close()

    # -- samples -----------------------------------------------------------------
    def _sample_inputs(self):
        if not self.images_every:
            return None
        if self.image_inputs is not None:
            inputs = self.image_inputs
            if isinstance(inputs, np.ndarray) or hasattr(inputs, "shape"):
                inputs = inputs[: self.max_images]
            return inputs
        latent_dim = getattr(self.model.step_options, "latent_dim", None)
        if not isinstance(latent_dim, int):
            return None
        rng = np.random.default_rng(self.image_seed)
        return rng.normal(size=(self.max_images, latent_dim)).astype("float32")

    def _not_images(self, predictions) -> StepError:
        shape = getattr(predictions, "shape", type(predictions).__name__)
        return StepError(
            f"TensorBoard(image_inputs=...) on step {self.model.step!r}: predict() "
            f"returned {shape}; images are (N, H, W) or (N, H, W, C) with C in 1, 3, 4."
        )


def _scalars(logs) -> dict[str, float]:
    out = {}
    for name, value in (logs or {}).items():
        array = np.asarray(keras.ops.convert_to_numpy(value))
        if array.size == 1 and np.issubdtype(array.dtype, np.number):
            out[name] = float(array.reshape(()))
    return out


def _grid(images: np.ndarray, padding: int = 1) -> np.ndarray:
    """NHWC images side by side in a near-square grid (HWC), 1-pixel black lines between."""
    n, height, width, channels = images.shape
    columns = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.zeros(
        (rows * (height + padding) - padding, columns * (width + padding) - padding, channels),
        dtype=images.dtype,
    )
    for index, image in enumerate(images):
        top, left = divmod(index, columns)
        top, left = top * (height + padding), left * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


def _as_images(predictions) -> np.ndarray | None:
    """``predictions`` as NHWC floats in [0, 1], or None if they are no images."""
    if isinstance(predictions, (list, tuple, dict)):
        return None
    images = np.asarray(keras.ops.convert_to_numpy(predictions), dtype="float32")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4) or min(images.shape[1:3]) < 2:
        return None
    low, high = float(images.min()), float(images.max())
    if low >= -1.0 and high <= 1.0 and low < 0.0:
        images = (images + 1.0) / 2.0
    elif low < 0.0 or high > 1.0:
        images = (images - low) / max(high - low, 1e-12)
    return images
