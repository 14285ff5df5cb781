"""What the dynamic checks share: the data, fresh compiled models, one training run."""

from __future__ import annotations

import dataclasses
import gc
import pathlib
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from keras_steps._errors import StepError
from keras_steps._model import StepModel
from keras_steps._step import Step
from keras_steps.testing._arrays import to_numpy
from keras_steps.testing._report import Failed, describe


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


def _metric_states() -> dict[int, tuple[Any, list[np.ndarray]]]:
    """Every live Keras metric and its variables' values."""
    states = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), keras.metrics.Metric):
            states[id(obj)] = (obj, [to_numpy(v) for v in obj.variables])
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


@dataclasses.dataclass
class Run:
    """One trained model and what was observed while training it."""

    model: Any = None
    history: dict[str, list[float]] | None = None
    failed: Failed | None = None
    error: BaseException | None = None
    leaked_metrics: list[str] = dataclasses.field(default_factory=list)


class Harness:
    """The step under check, its data and networks, and what training showed."""

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
        self._run: Run | None = None

    def record(self, exc: BaseException) -> None:
        """Keep the first unexpected error, the cause of the ConformanceError."""
        self.first_error = self.first_error or exc

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

    def build(self, optimizers: Callable[[str, Any], Any] | None = None, **compile_kwargs):
        """A fresh, compiled StepModel; ``optimizers`` maps (role, spec) to one.

        ``compile_kwargs`` (``steps_per_execution``, ``jit_compile``) override
        the compile arguments the check was given.
        """
        keras.utils.set_random_seed(self.seed)
        networks = self.models()
        if not isinstance(networks, dict):
            networks = {self.step.model_roles[0]: networks}
        try:
            model = StepModel(
                models=networks, step=self.name, step_options=self.step_options
            )
        except StepError as exc:
            self.build_error = f"StepModel(models=...) raised {describe(exc)}"
            raise Failed(self.build_error) from None
        kwargs = self._compile_kwargs()
        if optimizers is not None:
            roles = self.step.optimizer_roles
            given = kwargs.get("optimizer", "rmsprop")
            per_role = given if isinstance(given, dict) else {roles[0]: given}
            wrapped = {r: optimizers(r, per_role[r]) for r in roles}
            kwargs["optimizer"] = wrapped if len(roles) > 1 else wrapped[roles[0]]
        model.compile(**{**kwargs, **compile_kwargs})
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

    def updated_networks(self, model) -> dict[str, list[Any]]:
        roles = self.step.optimizer_roles
        if len(roles) == 1:
            return {roles[0]: list(model.trainable_variables)}
        return {r: list(model.models[r].trainable_variables) for r in roles}

    # -- the shared training run ----------------------------------------------
    def run(self) -> Run:
        if self._run is not None:
            return self._run
        run = self._run = Run()
        try:
            model = run.model = self.build()
            before = _metric_states()
            run.history = self.fit(model).history
            after = _metric_states()
            model.reset_metrics()
            reset = _metric_states()
            run.leaked_metrics = _leaked(before, after, reset)
        except Failed as failed:
            run.failed = failed
        except Exception as exc:
            run.error = exc
            self.record(exc)
        return run

    def need_run(self) -> Run:
        run = self.run()
        if run.failed is not None:
            raise run.failed
        if run.error is not None:
            raise Failed(f"fit() raised {describe(run.error)}")
        return run
