"""The ``fit``, ``metrics_reset`` and ``mixed_precision`` checks: the step trains as in Keras."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keras_steps.testing._arrays import all_finite, to_numpy
from keras_steps.testing._harness import Harness
from keras_steps.testing._report import Failed, describe


def _length(x: Any) -> int | None:
    first = keras.tree.flatten(x)[0] if x is not None else None
    return len(first) if hasattr(first, "__len__") else None


def check_fit(harness: Harness) -> None:
    """fit(), evaluate() and predict() run and behave as in Keras.

    fit() logs finite metrics and updates every optimizer's networks,
    evaluate() changes no weight, predict() returns one finite row per input.
    """
    run = harness.need_run()
    model, problems = run.model, []
    if not run.history:
        problems.append("fit() logged no metrics: train_step must return a dict.")
    for key, values in (run.history or {}).items():
        if not all_finite(values):
            problems.append(f"fit() logged non-finite {key!r}: {values}.")
    # Compare with a fresh build: same seed, same initial weights.
    initial = harness.build()
    fresh = harness.updated_networks(initial)
    for role, variables in harness.updated_networks(model).items():
        if not variables:
            problems.append(f"optimizer role {role!r} has no trainable weights.")
        elif all(
            np.array_equal(to_numpy(a), to_numpy(b))
            for a, b in zip(variables, fresh[role], strict=True)
        ):
            problems.append(
                f"fit() changed no trainable weight updated by optimizer {role!r}."
            )
    weights = [to_numpy(w) for w in model.weights]
    try:
        logs = model.evaluate(
            harness.x,
            harness.y,
            sample_weight=harness.sample_weight,
            batch_size=harness.batch_size,
            verbose=0,
            return_dict=True,
        )
    except Exception as exc:
        harness.record(exc)
        raise Failed(*problems, f"evaluate() raised {describe(exc)}") from None
    if not logs:
        problems.append(
            "evaluate() returned no metrics: test_step must return a dict."
        )
    elif not all_finite(logs):
        problems.append(f"evaluate() returned non-finite metrics: {logs}.")
    changed = [
        w.path
        for w, old in zip(model.weights, weights, strict=True)
        if not np.array_equal(to_numpy(w), old)
    ]
    if changed:
        problems.append(f"evaluate() changed weights: {', '.join(changed)}.")
    try:
        pred = model.predict(harness.predict_x, batch_size=harness.batch_size, verbose=0)
    except Exception as exc:
        harness.record(exc)
        raise Failed(*problems, f"predict() raised {describe(exc)}") from None
    n = _length(harness.predict_x)
    for i, leaf in enumerate(keras.tree.flatten(pred)):
        leaf = np.asarray(leaf)
        if n is not None and (leaf.ndim == 0 or leaf.shape[0] != n):
            problems.append(
                f"predict() output {i} has shape {leaf.shape}; expected a batch "
                f"dimension of {n}, one row per input."
            )
        elif not all_finite(leaf):
            problems.append(f"predict() output {i} has non-finite values.")
    if problems:
        raise Failed(*problems)


def check_metrics_reset(harness: Harness) -> None:
    """Every metric the step updates is one that Keras resets."""
    run = harness.need_run()
    if run.leaked_metrics:
        raise Failed(
            *(
                f"metric {m} was updated during fit() but Keras never resets it, "
                "so its value accumulates across epochs and evaluate() calls. "
                "Create trackers in the step_build hook and return them in its "
                "dict (model.step_state), which Keras tracks and resets."
                for m in run.leaked_metrics
            )
        )


def check_mixed_precision(harness: Harness) -> None:
    """fit() under the ``mixed_float16`` policy logs finite metrics."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = harness.build()
        history = harness.fit(model, epochs=1).history
    except Failed:
        raise
    except Exception as exc:
        harness.record(exc)
        raise Failed(
            f"fit() under mixed_float16 raised {describe(exc)}"
        ) from None
    finally:
        keras.config.set_dtype_policy(previous)
    bad = {k: v for k, v in history.items() if not all_finite(v)}
    if bad:
        raise Failed(
            f"fit() under mixed_float16 logged non-finite metrics: {bad}."
        )
