"""Train, test and predict functions for the torch backend: fused and compiled.

Keras's torch trainer refuses ``steps_per_execution > 1`` before Keras 3.16,
although its ``EpochIterator`` already hands the train function a list of up
to ``steps_per_execution`` batches and ``fit``/``evaluate``/``predict``
already call callbacks once per such list, as on the other backends. The
functions built here run every batch of the list, so a fused execution costs
one round of callbacks (and, on a GPU, one host-device synchronisation when
the progress bar reads the logs) for N batches. Keras 3.16 runs such a list
too, but materialises every batch's logs and compiles the whole step method
with automatic dynamic shapes; ``StepModel`` uses the functions here on every
Keras version, so fusing and compiling behave the same on all of them
(the "Distributed training" docs page has the per-version table).

Inside an execution nothing is moved to the host: the step's logs are torch
tensors and only the last batch's logs leave the function. The other batches'
logs are thrown away, so while they run ``model.get_metrics_result()`` computes
no results (see ``StepModel.get_metrics_result``): every metric is still
updated by every batch, but only read once per execution. Predictions of the
N batches are concatenated on the device.

With ``jit_compile=True`` the *per-batch* step is wrapped in
``torch.compile`` with static shapes, as Keras does for one step (with
automatic dynamic shapes); the loop over the N batches
stays in Python, so the compiled graph does not grow with N and a partial last
group needs one more compilation, for its batch shape. A step torch.compile
cannot run (a double backward through a compiled graph, say) fails with a
``StepError`` naming the step, chained to torch's error; the step can mark
that part ``@torch.compiler.disable``, as ``wgan-gp`` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch._dynamo.exc  # no public torch.compiler name for dynamo's errors
from keras import tree

from keras_steps._errors import StepError

__all__ = ["make_predict_function", "make_test_function", "make_train_function"]


def _compiles(model: Any) -> bool:
    # compile() already turns jit_compile off under run_eagerly; run_eagerly
    # set afterwards wins too, as in Keras.
    return bool(model.jit_compile) and not model.run_eagerly


def _maybe_compile(model: Any, fn: Callable) -> Callable:
    if not _compiles(model):
        return fn
    # Static shapes. With torch's automatic dynamic shapes, a Keras layer op
    # that sees a second size (the conv code of a GAN's generator and of its
    # discriminator) is recompiled with symbolic sizes, and inductor fails on
    # the backward of a strided "same" convolution (torch 2.13). Static
    # shapes compile each size once; past torch's recompile limit a frame
    # runs eagerly.
    compiled = torch.compile(fn, dynamic=False)

    def run(batch):
        try:
            return compiled(batch)
        except Exception as exc:
            if not _is_compile_failure(exc):
                raise
            first = (str(exc).strip().splitlines() or [""])[0].rstrip(".")
            raise StepError(
                f"Step {model.step!r} cannot run under compile(jit_compile=True): "
                f"torch.compile failed with {type(exc).__name__}: {first}. "
                "Compile the model with jit_compile=False (the default on torch), or "
                "mark the part of the step that cannot be compiled with "
                "@torch.compiler.disable."
            ) from exc

    return run


def _is_compile_failure(exc: BaseException) -> bool:
    # Dynamo's own errors, and the RuntimeErrors its backends raise for what
    # they do not support (double backward under AOTAutograd, for one).
    # With Keras 3.12 the same double backward fails inside AOTAutograd's
    # runtime instead, with no mention of torch.compile: an error raised
    # there is a compile failure too.
    return isinstance(exc, torch._dynamo.exc.TorchDynamoException) or (
        isinstance(exc, RuntimeError)
        and ("torch.compile" in str(exc) or _raised_in_aot_autograd(exc))
    )


def _raised_in_aot_autograd(exc: BaseException) -> bool:
    tb, where = exc.__traceback__, ""
    while tb is not None:
        where, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return "_aot_autograd" in where.replace("\\", "/")


def make_train_function(model: Any) -> Callable[[list], Any]:
    """Return ``train_function(batches)``: one ``train_step`` per batch.

    Returns the logs of the last batch, still as tensors.
    """
    step = _maybe_compile(model, model.train_step)

    if model.steps_per_execution == 1:

        def train_function(batches):
            return step(batches[0])

        return train_function

    def fused_train_function(batches):
        with _logs_discarded(model):
            for batch in batches[:-1]:
                step(batch)
        return step(batches[-1])

    return fused_train_function


def make_test_function(model: Any) -> Callable[[list], Any]:
    """Return ``test_function(batches)``: one ``test_step`` per batch, no grad."""
    step = _maybe_compile(model, model.test_step)

    def test_function(batches):
        with torch.no_grad():
            if len(batches) == 1:
                return step(batches[0])
            with _logs_discarded(model):
                for batch in batches[:-1]:
                    step(batch)
            return step(batches[-1])

    return test_function


def make_predict_function(model: Any) -> Callable[[list], Any]:
    """Return ``predict_function(batches)``: the batches' predictions, concatenated.

    The outputs of the N batches are joined along the batch axis on the
    device, structure by structure (a dict of outputs stays a dict).
    """
    step = _maybe_compile(model, model.predict_step)

    def predict_function(batches):
        with torch.no_grad():
            if len(batches) == 1:
                return step(batches[0])
            outputs = [step(batch) for batch in batches]
        return tree.map_structure(_concatenate, *outputs)

    return predict_function


@contextlib.contextmanager
def _logs_discarded(model: Any) -> Iterator[None]:
    # Under torch.compile the results are part of the graph and cost next to
    # nothing, while a flag that flips inside an execution would make dynamo
    # compile every step twice.
    if _compiles(model):
        yield
        return
    model._discarding_logs = True
    try:
        yield
    finally:
        model._discarding_logs = False


def _concatenate(*parts: Any) -> Any:
    if parts[0] is None:
        return None
    return torch.cat(parts, dim=0)
