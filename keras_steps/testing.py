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

A failing check raises :class:`ConformanceError`, an ``AssertionError`` whose
message lists every defect found, each prefixed with its check's name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import gc
import json
import pathlib
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import keras
import numpy as np
import pluggy
import pydantic
import torch

from keras_steps import hookspecs
from keras_steps._errors import OptionsError, StepError
from keras_steps._model import StepModel
from keras_steps._options import StepOptions, validate_options
from keras_steps._registry import get_step, register_step, unregister_step
from keras_steps._step import Step, StepSource, resolve_step

__all__ = [
    "CHECKS",
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

#: Every check :func:`check_step` runs, in order.
CHECKS = (
    "hooks",
    "options",
    "fit",
    "metrics_reset",
    "loss_scaling",
    "mixed_precision",
    "save_load",
)


class ConformanceError(AssertionError):
    """A step failed the conformance kit; the message lists every defect."""

    def __init__(self, report: ConformanceReport):
        super().__init__(str(report))
        self.report = report


class ConformanceWarning(UserWarning):
    """A conformance check could not run here (for example ``save_load``)."""


@dataclasses.dataclass
class CheckResult:
    """The outcome of one check.

    Attributes:
        status: ``"passed"``, ``"failed"`` or ``"skipped"``.
        messages: what failed, or why the check was skipped.
    """

    status: str
    messages: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ConformanceReport:
    """What :func:`check_step` found.

    Attributes:
        step: the step name.
        results: check name to :class:`CheckResult`, for the checks run.
    """

    step: str
    results: dict[str, CheckResult] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no check failed (skipped checks do not count)."""
        return all(r.status != "failed" for r in self.results.values())

    @property
    def failures(self) -> list[str]:
        """Every defect, as ``"[check] message"``."""
        return [
            f"[{name}] {msg}"
            for name, r in self.results.items()
            if r.status == "failed"
            for msg in r.messages
        ]

    def __str__(self) -> str:
        if self.ok:
            head = f"Step {self.step!r} passes the keras-steps conformance kit."
        else:
            head = f"Step {self.step!r} fails the keras-steps conformance kit:"
        lines = [head]
        for name, result in self.results.items():
            lines.append(f"  {name}: {result.status}")
            lines.extend(f"    - {m}" for m in result.messages)
        return "\n".join(lines)


class _Failed(Exception):
    """A check found defects: one message each."""

    def __init__(self, *messages: str):
        super().__init__(*messages)
        self.messages = list(messages)


class _Skipped(Exception):
    """A check cannot run here; the message says why."""


# -- hooks --------------------------------------------------------------------


def _spec_names() -> list[str]:
    return sorted(
        n
        for n in dir(hookspecs)
        if getattr(getattr(hookspecs, n), f"{hookspecs.PROJECT_NAME}_spec", None)
    )


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def hook_problems(plugin: Any, name: str = "plugin") -> list[str]:
    """Check that ``plugin``'s hook implementations match the hook specifications.

    Args:
        plugin: a step plugin (module, class or instance).
        name: the step name, used in messages.

    Returns:
        One message per defect: a misspelled or unknown hook, an argument the
        hook does not have, a wrapper implementation, a function named like a
        hook but not marked ``@keras_steps.hookimpl``, a deprecated hook, a
        missing required hook, or a declarative hook returning something
        unusable. Empty when the plugin is sound.
    """
    findings = inspect_hooks(plugin, name)
    return findings.problems + findings.deprecations


@dataclasses.dataclass
class HookFindings:
    """What :func:`inspect_hooks` found.

    Attributes:
        problems: defects that stop the plugin from working as a step.
        deprecations: deprecated hooks it implements (it still works).
        step: the step resolved from the plugin, or None when it cannot be.
    """

    problems: list[str]
    deprecations: list[str]
    step: Step | None


def inspect_hooks(
    plugin: Any, name: str = "plugin", source: StepSource | None = None
) -> HookFindings:
    """Validate ``plugin`` against the hook specifications, apart from the registry.

    Registers the plugin with a private pluggy manager, so nothing global
    changes, and resolves it as the registry would.

    Args:
        plugin: a step plugin (module, class or instance).
        name: the step name, used in messages.
        source: where the plugin comes from; ``"local"`` by default.

    Returns:
        The :class:`HookFindings`.
    """
    source = source or StepSource("local")
    problems, deprecations = [], []
    known = _spec_names()
    impl_attr = f"{hookspecs.PROJECT_NAME}_impl"
    for attr in known:
        value = getattr(plugin, attr, None)
        if callable(value) and getattr(value, impl_attr, None) is None:
            problems.append(
                f"{attr} is defined but not marked with @keras_steps.hookimpl, so "
                "keras_steps never calls it."
            )
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            problems.append(f"invalid hook implementation: {_one_line(exc)}")
            return HookFindings(problems, deprecations, None)
    for w in caught:
        if issubclass(w.category, hookspecs.HookDeprecationWarning):
            deprecations.append(f"{w.message} (implemented at {w.filename}:{w.lineno})")
    for caller in pm.get_hookcallers(plugin) or []:
        impls = [i for i in caller.get_hookimpls() if i.plugin is plugin]
        if not caller.has_spec():
            if all(i.optionalhook for i in impls):
                continue
            close = difflib.get_close_matches(caller.name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"{caller.name} is marked @keras_steps.hookimpl but is not a "
                f"keras_steps hook.{hint} Hooks: {', '.join(known)}. (A hook of a "
                "newer keras-steps can be marked @hookimpl(optionalhook=True).)"
            )
            continue
        for impl in impls:
            if impl.hookwrapper or impl.wrapper:
                problems.append(
                    f"{caller.name} is a hook wrapper; keras_steps calls each "
                    "step's own implementation directly, so wrappers are not "
                    "supported."
                )
    step = None
    if not problems:
        try:
            step = resolve_step(pm, name, plugin, source)
        except StepError as exc:
            problems.append(_one_line(exc))
    return HookFindings(problems, deprecations, step)


# -- options ------------------------------------------------------------------


class _Unlike:
    """A value no typed option accepts."""

    def __repr__(self) -> str:
        return "<arbitrary object>"


def _bad_values(prop: dict[str, Any]) -> list[Any]:
    """Values the JSON Schema ``prop`` of one option must reject."""
    bad: list[Any] = [_Unlike()]
    if "minimum" in prop:
        bad.append(prop["minimum"] - 1)
    if "exclusiveMinimum" in prop:
        bad.append(prop["exclusiveMinimum"])
    if "maximum" in prop:
        bad.append(prop["maximum"] + 1)
    if "exclusiveMaximum" in prop:
        bad.append(prop["exclusiveMaximum"])
    if "enum" in prop:
        bad.append("<none of " + ", ".join(map(str, prop["enum"])) + ">")
    return bad


def options_problems(options_class: Any, name: str = "step") -> list[str]:
    """Check a step's options class.

    Args:
        options_class: the class the step's ``step_options`` hook returns.
        name: the step name, used in messages.

    Returns:
        One message per defect: not a :class:`~keras_steps.StepOptions`
        subclass, an option without a default or a description, an invalid
        default, a schema that does not export to JSON, options that do not
        survive a JSON round trip, or a bad value or unknown name that is not
        rejected with an error naming it. Empty when the options are sound.
    """
    if not (isinstance(options_class, type) and issubclass(options_class, StepOptions)):
        return [f"the options class {options_class!r} is not a StepOptions subclass."]
    problems = []
    fields = options_class.model_fields
    defaults = {}
    for field_name, field in fields.items():
        if field.is_required():
            problems.append(
                f"option {field_name!r} has no default; every option needs one so "
                f"that StepModel(step={name!r}) works without step_options."
            )
        else:
            defaults[field_name] = field.get_default(call_default_factory=True)
        if not (field.description or "").strip():
            problems.append(
                f"option {field_name!r} has no description; give it "
                "Field(description=...), which `keras-steps show` and the docs print."
            )
    try:
        options_class.model_validate(defaults)
    except pydantic.ValidationError as exc:
        for err in exc.errors():
            if err["type"] == "missing":
                continue
            where = ".".join(map(str, err["loc"])) or "<options>"
            problems.append(
                f"the default of option {where!r} is invalid: {err['msg']} "
                f"(default {err['input']!r})."
            )
    try:
        schema = options_class.model_json_schema()
        json.dumps(schema)
    except Exception as exc:
        problems.append(
            f"the options do not export as JSON Schema: {type(exc).__name__}: "
            f"{_one_line(exc)}"
        )
        schema = {}
    if problems:
        return problems
    instance = options_class()
    try:
        dumped = json.loads(json.dumps(instance.model_dump(mode="json")))
        again = options_class.model_validate(dumped)
        if again != instance:
            problems.append(
                f"the default options change in a JSON round trip ({instance!r} "
                f"became {again!r}); saved models store options as JSON."
            )
    except Exception as exc:
        problems.append(
            "the default options do not survive a JSON round trip (saved models "
            f"store options as JSON): {type(exc).__name__}: {_one_line(exc)}"
        )
    props = schema.get("properties", {})
    for field_name in fields:
        for bad in _bad_values(props.get(field_name, {})):
            try:
                validate_options(
                    name, "conformance check", options_class, {field_name: bad}
                )
            except OptionsError as exc:
                # The core's message says "option 'NAME' = ..." for a field
                # error; a model-wide error says "option '<options>'".
                if f"option {field_name!r}" not in str(exc):
                    problems.append(
                        f"option {field_name!r} = {bad!r} is rejected, but the error "
                        f"does not name the option: {_one_line(exc)}. A validator "
                        "that checks several fields must raise for a field, not "
                        "for the whole model."
                    )
            else:
                problems.append(
                    f"option {field_name!r} accepts the bad value {bad!r}; give it "
                    "a type and constraints (Field(gt=...), Literal[...])."
                )
    unknown = "not_an_option_of_this_step"
    try:
        validate_options(name, "conformance check", options_class, {unknown: 1})
    except OptionsError as exc:
        if f"option {unknown!r}" not in str(exc):
            problems.append(f"an unknown option is rejected without naming it: {exc}")
    else:
        problems.append(
            "unknown option names are accepted; keep StepOptions' "
            "model_config extra='forbid'."
        )
    return problems


# -- persistence --------------------------------------------------------------


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


# -- the dynamic checks -------------------------------------------------------


def _numpy(value: Any) -> np.ndarray:
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


def _default_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 4)).astype("float32")
    w = rng.normal(size=(4, 1)).astype("float32")
    y = (x @ w + 0.1 * rng.normal(size=(64, 1))).astype("float32")
    return x, y


def _split_data(data: Any) -> tuple[Any, Any, Any]:
    if isinstance(data, tuple):
        if not 1 <= len(data) <= 3:
            raise ValueError(
                "check_step(data=...) takes x, (x,), (x, y) or (x, y, sample_weight); "
                f"got a tuple of {len(data)}."
            )
        return (*data, None, None)[:3]
    return data, None, None


def _length(x: Any) -> int | None:
    first = keras.tree.flatten(x)[0] if x is not None else None
    return len(first) if hasattr(first, "__len__") else None


def _all_finite(structure: Any) -> bool:
    return all(
        np.all(np.isfinite(np.asarray(_numpy(v), dtype="float64")))
        for v in keras.tree.flatten(structure)
    )


class _ScaleLossSpy(keras.optimizers.LossScaleOptimizer):
    """A LossScaleOptimizer that records its scale_loss and apply calls."""

    def __init__(self, inner, role, events):
        super().__init__(inner, name=f"{role}_scale_loss_spy")
        # A function, not the list itself: Keras would copy a list attribute
        # into a tracked one.
        self._record = lambda kind: events.append((kind, role))

    def scale_loss(self, loss):
        self._record("scale_loss")
        return super().scale_loss(loss)

    def apply(self, grads, trainable_variables=None):
        self._record("apply")
        return super().apply(grads, trainable_variables)


@dataclasses.dataclass
class _Run:
    """One trained model and what was observed while training it."""

    model: Any = None
    history: dict[str, list[float]] | None = None
    failed: _Failed | None = None
    error: BaseException | None = None
    leaked_metrics: list[str] = dataclasses.field(default_factory=list)


class _Checker:
    def __init__(self, step: Step, **kw: Any):
        self.step = step
        self.name = step.name
        self.seed = kw["seed"]
        self.epochs = kw["epochs"]
        self.batch_size = kw["batch_size"]
        self.step_options = kw["step_options"]
        self.tmp_path = pathlib.Path(kw["tmp_path"])
        data = kw["data"]
        data = data() if callable(data) else data
        if data is None:
            data = _default_data(self.seed)
        self.x, self.y, self.sample_weight = _split_data(data)
        self.predict_x = (
            kw["predict_data"] if kw["predict_data"] is not None else self.x
        )
        self.models = kw["models"] or self._default_models()
        self.compile = kw["compile"]
        self.first_error: BaseException | None = None
        self.build_error: str | None = None
        self._run: _Run | None = None

    # -- building --------------------------------------------------------------
    def _default_models(self) -> Callable[[], Any]:
        if len(self.step.model_roles) != 1:
            roles = ", ".join(f"{r!r}: ..." for r in self.step.model_roles)
            raise ValueError(
                f"Step {self.name!r} works on several networks; pass "
                f"check_step({self.name!r}, models=lambda: {{{roles}}}, data=...)."
            )
        if not (isinstance(self.x, np.ndarray) and isinstance(self.y, np.ndarray)):
            raise ValueError(
                f"check_step({self.name!r}) builds a default network only for NumPy "
                "data (x, y); pass models=... for other data."
            )
        in_shape, units = self.x.shape[1:], int(np.prod(self.y.shape[1:]) or 1)

        def default():
            return keras.Sequential(
                [
                    keras.Input(in_shape),
                    keras.layers.Flatten(),
                    keras.layers.Dense(8, activation="relu"),
                    keras.layers.Dense(units),
                    keras.layers.Reshape(self.y.shape[1:] or (1,)),
                ]
            )

        return default

    def _compile_kwargs(self) -> dict[str, Any]:
        given = self.compile() if callable(self.compile) else self.compile
        if given is None:
            roles = self.step.optimizer_roles
            if len(roles) == 1:
                return {"optimizer": "adam", "loss": "mse"}
            return {"optimizer": {r: "adam" for r in roles}}
        kwargs = dict(given)
        # Optimizer instances belong to one model: clone them for each build.
        opt = kwargs.get("optimizer")
        clone = keras.optimizers.deserialize
        ser = keras.optimizers.serialize
        if isinstance(opt, dict):
            kwargs["optimizer"] = {
                r: clone(ser(o)) if isinstance(o, keras.optimizers.Optimizer) else o
                for r, o in opt.items()
            }
        elif isinstance(opt, keras.optimizers.Optimizer):
            kwargs["optimizer"] = clone(ser(opt))
        return kwargs

    def build(self, optimizers: Callable[[str, Any], Any] | None = None):
        """A fresh, compiled StepModel; ``optimizers`` maps (role, spec) to one."""
        keras.utils.set_random_seed(self.seed)
        networks = self.models()
        if not isinstance(networks, dict):
            networks = {self.step.model_roles[0]: networks}
        try:
            model = StepModel(
                models=networks, step=self.name, step_options=self.step_options
            )
        except StepError as exc:
            self.build_error = f"StepModel(models=...) raised {_describe(exc)}"
            raise _Failed(self.build_error) from None
        kwargs = self._compile_kwargs()
        if optimizers is not None:
            roles = self.step.optimizer_roles
            given = kwargs.get("optimizer", "rmsprop")
            per_role = given if isinstance(given, dict) else {roles[0]: given}
            wrapped = {r: optimizers(r, per_role[r]) for r in roles}
            kwargs["optimizer"] = wrapped if len(roles) > 1 else wrapped[roles[0]]
        model.compile(**kwargs)
        return model

    def fit(self, model, epochs=None):
        return model.fit(
            self.x,
            self.y,
            sample_weight=self.sample_weight,
            batch_size=self.batch_size,
            epochs=epochs or self.epochs,
            shuffle=False,
            verbose=0,
        )

    def _updated_networks(self, model) -> dict[str, list[Any]]:
        roles = self.step.optimizer_roles
        if len(roles) == 1:
            return {roles[0]: list(model.trainable_variables)}
        return {r: list(model.models[r].trainable_variables) for r in roles}

    # -- the shared training run ----------------------------------------------
    def run(self) -> _Run:
        if self._run is not None:
            return self._run
        run = self._run = _Run()
        try:
            model = run.model = self.build()
            before = _metric_states()
            run.history = self.fit(model).history
            after = _metric_states()
            model.reset_metrics()
            reset = _metric_states()
            run.leaked_metrics = _leaked(before, after, reset)
        except _Failed as failed:
            run.failed = failed
        except Exception as exc:
            run.error = exc
            self.first_error = self.first_error or exc
        return run

    def _need_run(self) -> _Run:
        run = self.run()
        if run.failed is not None:
            raise run.failed
        if run.error is not None:
            raise _Failed(f"fit() raised {_describe(run.error)}")
        return run

    # -- checks ----------------------------------------------------------------
    def check_fit(self) -> None:
        run = self._need_run()
        model, problems = run.model, []
        if not run.history:
            problems.append("fit() logged no metrics: train_step must return a dict.")
        for key, values in (run.history or {}).items():
            if not _all_finite(values):
                problems.append(f"fit() logged non-finite {key!r}: {values}.")
        # Compare with a fresh build: same seed, same initial weights.
        initial = self.build()
        fresh = self._updated_networks(initial)
        for role, variables in self._updated_networks(model).items():
            if not variables:
                problems.append(f"optimizer role {role!r} has no trainable weights.")
            elif all(
                np.array_equal(_numpy(a), _numpy(b))
                for a, b in zip(variables, fresh[role], strict=True)
            ):
                problems.append(
                    f"fit() changed no trainable weight updated by optimizer {role!r}."
                )
        weights = [_numpy(w) for w in model.weights]
        try:
            logs = model.evaluate(
                self.x,
                self.y,
                sample_weight=self.sample_weight,
                batch_size=self.batch_size,
                verbose=0,
                return_dict=True,
            )
        except Exception as exc:
            self.first_error = self.first_error or exc
            raise _Failed(*problems, f"evaluate() raised {_describe(exc)}") from None
        if not logs:
            problems.append(
                "evaluate() returned no metrics: test_step must return a dict."
            )
        elif not _all_finite(logs):
            problems.append(f"evaluate() returned non-finite metrics: {logs}.")
        changed = [
            w.path
            for w, old in zip(model.weights, weights, strict=True)
            if not np.array_equal(_numpy(w), old)
        ]
        if changed:
            problems.append(f"evaluate() changed weights: {', '.join(changed)}.")
        try:
            pred = model.predict(self.predict_x, batch_size=self.batch_size, verbose=0)
        except Exception as exc:
            self.first_error = self.first_error or exc
            raise _Failed(*problems, f"predict() raised {_describe(exc)}") from None
        n = _length(self.predict_x)
        for i, leaf in enumerate(keras.tree.flatten(pred)):
            leaf = np.asarray(leaf)
            if n is not None and (leaf.ndim == 0 or leaf.shape[0] != n):
                problems.append(
                    f"predict() output {i} has shape {leaf.shape}; expected a batch "
                    f"dimension of {n}, one row per input."
                )
            elif not _all_finite(leaf):
                problems.append(f"predict() output {i} has non-finite values.")
        if problems:
            raise _Failed(*problems)

    def check_metrics_reset(self) -> None:
        run = self._need_run()
        if run.leaked_metrics:
            raise _Failed(
                *(
                    f"metric {m} was updated during fit() but Keras never resets it, "
                    "so its value accumulates across epochs and evaluate() calls. "
                    "Create trackers in the step_build hook and return them in its "
                    "dict (model.step_state), which Keras tracks and resets."
                    for m in run.leaked_metrics
                )
            )

    def check_loss_scaling(self) -> None:
        events: list[tuple[str, str]] = []

        def sgd(role, spec):
            return keras.optimizers.SGD(learning_rate=0.01)

        def spied(role, spec):
            return _ScaleLossSpy(sgd(role, spec), role, events)

        try:
            plain = self.build(optimizers=sgd)
            self.fit(plain, epochs=1)
            scaled = self.build(optimizers=spied)
            self.fit(scaled, epochs=1)
        except _Failed:
            raise
        except Exception as exc:
            self.first_error = self.first_error or exc
            raise _Failed(
                f"training with SGD optimizers raised {_describe(exc)}"
            ) from None
        problems = []
        for role in self.step.optimizer_roles:
            unscaled = applies = 0
            scaled_since_apply = False
            for kind, who in events:
                if who != role:
                    continue
                if kind == "scale_loss":
                    scaled_since_apply = True
                else:
                    applies += 1
                    unscaled += not scaled_since_apply
                    scaled_since_apply = False
            if applies == 0:
                problems.append(
                    f"optimizer {role!r} never applied gradients during one epoch, so "
                    "loss scaling could not be checked; update weights with "
                    "keras_steps.backprop(loss, model.optimizers[role], variables)."
                )
            elif unscaled:
                problems.append(
                    f"the step applied gradients with optimizer {role!r} {unscaled} "
                    f"of {applies} times without calling its scale_loss() first: "
                    "under mixed_float16 the loss is not scaled and small gradients "
                    "underflow to zero. Update weights with keras_steps.backprop("
                    "loss, optimizer, variables), which scales the loss."
                )
        if problems:
            raise _Failed(*problems)
        for role, (a, b) in _paired(
            self._updated_networks(plain), self._updated_networks(scaled)
        ):
            diff = _max_rel_diff(a, b)
            if diff > 1e-3:
                problems.append(
                    f"with optimizer {role!r} wrapped in a LossScaleOptimizer, the "
                    "weights after one epoch differ from an unwrapped run (max "
                    f"relative difference {diff:.3g}): the step calls scale_loss() "
                    "but does not back-propagate the scaled loss it returns."
                )
        if problems:
            raise _Failed(*problems)

    def check_mixed_precision(self) -> None:
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_float16")
        try:
            model = self.build()
            history = self.fit(model, epochs=1).history
        except _Failed:
            raise
        except Exception as exc:
            self.first_error = self.first_error or exc
            raise _Failed(
                f"fit() under mixed_float16 raised {_describe(exc)}"
            ) from None
        finally:
            keras.config.set_dtype_policy(previous)
        bad = {k: v for k, v in history.items() if not _all_finite(v)}
        if bad:
            raise _Failed(
                f"fit() under mixed_float16 logged non-finite metrics: {bad}."
            )

    def check_save_load(self) -> None:
        supported, reason = persistence_support()
        if not supported:
            raise _Skipped(reason)
        run = self._need_run()
        model = run.model
        path = self.tmp_path / f"{self.name}.keras"
        try:
            model.save(path)
            loaded = keras.saving.load_model(path)
        except Exception as exc:
            self.first_error = self.first_error or exc
            raise _Failed(
                f"model.save / keras.saving.load_model raised {_describe(exc)}"
            ) from None
        problems = []
        if not isinstance(loaded, StepModel) or loaded.step != self.name:
            raise _Failed(
                f"load_model returned {loaded!r}, not a StepModel of step "
                f"{self.name!r}."
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
                if not np.array_equal(_numpy(va), _numpy(vb)):
                    problems.append(f"{what} variable {va.path} differs after loading.")
        if problems:
            raise _Failed(*problems)
        kw = {"batch_size": self.batch_size, "verbose": 0}
        ours = keras.tree.flatten(model.predict(self.predict_x, **kw))
        theirs = keras.tree.flatten(loaded.predict(self.predict_x, **kw))
        if _max_rel_diff(ours, theirs) > 1e-6:
            raise _Failed(
                "predict() differs after loading although every variable matches: "
                "does the step draw random numbers outside a SeedGenerator created "
                "in step_build?"
            )


def _paired(a: dict, b: dict):
    return [(k, (a[k], b[k])) for k in a]


def _max_rel_diff(a: list[Any], b: list[Any]) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x = np.asarray(_numpy(x), dtype="float64")
        y = np.asarray(_numpy(y), dtype="float64")
        if x.shape != y.shape:
            return float("inf")
        scale = np.maximum(np.abs(x), np.abs(y)).max(initial=0.0)
        if scale:
            worst = max(worst, float(np.abs(x - y).max() / scale))
    return worst


def _metric_states() -> dict[int, tuple[Any, list[np.ndarray]]]:
    """Every live Keras metric and its variables' values."""
    states = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), keras.metrics.Metric):
            states[id(obj)] = (obj, [_numpy(v) for v in obj.variables])
    return states


