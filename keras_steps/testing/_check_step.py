"""check_step: run the conformance checks on one step and report every defect."""

from __future__ import annotations

import contextlib
import pathlib
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from keras_steps._errors import StepError
from keras_steps._options import StepOptions
from keras_steps._registry import get_step, register_step, unregister_step
from keras_steps._step import Step
from keras_steps.testing._execution import check_compiled, check_fused
from keras_steps.testing._harness import Harness
from keras_steps.testing._hooks import hook_problems
from keras_steps.testing._loss_scaling import check_loss_scaling
from keras_steps.testing._options import options_problems
from keras_steps.testing._report import (
    CheckResult,
    ConformanceError,
    ConformanceReport,
    ConformanceWarning,
    Failed,
    Skipped,
    one_line,
)
from keras_steps.testing._save_load import check_save_load
from keras_steps.testing._training import (
    check_fit,
    check_metrics_reset,
    check_mixed_precision,
)

#: Every check :func:`check_step` runs by default, in order.
CHECKS = (
    "hooks",
    "options",
    "fit",
    "fused",
    "metrics_reset",
    "loss_scaling",
    "mixed_precision",
    "save_load",
)

#: Checks run only when named in ``checks=``: ``compiled`` spends 10-30 s in
#: torch.compile's warm-up.
OPTIONAL_CHECKS = ("compiled",)

# The checks that train: each takes the Harness whose training run they share.
_DYNAMIC = {
    "fit": check_fit,
    "fused": check_fused,
    "metrics_reset": check_metrics_reset,
    "loss_scaling": check_loss_scaling,
    "mixed_precision": check_mixed_precision,
    "save_load": check_save_load,
    "compiled": check_compiled,
}


def check_step(
    name: str,
    models: Callable[[], Any] | None = None,
    data: Any = None,
    *,
    plugin: Any = None,
    step_options: Mapping[str, Any] | StepOptions | None = None,
    compile: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    predict_data: Any = None,
    checks: Iterable[str] | None = None,
    epochs: int = 2,
    batch_size: int = 16,
    seed: int = 1337,
    tmp_path: str | pathlib.Path | None = None,
) -> ConformanceReport:
    """Run the conformance checks on step ``name`` and raise if any fails.

    Sets Keras's random seed for each model it builds, and restores the dtype
    policy it changes.

    Args:
        name: the step's registered name (an installed entry point, or a
            step registered with ``register_step``).
        models: a function of no arguments returning fresh networks: a dict
            from each model role to a Keras model, or a single model for a
            one-network step. Defaults, for one-network steps with NumPy data,
            to a small MLP shaped by ``data``.
        data: what ``fit`` and ``evaluate`` get: ``x``, ``(x,)``, ``(x, y)`` or
            ``(x, y, sample_weight)``, or a function returning it. Defaults to
            64 rows of random regression data (4 features, 1 target).
        plugin: a plugin object to register as ``name`` for the checks (then
            unregistered), instead of one already registered.
        step_options: options for the step (a dict or its options instance).
        compile: keyword arguments for ``model.compile``, or a function
            returning them. Defaults to ``optimizer="adam", loss="mse"`` for one
            optimizer role and one Adam per role otherwise.
        predict_data: what ``predict`` gets; defaults to ``x`` (a GAN predicts
            from latent vectors, for example).
        checks: the names of the checks to run (see :data:`CHECKS`); all of
            them by default. Name ``"compiled"`` (:data:`OPTIONAL_CHECKS`) to
            also check training under ``jit_compile=True``.
        epochs: epochs of the main ``fit``; two, so the metric reset between
            epochs is exercised.
        batch_size: batch size for ``fit``, ``evaluate`` and ``predict``.
        seed: the seed set before each model is built.
        tmp_path: a folder for the saved model; a temporary one by default.

    Returns:
        The :class:`ConformanceReport`, when every check passed or was skipped.

    Raises:
        ConformanceError: a check failed; its message names every defect.
        ValueError: the arguments do not fit the step (unknown check, no
            networks for a multi-network step).
    """
    selected = list(CHECKS) if checks is None else list(checks)
    unknown = [c for c in selected if c not in CHECKS + OPTIONAL_CHECKS]
    if unknown:
        raise ValueError(
            f"Unknown check(s) {unknown}; the checks are {list(CHECKS)}, and "
            f"{list(OPTIONAL_CHECKS)} when named."
        )
    report = ConformanceReport(step=name)
    registered = False
    try:
        if plugin is not None:
            problems = hook_problems(plugin, name)
            if problems:
                report.results["hooks"] = CheckResult("failed", problems)
                raise ConformanceError(report)
            register_step(plugin, name=name)
            registered = True
        try:
            step = get_step(name)
        except StepError as exc:
            report.results["hooks"] = CheckResult("failed", [one_line(exc)])
            raise ConformanceError(report) from None
        with contextlib.ExitStack() as stack:
            if tmp_path is None:
                tmp_path = stack.enter_context(tempfile.TemporaryDirectory())
            _run_checks(
                step,
                selected,
                report,
                dict(
                    models=models,
                    data=data,
                    step_options=step_options,
                    compile=compile,
                    predict_data=predict_data,
                    epochs=epochs,
                    batch_size=batch_size,
                    seed=seed,
                    tmp_path=tmp_path,
                ),
            )
    finally:
        if registered:
            unregister_step(name)
    return report


def _run_checks(step: Step, selected: list[str], report: ConformanceReport, kw: dict):
    static = {
        "hooks": lambda: hook_problems(step.plugin, step.name),
        "options": lambda: options_problems(step.options_class, step.name),
    }
    harness = None
    for check in selected:
        if check in static:
            problems = static[check]()
            report.results[check] = CheckResult(
                "failed" if problems else "passed", problems
            )
            continue
        harness = harness or Harness(step, **kw)
        if harness.build_error is not None:
            report.results[check] = CheckResult(
                "skipped", ["not run: the StepModel cannot be built (see above)."]
            )
            continue
        try:
            _DYNAMIC[check](harness)
        except Failed as failed:
            report.results[check] = CheckResult("failed", failed.messages)
        except Skipped as skipped:
            report.results[check] = CheckResult("skipped", [str(skipped)])
            warnings.warn(
                f"keras-steps conformance: step {step.name!r}: {check} skipped: "
                f"{skipped}",
                ConformanceWarning,
                stacklevel=3,
            )
        else:
            report.results[check] = CheckResult("passed")
    if not report.ok:
        cause = harness.first_error if harness is not None else None
        raise ConformanceError(report) from cause
