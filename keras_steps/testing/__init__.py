"""The conformance kit: check a step plugin from its own test suite.

A third-party step package calls :func:`check_step` from pytest to make sure
its step behaves like every other step before users see it::

    from keras_steps.testing import check_step

    def test_my_step_conforms():
        check_step("my-step")                  # one network: defaults suffice

    def test_my_gan_conforms():
        check_step(
            "my-gan",
            models=lambda: {"generator": make_g(), "discriminator": make_d()},
            data=images,                       # what fit() gets
            predict_data=latent_vectors,       # what predict() gets
            step_options={"latent_dim": 8},
        )

With keras-steps installed, pytest also has a ``check_step`` fixture that does
the same and writes into the test's ``tmp_path`` (see the ``keras_steps_pytest``
plugin).

The checks (names as in :data:`CHECKS`):

- ``hooks``: every hook implementation matches a hook specification
  (misspelled names, unknown arguments, wrappers, functions named like a hook
  but not marked ``@hookimpl``, deprecated hooks), the required hooks exist,
  and the declarative hooks return usable values.
- ``options``: every option has a default and a description, the defaults are
  valid, the schema exports as JSON Schema, options survive a JSON round trip,
  and a bad value or an unknown name is rejected with an error naming it.
- ``fit``: ``fit`` / ``evaluate`` / ``predict`` run on small synthetic data;
  ``fit`` logs finite metrics and updates every optimizer's networks,
  ``evaluate`` changes no weight, ``predict`` returns finite batches.
- ``fused``: with ``compile(steps_per_execution=3)`` (several batches per
  call of the train function, only the last one's logs used) the step trains
  exactly as with one batch per call: same history, same weights.
- ``metrics_reset``: every metric the step updates is reset by Keras at each
  epoch and at ``evaluate()`` (it lives in ``model.step_state`` or
  ``model.metrics``).
- ``loss_scaling``: with each optimizer wrapped in a ``LossScaleOptimizer``,
  the step calls ``scale_loss`` before every update and back-propagates the
  scaled loss (the weights match an unwrapped run).
- ``mixed_precision``: ``fit`` under the ``mixed_float16`` policy logs finite
  metrics.
- ``save_load``: ``model.save`` then ``keras.saving.load_model`` restores the
  step, its options, every weight, metric and optimizer variable, and the
  predictions. Skipped, with a :class:`ConformanceWarning` saying why, when
  this keras-steps cannot serialize a ``StepModel``.

One more check runs only when named in ``checks=`` (:data:`OPTIONAL_CHECKS`),
because torch.compile's warm-up takes 10-30 s:

- ``compiled``: with ``compile(jit_compile=True)`` the step trains as in eager
  mode, to float tolerance.

A failing check raises :class:`ConformanceError`, an ``AssertionError`` whose
message lists every defect found, each prefixed with its check's name.
"""

from keras_steps.testing._check_step import CHECKS, OPTIONAL_CHECKS, check_step
from keras_steps.testing._hooks import HookFindings, hook_problems, inspect_hooks
from keras_steps.testing._options import options_problems
from keras_steps.testing._report import (
    CheckResult,
    ConformanceError,
    ConformanceReport,
    ConformanceWarning,
)
from keras_steps.testing._save_load import persistence_support

__all__ = [
    "CHECKS",
    "OPTIONAL_CHECKS",
    "CheckResult",
    "ConformanceError",
    "ConformanceReport",
    "ConformanceWarning",
    "HookFindings",
    "check_step",
    "hook_problems",
    "inspect_hooks",
    "options_problems",
    "persistence_support",
]