def _leaked(before: dict, after: dict, reset: dict) -> list[str]:
    """Metrics updated between ``before`` and ``after`` that a reset left alone."""
    leaked = []
    for key, (metric, values) in after.items():
        if key in before:
            updated = any(
                not np.array_equal(a, b)
                for a, b in zip(before[key][1], values, strict=True)
            )
        else:
            updated = any(np.any(v != 0) for v in values)
        if not updated or key not in reset:
            continue
        if all(
            np.array_equal(a, b) for a, b in zip(values, reset[key][1], strict=True)
        ):
            leaked.append(f"{metric.name!r} ({type(metric).__name__})")
    return sorted(leaked)


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {_one_line(exc)}{where}"


# -- entry point ----------------------------------------------------------------


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
        checks: the names of the checks to run (see :data:`CHECKS`); all by
            default.
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
    unknown = [c for c in selected if c not in CHECKS]
    if unknown:
        raise ValueError(f"Unknown check(s) {unknown}; the checks are {list(CHECKS)}.")
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
            report.results["hooks"] = CheckResult("failed", [_one_line(exc)])
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
    checker = None
    for check in selected:
        if check in static:
            problems = static[check]()
            report.results[check] = CheckResult(
                "failed" if problems else "passed", problems
            )
            continue
        checker = checker or _Checker(step, **kw)
        if checker.build_error is not None:
            report.results[check] = CheckResult(
                "skipped", ["not run: the StepModel cannot be built (see above)."]
            )
            continue
        try:
            getattr(checker, f"check_{check}")()
        except _Failed as failed:
            report.results[check] = CheckResult("failed", failed.messages)
        except _Skipped as skipped:
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
        cause = checker.first_error if checker is not None else None
        raise ConformanceError(report) from cause
