"""``StepModel``: a ``keras.Model`` whose training step is picked by name."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import keras

from keras_steps import _arguments, _distributed, _execution, _saving
from keras_steps import _keras_private as _private
from keras_steps._errors import RoleError, StepError
from keras_steps._options import StepOptions
from keras_steps._registry import get_step
from keras_steps._step import Step
from keras_steps.callbacks import _learning_rate

__all__ = ["StepModel"]


@keras.saving.register_keras_serializable(package="keras_steps")
class StepModel(_private.TrainerHooks, keras.Model):
    """A ``keras.Model`` that trains with a step chosen by name.

    Three forms, as with ``keras.Model``::

        # functional
        model = StepModel(inputs, outputs, step="sam", step_options={"rho": 0.1})
        # wrapping existing networks, one per role of the step
        gan = StepModel(models={"generator": g, "discriminator": d}, step="gan")
        # subclassed
        class MyModel(StepModel):
            def __init__(self):
                super().__init__(step="mixup")
                self.dense = keras.layers.Dense(10)
            def call(self, x):
                return self.dense(x)

    ``compile``, ``fit``, ``evaluate``, ``predict`` and callbacks work as in
    Keras. A subclass that overrides ``train_step`` itself bypasses the step.

    ``model.save`` and ``keras.models.load_model`` keep the step, its options,
    every network, every optimizer's state, the step's metric trackers and
    random seed state (the docs' "Saving and resuming" page); ``save`` and
    ``save_weights`` are atomic, so a kill leaves the old file or the new one.
    A subclass with its own constructor
    arguments is serialized as in Keras (register it with
    ``keras.saving.register_keras_serializable``); the step and options it
    was saved with are restored whatever its constructor passes.

    Args:
        step: name of a registered step (see ``keras-steps list``).
            Defaults to ``"supervised"``, Keras's own training step.
        step_options: the step's options, as a dict or an instance of its
            options class (see ``keras-steps show STEP``).
        models: dict mapping each of the step's model roles to a Keras model
            or layer; leave it out for the functional and subclassed forms.
        **kwargs: passed to ``keras.Model`` (``name``, ``trainable``, ...).

    Attributes:
        step: the step name.
        step_options: the validated options (a pydantic model).
        step_state: what the step's ``step_build`` hook created (metric
            trackers, seed generators), or an empty dict.
        models: read-only mapping from model role to network (``self`` for
            the functional and subclassed forms).
        optimizers: read-only mapping from optimizer role to optimizer,
            after ``compile``.

    Under ``torchrun`` with several processes, ``fit`` and ``evaluate`` are
    data-parallel with no change to the script: see the docs' "Distributed training" page.

    Raises:
        UnknownStepError, OptionsError, RoleError: bad ``step``,
            ``step_options`` or ``models``.
    """

    def __new__(cls, *args, **kwargs):
        # keras.Model would rewrite the *class* hierarchy of a subclass built
        # functionally (inject_functional_model_class), which breaks every later
        # subclassed use of it. A cached mixed-in variant keeps classes intact.
        if _private.functional_init_arguments(args, kwargs):
            cls = _variant(cls, _private.Functional)
        elif kwargs.get("models") is not None:
            cls = _variant(cls, _CallsRoleModels)
        # Skips keras.Model.__new__, which drops the arguments that Keras's
        # automatic get_config of a subclass records (it would save defaults).
        return super(keras.Model, cls).__new__(cls, *args, **kwargs)

    def __init__(
        self,
        *args: Any,
        step: str = "supervised",
        step_options: dict[str, Any] | StepOptions | None = None,
        models: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        saved = _saving.claim_saved_step(self)
        if saved is not None:
            resolved, options = saved
        else:
            resolved = get_step(step)
            options = resolved.validate_options(step_options)
        _distributed.setup()
        functional = _private.functional_init_arguments(args, kwargs)
        if functional and models is not None:
            raise RoleError(
                f"StepModel(step={step!r}) got both inputs/outputs and models=; "
                "use one form: StepModel(inputs, outputs, ...) or StepModel(models={...})."
            )
        if functional:
            _private.BackendTrainer.__init__(self)
            _private.Functional.__init__(self, *args, **kwargs)
        else:
            keras.Model.__init__(self, *args, **kwargs)
        self._attach(resolved, options, models)

    def _attach(self, step: Step, options: StepOptions, models: dict | None) -> None:
        self._step = step
        self._step_options = options
        self._train_hook = step.hooks["train_step"]
        self._test_hook = step.hooks.get("test_step")
        self._arguments = step.arguments or _arguments.parse_rules(
            step.name, str(step.source), None
        )
        self._predict_hook = step.hooks.get("predict_step")
        self._call_hook = step.hooks.get("step_call")
        self._step_optimizers: dict[str, Any] = {}
        self._trained_state = _distributed.TrainedState()
        if models is None:
            if len(step.model_roles) != 1:
                raise RoleError(
                    f"Step {step.name!r} ({step.source}) works on several networks "
                    f"{step.model_roles}; pass them as StepModel(models={{"
                    + ", ".join(f"{r!r}: ..." for r in step.model_roles)
                    + f"}}, step={step.name!r})."
                )
            self._role_models = None
        else:
            self._role_models = _check_models(step, models)
        build = step.hooks.get("step_build")
        state = build(self, options) if build is not None else None
        if state is not None and not isinstance(state, dict):
            raise StepError(
                f"Step {step.name!r} ({step.source}): hook step_build returned "
                f"{type(state).__name__}; expected a dict or None."
            )
        self.step_state = state or {}
        # After step_build, which may build the networks on the shapes the step
        # feeds them; else Keras builds the model by calling it on a data batch.
        if self._role_models is not None and all(
            getattr(m, "built", False) for m in self._role_models.values()
        ):
            self.built = True

    # -- what the step is -------------------------------------------------------
    @property
    def step(self) -> str:
        return self._step.name

    @property
    def step_options(self) -> StepOptions:
        return self._step_options

    @property
    def models(self) -> Mapping[str, Any]:
        # Read-only mappings, not dicts: Keras's saving walks every attribute
        # and descends into dicts, and {role: self} would send load_model and
        # load_weights (so BackupAndRestore) into an endless recursion.
        if self._role_models is None:
            return MappingProxyType({self._step.model_roles[0]: self})
        return MappingProxyType(dict(self._role_models))

    @property
    def optimizers(self) -> Mapping[str, Any]:
        if self._step_optimizers:
            return MappingProxyType(dict(self._step_optimizers))
        if getattr(self, "optimizer", None) is None:
            return MappingProxyType({})
        return MappingProxyType({self._step.optimizer_roles[0]: self.optimizer})

    @property
    def metrics(self):
        metrics = super().metrics
        tracker = self.compiled_loss_tracker()
        own = next(
            (m for m in self.step_state.values() if getattr(m, "name", None) == "loss"), None
        )
        if tracker is not None and own is not None and own is not tracker:
            # A step that tracks its own total "loss" takes the place of Keras's
            # compile-loss tracker (which it never updates): one "loss" metric,
            # first, as evaluate() users expect.
            metrics = [own if m is tracker else m for m in metrics if m is not own]
        return metrics

    def compiled_loss_tracker(self):
        """The metric behind ``"loss"`` in the logs for the loss given to ``compile()``.

        A step that trains with the compiled loss (as Keras's own
        ``train_step`` does) updates this ``keras.metrics.Mean`` with each
        batch's loss, weighted by the batch size, rather than a second
        metric named ``"loss"``.

        Returns:
            The tracker, or None before ``compile()``.
        """
        return _private.loss_tracker(self)

    # -- saving --------------------------------------------------------------
    @_private.default_config  # keeps Keras's automatic config for subclasses
    def get_config(self):
        _saving.register_variant_name(type(self))
        if self._role_models is None:
            config = super().get_config()
        else:
            config = {
                "name": self.name,
                "trainable": self.trainable,
                "dtype": keras.dtype_policies.serialize(self.dtype_policy),
                "models": {
                    role: keras.saving.serialize_keras_object(network)
                    for role, network in self._role_models.items()
                },
            }
        return {**config, **_saving.step_config(self._step, self._step_options)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        # A subclass with its own get_config may leave the step keys out (its
        # constructor picks the step); any other config must have them all.
        saved = _saving.pop_saved_step(
            config, required=cls.get_config is StepModel.get_config
        )
        if saved is None:
            return super().from_config(config, custom_objects=custom_objects)
        step, options = saved
        with _saving.rebuilding(cls, step, options) as pending:
            if "models" in config:
                models = _saving.deserialize_models(
                    step, config.pop("models"), custom_objects
                )
                model = cls(models=models, **config)
            else:
                model = super().from_config(config, custom_objects=custom_objects)
        _saving.check_restored(pending, cls)
        return model

    def compile_from_config(self, config):
        if type(self).compile is not StepModel.compile:
            # A subclass with its own compile(): Keras warns and skips it.
            return super().compile_from_config(config)
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.optimizer is not None and self.built:
            # Build it now so that load_model can restore its variables.
            self.optimizer.build(self.trainable_variables)

    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        """Save as ``keras.Model.save``, atomically.

        The file is written under a temporary name in the same directory,
        then renamed over ``filepath``: a process killed at any moment leaves
        the old file or the new one, never a broken one (so does
        ``ModelCheckpoint``, which calls this). Remote paths and
        ``zipped=False`` directories are written by Keras as they are.
        """
        _saving.save_model(super().save, filepath, overwrite, zipped, **kwargs)

    def save_weights(self, filepath, overwrite=True, max_shard_size=None):
        """Save the weights as ``keras.Model.save_weights``, atomically (see ``save``).

        Sharded weights (``max_shard_size``) are written by Keras as they are.
        """
        _saving.save_weights(super().save_weights, filepath, overwrite, max_shard_size)

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Load weights as ``keras.Model.load_weights``, every optimizer included.

        Each optimizer of a compiled model is built first, so its state
        (``iterations``, moments) is restored even before the first step.

        Raises:
            DamagedFileError: the file is truncated or not a weights file.
            StepError: the file's optimizer state does not fit the model's
                optimizers (Keras would skip it with a warning).
        """
        _saving.load_weights(self, super().load_weights, filepath, skip_mismatch, **kwargs)

    def save_own_variables(self, store):
        super().save_own_variables(store)
        _saving.save_unsaved_state(self, store)

    def load_own_variables(self, store):
        super().load_own_variables(_saving.load_unsaved_state(self, store))

    # -- Keras entry points ----------------------------------------------------
    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        loss_weights=None,
        metrics=None,
        weighted_metrics=None,
        run_eagerly=False,
        steps_per_execution=1,
        jit_compile="auto",
        auto_scale_loss=True,
    ):
        """Configure the model for training, as ``keras.Model.compile``.

        For a step with several optimizer roles, ``optimizer`` is a dict keyed
        by those roles; each optimizer updates the model of the same role, and
        under the ``mixed_float16`` policy each is wrapped in a
        ``LossScaleOptimizer`` (Keras wraps only a single optimizer).

        A ``loss``, ``loss_weights``, ``metrics`` or ``weighted_metrics`` the
        step refuses (its ``step_arguments`` hook) is an error here. A step
        that computes with the loss itself (``"own"``, e.g. ``gan``) gets it
        as ``model.loss``; Keras then builds no compiled loss from it.

        Raises:
            RoleError: an optimizer role is missing, unknown, ``None``, or
                shares its optimizer with another role.
            ArgumentError: an argument the step refuses.
        """
        self._arguments.check_compile(
            loss=loss, loss_weights=loss_weights, metrics=metrics,
            weighted_metrics=weighted_metrics,
        )
        roles = self._step.optimizer_roles
        optimizer, role_optimizers = self._split_optimizers(optimizer, roles)
        own_loss = self._arguments.owns_loss
        super().compile(
            optimizer=optimizer,
            loss=None if own_loss else loss,
            loss_weights=loss_weights,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            auto_scale_loss=auto_scale_loss,
        )
        if own_loss:
            # Kept from Keras's CompileLoss, whose symbolic build would feed
            # the batch to the networks; get_compile_config saves it.
            self.loss = loss
        if role_optimizers:
            if auto_scale_loss and self.dtype_policy.name == "mixed_float16":
                role_optimizers = {
                    r: o
                    if isinstance(o, keras.optimizers.LossScaleOptimizer)
                    else keras.optimizers.LossScaleOptimizer(o, name=f"{r}_loss_scale_optimizer")
                    for r, o in role_optimizers.items()
                }
            self._step_optimizers = role_optimizers
            self._build_role_optimizers()
        else:
            self._step_optimizers = {}

    def get_compile_config(self):
        """``compile()``'s arguments for saving, with one optimizer per role."""
        config = super().get_compile_config()
        if config is None:
            return config
        if self._step_optimizers:
            # keras.Model.compile got optimizer=None for a multi-role step.
            config["optimizer"] = keras.saving.serialize_keras_object(
                dict(self._step_optimizers)
            )
        if self._arguments.owns_loss and self.loss is not None:
            # keras.Model.compile got loss=None for a step that owns its loss.
            config["loss"] = keras.saving.serialize_keras_object(self.loss)
        return config

    def _split_optimizers(self, optimizer, roles):
        """Return (optimizer for keras.Model.compile, per-role dict or None)."""
        step = self._step
        if isinstance(optimizer, dict):
            missing = [r for r in roles if r not in optimizer]
            unknown = [k for k in optimizer if k not in roles]
            if missing or unknown:
                raise RoleError(
                    f"Step {step.name!r} ({step.source}) takes optimizers for roles "
                    f"{list(roles)}; got {sorted(optimizer, key=str)}."
                    + (f" Missing: {missing}." if missing else "")
                    + (f" Unknown: {unknown}." if unknown else "")
                )
            if len(roles) == 1:
                return optimizer[roles[0]], None
            _arguments.check_optimizers(step.name, str(step.source), optimizer)
            return None, {r: keras.optimizers.get(optimizer[r]) for r in roles}
        if len(roles) > 1:
            raise RoleError(
                f"Step {step.name!r} ({step.source}) trains several networks and needs "
                f"one optimizer per role: compile(optimizer={{"
                + ", ".join(f"{r!r}: ..." for r in roles)
                + f"}}). Got {optimizer!r}."
            )
        return optimizer, None

    def _build_role_optimizers(self) -> None:
        for role, opt in self._step_optimizers.items():
            model = self.models[role]
            if not opt.built and getattr(model, "built", False):
                opt.build(model.trainable_variables)

    # Keras's TorchTrainer builds these too but refuses steps_per_execution > 1;
    # ours run every batch of the group EpochIterator hands over (see _execution).
    def make_train_function(self, force=False):
        self._build_role_optimizers()
        if _distributed.is_active():
            overlap = _distributed.overlap_requested()
            for optimizer in self.optimizers.values():
                _distributed.average_gradients_in(optimizer, overlap=overlap)
        self._trained_state = _distributed.TrainedState()
        if self.train_function is None or force:
            self.train_function = _execution.make_train_function(self)
            if _distributed.is_active():
                # Overlap hooks start all-reduces only inside the train function.
                self.train_function = _distributed.during_training(self.train_function)
        return self.train_function

    def make_test_function(self, force=False):
        if self.test_function is None or force:
            self.test_function = _execution.make_test_function(self)
        return self.test_function

    def make_predict_function(self, force=False):
        if self.predict_function is None or force:
            self.predict_function = _execution.make_predict_function(self)
        return self.predict_function

    def fit(self, *args, **kwargs):
        """Train as ``keras.Model.fit``; data-parallel under ``torchrun``.

        There, array data is sharded across ranks (``batch_size`` is per
        rank), rank 0's weights are broadcast first, gradients are averaged
        in every update, History holds metrics over all ranks, and only rank
        0 prints or writes checkpoints. See the docs' "Distributed training" page.
        """
        # BackupAndRestore(save_freq=N) restores mid-epoch weights but Keras
        # replays that epoch from its start; resume at the right batch instead.
        args, kwargs = _saving.with_mid_epoch_resume(super().fit, args, kwargs)
        args = inspect.signature(super().fit).bind(*args, **kwargs).arguments
        _arguments.check_arguments(self._arguments, "fit", self.loss is not None, args)
        # Learning-rate callbacks reach every optimizer role; monitors know
        # which way the step's trackers improve.
        args["callbacks"] = _learning_rate.fit_callbacks(self, args.get("callbacks"))
        if _distributed.is_active():
            args = _distributed.fit_arguments(self, args)
        history = super().fit(**args)
        if args.get("epochs", 1) > 0:
            # Keras swaps EMA averages into the weights for self.optimizer only.
            for role, optimizer in self._step_optimizers.items():
                optimizer.finalize_variable_values(self.models[role].trainable_weights)
        return history

    def evaluate(self, *args, **kwargs):
        """Evaluate as ``keras.Model.evaluate``; under ``torchrun`` each rank
        evaluates its shard of array data and the results cover all ranks
        (every rank must call it)."""
        args = inspect.signature(super().evaluate).bind(*args, **kwargs).arguments
        _arguments.check_arguments(self._arguments, "evaluate", self.loss is not None, args)
        if _distributed.is_active():
            args = _distributed.evaluate_arguments(self, args)
        extra = args.pop("kwargs", {})
        return super().evaluate(**args, **extra)

    def train_on_batch(self, *args, **kwargs):
        """As ``keras.Model.train_on_batch``, with the step's arguments checked first."""
        args = inspect.signature(super().train_on_batch).bind(*args, **kwargs).arguments
        _arguments.check_arguments(self._arguments, "train_on_batch", self.loss is not None, args)
        return super().train_on_batch(**args)

    def test_on_batch(self, *args, **kwargs):
        """As ``keras.Model.test_on_batch``, with the step's arguments checked first."""
        args = inspect.signature(super().test_on_batch).bind(*args, **kwargs).arguments
        _arguments.check_arguments(self._arguments, "test_on_batch", self.loss is not None, args)
        return super().test_on_batch(**args)

    def predict(self, *args, **kwargs):
        """Predict as ``keras.Model.predict``. Not sharded under ``torchrun``:
        every rank predicts all of ``x``; only rank 0 shows a progress bar."""
        args = inspect.signature(super().predict).bind(*args, **kwargs).arguments
        if _distributed.rank() != 0:
            args["verbose"] = 0
        return super().predict(**args)

    # Keras's symbolic build calls these two on a dataset's first batch before
    # any step hook runs: the step's arguments are checked there first.
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        y = self._arguments.targets(x, y)
        return super().compute_loss(x, y, y_pred, sample_weight, training=training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        y = self._arguments.targets(x, y)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def train_step(self, data):
        self._arguments.check_data(data)
        logs = self._train_hook(self, data, self._step_options)
        if _distributed.is_active():
            # Gradients were averaged in optimizer.apply; statistics that the
            # forward pass updates (BatchNorm) are averaged here.
            self._trained_state.average(self)
        return logs

    # Set by a fused execution while it runs the batches whose logs it drops.
    _discarding_logs = False

    def get_metrics_result(self):
        """The metrics' results, as ``keras.Model.get_metrics_result``.

        Within a fused execution (``compile(steps_per_execution=N)``), the
        batches before the last have their logs thrown away; for them this
        returns an empty dict instead of computing every result. The metrics
        themselves are updated by every batch.
        """
        if self._discarding_logs:
            return _DiscardedLogs()
        return super().get_metrics_result()

    def _epoch_logs(self, logs, keras_logs):
        # What fit() and evaluate() report for an epoch (see TrainerHooks).
        if _distributed.is_active():
            return _distributed.global_logs(self, logs)
        return keras_logs(logs)

    def test_step(self, data):
        self._arguments.check_data(data)
        if self._test_hook is None:
            return keras.Model.test_step(self, data)
        return self._test_hook(self, data, self._step_options)

    def predict_step(self, data):
        if self._predict_hook is None:
            return keras.Model.predict_step(self, data)
        return self._predict_hook(self, data, self._step_options)


class _DiscardedLogs(dict):
    """The logs of a batch that is not the last of a fused execution: empty."""

    def __missing__(self, key):
        raise KeyError(
            f"{key!r}: metric results are not computed for the batches before the last "
            "of a fused execution (steps_per_execution > 1), whose logs are discarded. "
            "Read the metric itself, e.g. model.metrics, or metric.result()."
        )


class _CallsRoleModels(keras.Model):
    """Mixed into StepModel(models=...): ``call`` runs the step's networks."""

    def call(self, inputs, training=None):
        if self._call_hook is not None:
            return self._call_hook(self, inputs, training, self._step_options)
        (network,) = self._role_models.values()
        return network(inputs, training=training)

    # -- frozen roles (step_frozen_roles) -------------------------------------
    # The networks of frozen roles stay out of the trainable weights of this
    # model only: their variables' own flags, which the user's network shares,
    # are left alone, so the network trains as before in any other model.
    def _frozen_variable_ids(self) -> set[int]:
        # Both None until _attach has run (keras.Model.__init__ reads weights).
        step = getattr(self, "_step", None)
        networks = getattr(self, "_role_models", None)
        if step is None or not step.frozen_roles or networks is None:
            return set()
        return {id(v) for role in step.frozen_roles for v in networks[role].variables}

    # Only StepModel(models=...) has roles to freeze, so the functional and
    # subclassed forms keep Keras's own properties: Keras's train step reads
    # them inside compiled steps, where these cost a graph break. keras.Model's
    # are called directly, not through super(): dynamo (torch 2.13) failed to
    # resume a frame after tracing a super() property call, and then ran the
    # whole train step eagerly.
    @property
    def trainable_weights(self):
        weights = keras.Model.trainable_weights.fget(self)
        frozen = self._frozen_variable_ids()
        return [v for v in weights if id(v) not in frozen] if frozen else weights

    @property
    def trainable_variables(self):
        variables = keras.Model.trainable_variables.fget(self)
        frozen = self._frozen_variable_ids()
        return [v for v in variables if id(v) not in frozen] if frozen else variables

    @property
    def non_trainable_weights(self):
        if not self._frozen_variable_ids():
            return keras.Model.non_trainable_weights.fget(self)
        trainable = {id(v) for v in self.trainable_weights}
        return [v for v in self.weights if id(v) not in trainable]

    @property
    def non_trainable_variables(self):
        if not self._frozen_variable_ids():
            return keras.Model.non_trainable_variables.fget(self)
        trainable = {id(v) for v in self.trainable_variables}
        return [v for v in self.variables if id(v) not in trainable]


_VARIANTS: dict[tuple[type, type], type] = {}


def _variant(cls: type, base: type) -> type:
    if issubclass(cls, base):
        return cls
    key = (cls, base)
    if key not in _VARIANTS:
        _VARIANTS[key] = type(
            cls.__name__,
            (cls, base),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "_step_base": cls},
        )
    return _VARIANTS[key]


def _check_models(step: Step, models: Any) -> dict[str, Any]:
    if not isinstance(models, dict):
        raise RoleError(
            f"Step {step.name!r} ({step.source}): models must be a dict from role to "
            f"network with keys {list(step.model_roles)}, got {type(models).__name__}."
        )
    missing = [r for r in step.model_roles if r not in models]
    unknown = [k for k in models if k not in step.model_roles]
    if missing or unknown:
        raise RoleError(
            f"Step {step.name!r} ({step.source}) works on model roles "
            f"{list(step.model_roles)}; got {sorted(models, key=str)}."
            + (f" Missing: {missing}." if missing else "")
            + (f" Unknown: {unknown}." if unknown else "")
        )
    for role, network in models.items():
        if not isinstance(network, keras.layers.Layer):
            raise RoleError(
                f"Step {step.name!r} ({step.source}): model role {role!r} must be a "
                f"keras.Model or keras.layers.Layer, got {type(network).__name__}."
            )
    return {r: models[r] for r in step.model_roles}
