"""The ``save_load`` check: a saved StepModel loads back whole."""

from __future__ import annotations

import keras
import numpy as np

from keras_steps._model import StepModel
from keras_steps.testing._arrays import max_rel_diff, to_numpy
from keras_steps.testing._harness import Harness
from keras_steps.testing._report import Failed, Skipped, describe


def persistence_support() -> tuple[bool, str]:
    """Say whether this keras-steps can save and load a ``StepModel``.

    Detected, not assumed: a ``StepModel`` survives ``keras.saving`` only when
    the class is registered as Keras-serializable.

    Returns:
        ``(supported, reason)``; ``reason`` explains an unsupported answer.
    """
    registered = keras.saving.get_registered_name(StepModel)
    if keras.saving.get_registered_object(registered) is StepModel:
        return True, ""
    return False, (
        "this keras-steps does not register StepModel as Keras-serializable, so "
        "keras.saving.load_model cannot rebuild a StepModel; the save/load round "
        "trip is checked once keras-steps supports it."
    )


def check_save_load(harness: Harness) -> None:
    """A saved model loads back with its step, options, variables and predictions."""
    supported, reason = persistence_support()
    if not supported:
        raise Skipped(reason)
    run = harness.need_run()
    model = run.model
    path = harness.tmp_path / f"{harness.name}.keras"
    try:
        model.save(path)
        loaded = keras.saving.load_model(path)
    except Exception as exc:
        harness.record(exc)
        raise Failed(
            f"model.save / keras.saving.load_model raised {describe(exc)}"
        ) from None
    problems = []
    if not isinstance(loaded, StepModel) or loaded.step != harness.name:
        raise Failed(
            f"load_model returned {loaded!r}, not a StepModel of step "
            f"{harness.name!r}."
        )
    if loaded.step_options != model.step_options:
        problems.append(
            f"options changed in the round trip: {model.step_options!r} became "
            f"{loaded.step_options!r}."
        )
    # The step's own trackers; Keras restores no state of compile()'s
    # metrics, for keras.Model either, so those are left out.
    groups = {"weight": (model.variables, loaded.variables)}
    for key, tracker in model.step_state.items():
        if not isinstance(tracker, keras.metrics.Metric):
            continue
        other = loaded.step_state.get(key)
        if other is None:
            problems.append(f"step_state[{key!r}] is missing after loading.")
            continue
        groups[f"step_state[{key!r}] metric"] = (tracker.variables, other.variables)
    for role, opt in model.optimizers.items():
        other = loaded.optimizers.get(role)
        if other is None:
            problems.append(f"optimizer {role!r} is missing after loading.")
            continue
        groups[f"optimizer {role!r}"] = (opt.variables, other.variables)
    for what, (a, b) in groups.items():
        if len(a) != len(b):
            problems.append(
                f"{len(a)} {what} variables were saved, {len(b)} loaded."
            )
            continue
        for va, vb in zip(a, b, strict=True):
            if not np.array_equal(to_numpy(va), to_numpy(vb)):
                problems.append(f"{what} variable {va.path} differs after loading.")
    if problems:
        raise Failed(*problems)
    kw = {"batch_size": harness.batch_size, "verbose": 0}
    ours = keras.tree.flatten(model.predict(harness.predict_x, **kw))
    theirs = keras.tree.flatten(loaded.predict(harness.predict_x, **kw))
    if max_rel_diff(ours, theirs) > 1e-6:
        raise Failed(
            "predict() differs after loading although every variable matches: "
            "does the step draw random numbers outside a SeedGenerator created "
            "in step_build?"
        )
