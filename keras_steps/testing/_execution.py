"""The fused and compiled checks: a step trains the same however Keras calls it."""

from __future__ import annotations

from typing import Any

from keras_steps.testing._arrays import max_rel_diff
from keras_steps.testing._harness import Harness
from keras_steps.testing._report import Failed, describe

# With the kit's default data (4 batches per epoch), one full group of 3 and a
# short last one.
_FUSED = 3


def check_fused(harness: Harness) -> None:
    """``compile(steps_per_execution=3)`` trains exactly as one step per call does."""
    _compare(
        harness,
        {"steps_per_execution": _FUSED},
        f"compile(steps_per_execution={_FUSED})",
        tolerance=1e-5,
        advice=(
            "With steps_per_execution=N the train function runs N steps per call and "
            "only the last step's logs are used; a step must not depend on the logs "
            "or on model.get_metrics_result() while it trains."
        ),
    )


def check_compiled(harness: Harness) -> None:
    """``compile(jit_compile=True)`` (torch.compile) trains as eager does."""
    _compare(
        harness,
        {"jit_compile": True, "steps_per_execution": 2},
        "compile(jit_compile=True)",
        tolerance=1e-4,
        advice=(
            "Mark the part of the step torch.compile cannot run (a double backward, "
            "say) with @torch.compiler.disable: it then runs eagerly and the rest "
            "is compiled."
        ),
    )


def _compare(
    harness: Harness, overrides: dict[str, Any], what: str, tolerance: float, advice: str
) -> None:
    reference = harness.build(steps_per_execution=1, jit_compile=False)
    expected = harness.fit(reference).history
    model = harness.build(**overrides)
    try:
        got = harness.fit(model).history
    except Exception as exc:
        harness.record(exc)
        raise Failed(f"fit() with {what} raised {describe(exc)}. {advice}") from None
    problems = []
    if set(got) != set(expected):
        problems.append(
            f"fit() with {what} logged {sorted(got)}; one step per call logged "
            f"{sorted(expected)}."
        )
    for key in sorted(set(got) & set(expected)):
        if max_rel_diff(got[key], expected[key]) > tolerance:
            problems.append(
                f"fit() with {what} logged {key!r} {got[key]}; one step per call "
                f"logged {expected[key]}."
            )
    if max_rel_diff(model.weights, reference.weights) > tolerance:
        problems.append(f"fit() with {what} ends with other weights than eager training.")
    if problems:
        raise Failed(*problems, advice)
