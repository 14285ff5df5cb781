"""The hooks a step plugin implements.

A *step* is one plugin object (a module, a class, or an instance) registered
under the step's name. keras_steps resolves the selected step's
implementations once, when a :class:`~keras_steps.StepModel` is created, and
then calls them directly, so every hook below has exactly one implementation
per step and "first result" semantics: the value the step's implementation
returns is the value used.

Implementations may accept any subset of a hook's arguments, in any order,
as pluggy allows. Only ``train_step`` is required; every other hook has the
default documented with it.

Versioning: each hook's docstring ends with the keras-steps version that
added it ("Added in 0.1."; :func:`hook_versions` reads them). A newer
keras-steps only ever adds *optional* hooks, so a plugin written against an
older version keeps working. A hook on its way out stays callable for at least
one minor version and is marked with :func:`deprecated`: registering a plugin
that implements it emits a :class:`HookDeprecationWarning` pointing at the
implementation (pluggy's ``warn_on_impl``), its docstring says "Deprecated in
X.Y." and :data:`DEPRECATED` lists it. A plugin that implements a hook added
in a newer keras-steps than the one installed can mark it
``@hookimpl(optionalhook=True)`` to keep loading on older versions.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

import pluggy

__all__ = [
    "DEPRECATED",
    "PROJECT_NAME",
    "HookDeprecationWarning",
    "deprecated",
    "hook_versions",
    "hookimpl",
    "hookspec",
]

#: The pluggy project name; markers of other projects are ignored.
PROJECT_NAME = "keras_steps"

#: Marks a function of a step plugin as a hook implementation.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: Marks a function of this module as a hook specification.
hookspec = pluggy.HookspecMarker(PROJECT_NAME)


class HookDeprecationWarning(DeprecationWarning):
    """A plugin implements a hook that a later keras-steps will remove.

    Emitted when the plugin is registered, with the file and line of the
    implementation. Python hides ``DeprecationWarning`` from end users outside
    ``__main__``; pytest and ``keras-steps check`` show it to plugin authors,
    and the conformance kit (:mod:`keras_steps.testing`) fails on it.
    """


#: Deprecated hooks: hook name -> (version that deprecated it, what to do
#: instead). Filled by :func:`deprecated`; empty while no hook is deprecated.
DEPRECATED: dict[str, tuple[str, str]] = {}

_F = TypeVar("_F", bound=Callable[..., Any])


def deprecated(since: str, instead: str) -> Callable[[_F], _F]:
    """Mark a hook specification as deprecated (decorate above ``@hookspec``).

    The hook keeps working. Registering a plugin that implements it emits a
    :class:`HookDeprecationWarning` through pluggy's ``warn_on_impl``, and the
    hook is added to :data:`DEPRECATED`. Also write "Deprecated in X.Y." and
    the replacement into the hook's docstring, which the documentation shows.

    Args:
        since: the keras-steps version that deprecated the hook.
        instead: what plugin authors should do instead, as a sentence.

    Returns:
        A decorator for a function already marked with ``@hookspec``.
    """

    def mark(spec: _F) -> _F:
        opts = getattr(spec, f"{PROJECT_NAME}_spec", None)
        if opts is None:
            raise TypeError(
                f"@deprecated must be applied above @hookspec, on {spec.__name__}."
            )
        opts["warn_on_impl"] = HookDeprecationWarning(
            f"Hook {spec.__name__!r} is deprecated since keras-steps {since} and "
            f"will be removed in a later version. {instead}"
        )
        DEPRECATED[spec.__name__] = (since, instead)
        return spec

    return mark


@hookspec(firstresult=True)
def step_options() -> Any:
    """Return the step's options model: a subclass of :class:`~keras_steps.StepOptions`.

    Called once when the step is resolved. The class validates the
    ``step_options`` a user passes to :class:`~keras_steps.StepModel`, is shown
    by ``keras-steps show``, and is exported as JSON Schema. Every field needs
    a default and a ``description``.

    Return: the options class. Default when not implemented: a step without
    options (any option given is an error).

    Added in 0.1.
    """


@hookspec(firstresult=True)
def step_migrate_options(options: Any, version: Any) -> Any:
    """Turn options saved by an older version of the step into current ones.

    Called by ``keras.models.load_model`` (and ``from_config``) when a file's
    options were saved under an ``options_version`` lower than the current
    one of the step's options class (see :class:`~keras_steps.StepOptions`).
    The result is then validated as usual; options that still do not
    validate are an error naming the step, the field and the plugin, never a
    silent fallback to defaults. Without this hook, loading options of an
    older version is an error.

    Handle every older version in one place, oldest change first::

        @keras_steps.hookimpl
        def step_migrate_options(options, version):
            if version < 1:  # 0.2 renamed "radius" to "rho"
                options["rho"] = options.pop("radius")
            if version < 2:  # 0.3 replaced "adaptive: bool" by "mode"
                options["mode"] = "adaptive" if options.pop("adaptive") else "plain"
            return options

    Args:
        options: the saved options, a dict of plain JSON data (a copy; it may
            be changed in place).
        version: the ``options_version`` they were saved under, lower than
            the current one.

    Return: a dict of options for the current version.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def step_model_roles() -> Any:
    """Return the names of the networks the step works on, as a tuple of str.

    A step that trains one network returns one role (the default,
    ``("model",)``); that step works with all three forms of
    :class:`~keras_steps.StepModel`. A step with several roles, such as
    ``("generator", "discriminator")``, needs ``StepModel(models={...})`` with
    exactly those keys.

    Return: a non-empty tuple of distinct role names.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def step_optimizer_roles() -> Any:
    """Return the names of the optimizers the step needs, as a tuple of str.

    With one role (the default, ``("model",)``), ``compile(optimizer=...)``
    takes a single optimizer as in plain Keras and it updates every trainable
    weight. With several roles, ``compile`` takes a dict keyed by these names
    and each role must also be a model role: the optimizer updates that
    model's trainable weights, and is built on them at compile time.

    Return: a non-empty tuple of distinct role names.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def step_frozen_roles() -> Any:
    """Return the model roles the step uses but never trains, as a tuple of str.

    A distillation teacher is one. The networks of these roles stay out of
    the :class:`~keras_steps.StepModel`'s ``trainable_weights`` (so out of
    the optimizer, its saved state, the weight-regularization losses and
    ``summary()``'s trainable count) and appear in its
    ``non_trainable_weights``, without changing the networks: their
    ``trainable`` flags stay as the user set them, and the same network
    trains as before in a model of its own. The step must still run them
    with ``training=False`` (and without gradients) itself.

    Return: a tuple of some of the step's model roles, none of them an
    optimizer role; the default is ``()``.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def step_build(model: Any, options: Any) -> Any:
    """Create the per-model state the step needs: metric trackers, seed generators.

    Called once from :class:`~keras_steps.StepModel`'s constructor, after the
    options are validated and the models attached. Metrics and
    ``keras.random.SeedGenerator`` objects in the returned dict are tracked by
    Keras: metrics reset at each epoch and at ``evaluate()``, appear in
    ``model.metrics``, and all of it is saved with the model.

    Args:
        model: the :class:`~keras_steps.StepModel` being built.
        options: the validated options instance.

    Return: a dict of state, available during training as ``model.step_state``,
    or ``None`` for none.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def step_call(model: Any, inputs: Any, training: Any, options: Any) -> Any:
    """Say what ``model(inputs)`` means when the step wraps several networks.

    Used by ``StepModel(models={...})`` only: a functional or subclassed
    ``StepModel`` already has its own ``call``. ``predict()`` goes through it
    unless the step implements ``predict_step``.

    Args:
        model: the :class:`~keras_steps.StepModel`; its networks are in
            ``model.models``.
        inputs: the input batch.
        training: Keras's training flag (``True``, ``False`` or ``None``).
        options: the validated options instance.

    Return: the output tensors. Default when not implemented: the single
    model role's network applied to ``inputs``; a step with several model
    roles must implement it.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def train_step(model: Any, data: Any, options: Any) -> Any:
    """Run one training step on one batch; required.

    Called by ``fit()`` through Keras's train function, once per batch. The
    contract is Keras's own ``Model.train_step``: compute the loss, scale it
    with the optimizer's ``scale_loss`` (so mixed precision works; use
    :func:`keras_steps.backprop`, which does this), back-propagate, apply the
    gradients with each optimizer, update metrics.

    Args:
        model: the :class:`~keras_steps.StepModel` being trained.
        data: the batch as Keras gives it: ``x``, ``(x,)``, ``(x, y)`` or
            ``(x, y, sample_weight)``, each possibly nested.
        options: the validated options instance.

    Return: a dict mapping metric names to current values, shown in the
    progress bar and recorded in ``History``. Build it with
    ``model.compute_metrics(...)`` or ``model.get_metrics_result()``: with
    ``compile(steps_per_execution=N)`` only the last batch of each group's
    dict is used, and for the others ``get_metrics_result()`` returns an
    empty dict instead of computing every metric's result.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def test_step(model: Any, data: Any, options: Any) -> Any:
    """Run one evaluation step on one batch.

    Called by ``evaluate()`` and for validation data in ``fit()``, under
    ``torch.no_grad()``. It updates metrics and never changes weights.

    Args:
        model: the :class:`~keras_steps.StepModel` being evaluated.
        data: the batch, structured as for :func:`train_step`.
        options: the validated options instance.

    Return: a dict mapping metric names to current values. Default when not
    implemented: Keras's own ``test_step``, which calls ``model(x,
    training=False)`` (the functional or subclassed network, or
    :func:`step_call`) and updates the compiled loss and metrics; a step whose
    training loss is the compiled one needs no ``test_step``.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def step_arguments() -> Any:
    """Declare which data and compile arguments the step takes.

    Called once when the step is resolved. :class:`~keras_steps.StepModel`
    checks the declaration in ``compile``, ``fit`` and ``evaluate``, before
    Keras builds anything, and on each batch (datasets), so an argument the
    step cannot use is an :class:`~keras_steps.ArgumentError` naming the step,
    its plugin and the argument, and saying what the step does instead::

        @keras_steps.hookimpl
        def step_arguments():
            return {
                "y": "required",
                "loss": "required",
                "nested_x": keras_steps.Refused("it mixes x, so x must be one tensor"),
            }

    The arguments, and the rules each may have (``"optional"`` for all):

    - ``y``: ``"required"``; ``"defaults_to_x"`` (without ``y`` the step's
      target is ``x``, as in an autoencoder: ``fit(x)`` on arrays is then
      given ``y = x``, so that ``fit(x, sample_weight=w)`` keeps ``w``, which
      Keras drops for data without targets, and compiled metrics build on
      the target).
    - ``sample_weight``, ``class_weight`` (``fit`` turns it into per-example
      weights), ``nested_x`` (``x`` as a dict, list or tuple of inputs).
    - ``loss``: ``"required"`` (the step trains with ``model.compute_loss``);
      ``"own"`` (the step computes with ``model.loss`` itself, so Keras builds
      no compiled loss from it and never feeds the networks a batch to build
      one; ``model.loss`` is ``None`` when none was given).
    - ``loss_weights``, ``metrics``, ``weighted_metrics``.

    Any rule may instead be ``keras_steps.Refused("what the step does
    instead")``. Without ``y``, Keras drops ``sample_weight`` and
    ``class_weight`` of array data, so ``fit`` refuses that pairing unless
    ``y`` is ``"defaults_to_x"``.

    Return: a dict from argument name to rule; arguments not named are
    optional. Default when not implemented: every argument is optional and
    nothing is checked, as with a ``train_step`` written for ``keras.Model``.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def predict_step(model: Any, data: Any, options: Any) -> Any:
    """Run one inference step on one batch.

    Called by ``predict()`` under ``torch.no_grad()``.

    Args:
        model: the :class:`~keras_steps.StepModel`.
        data: the batch, structured as for :func:`train_step`.
        options: the validated options instance.

    Return: the predictions for the batch. Default when not implemented:
    Keras's own ``predict_step``, which returns ``model(x, training=False)``.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def step_demo(out_dir: Any, epochs: Any, steps: Any) -> Any:
    """Train the step on small embedded data and draw what it achieved.

    Run by ``keras-steps demo NAME``. The demo must need no network (ship or
    generate its data), show Keras's progress bar, finish in a minute or two on
    a CPU with the default budget, and write its pictures as PNG files.

    Args:
        out_dir: a ``pathlib.Path`` to write files into (it exists).
        epochs: number of epochs, or ``None`` for the demo's default.
        steps: batches per epoch, or ``None`` for a full pass over the data.

    Return: a dict from a short label (``"samples"``, ``"curves"``, ...) to
    the path of each file written; may be empty for a demo that only prints.
    Default when not implemented: ``keras-steps demo NAME`` says the step has
    no demo.

    Added in 0.1.
    """


_ADDED = re.compile(r"Added in (\d+(?:\.\d+)+)\.")


def hook_versions() -> dict[str, str]:
    """Return each hook's name mapped to the keras-steps version that added it.

    Read from the "Added in X.Y." line of each hook's docstring, so the
    documentation and this table cannot disagree.

    Raises:
        RuntimeError: a hook's docstring lacks the line.
    """
    versions = {}
    for name, spec in sorted(globals().items()):
        if getattr(spec, f"{PROJECT_NAME}_spec", None) is None:
            continue
        found = _ADDED.search(inspect.getdoc(spec) or "")
        if found is None:
            raise RuntimeError(
                f"Hook {name!r} does not say in which version it was added."
            )
        versions[name] = found.group(1)
    return versions
