"""A step resolved from its plugin: the hooks it implements, ready to call."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import pluggy

from keras_steps import hookspecs
from keras_steps._arguments import ArgumentRules, parse_rules
from keras_steps._errors import PluginError
from keras_steps._options import StepOptions, validate_options

__all__ = ["Step", "StepSource", "plugin_object", "resolve_step"]

#: Hooks every step must implement; ``test_step`` defaults to Keras's own.
REQUIRED_HOOKS = ("train_step",)


@dataclasses.dataclass(frozen=True)
class StepSource:
    """Where a step comes from.

    Attributes:
        kind: ``"core"`` (shipped in keras_steps itself), ``"local"``
            (``register_step`` in a script or notebook) or ``"plugin"`` (an
            entry point of an installed distribution).
        distribution: the distribution name, for plugins.
        version: the distribution version, for plugins.
        entry_point: the entry point's value (``"module:object"``), for plugins.
    """

    kind: str
    distribution: str | None = None
    version: str | None = None
    entry_point: str | None = None

    def __str__(self) -> str:
        if self.kind != "plugin":
            return self.kind
        return f"{self.distribution} {self.version}"


class _NoOptions(StepOptions):
    """This step takes no options."""


@dataclasses.dataclass(frozen=True)
class Step:
    """A registered step, with its hooks resolved once.

    Attributes:
        name: the name the step is registered under.
        source: where it comes from.
        summary: first line of the plugin's docstring.
        plugin: the plugin object.
        options_class: the :class:`StepOptions` subclass validating its options.
        model_roles: names of the networks it works on.
        optimizer_roles: names of the optimizers it needs.
        hooks: hook name to a callable taking the hook's full argument list.
        frozen_roles: model roles the step never trains (``step_frozen_roles``).
        arguments: the data and compile arguments it takes (``step_arguments``).
    """

    name: str
    source: StepSource
    summary: str
    plugin: Any
    options_class: type[StepOptions]
    model_roles: tuple[str, ...]
    optimizer_roles: tuple[str, ...]
    hooks: dict[str, Callable[..., Any]]
    frozen_roles: tuple[str, ...] = ()
    arguments: ArgumentRules | None = None

    def __repr__(self) -> str:
        return f"<Step {self.name!r} from {self.source}>"

    def validate_options(self, given: Any, *, saved: bool = False) -> StepOptions:
        """Validate user options (dict, instance or None) for this step.

        Args:
            given: the options.
            saved: ``given`` is a saved model's JSON data, validated as JSON.

        Raises:
            OptionsError: naming the step, the field, the value and what was
                expected.
        """
        return validate_options(
            self.name, str(self.source), self.options_class, given, saved=saved
        )


def _instance_hooks(cls: type) -> list[str]:
    """Names of ``cls``'s hook implementations that take ``self``.

    pluggy drops a first argument named ``self`` from a method's hook
    arguments, so such a hook validates on the class yet cannot be called on
    it. Functions without ``self`` (a class used as a namespace), static and
    class methods work on the class itself.
    """
    marker = f"{hookspecs.PROJECT_NAME}_impl"
    found = []
    for attr in dir(cls):
        fn = inspect.getattr_static(cls, attr, None)
        if not inspect.isfunction(fn) or getattr(fn, marker, None) is None:
            continue
        params = list(inspect.signature(fn).parameters)
        if params and params[0] == "self":
            found.append(attr)
    return sorted(found)


def plugin_object(plugin: Any, name: str, source: StepSource) -> Any:
    """The object to register for ``plugin``: a class whose hooks take ``self``
    becomes one instance of it, made with no arguments.

    The README's own example is such a class, and an entry point
    (``my_package.steps:ScaledMSE``) can only name it; registered as a class,
    its hooks would be called unbound. Modules, instances, and classes whose
    hooks take no ``self`` (static or class methods, plain functions) are
    used as they are.

    Raises:
        PluginError: the class cannot be made without arguments.
    """
    if not inspect.isclass(plugin):
        return plugin
    methods = _instance_hooks(plugin)
    if not methods:
        return plugin
    try:
        return plugin()
    except Exception as exc:
        raise PluginError(
            f"Step {name!r} ({source}) is the class {plugin.__qualname__}, whose hooks "
            f"({', '.join(methods)}) take self, so keras_steps makes one instance with "
            f"no arguments; {plugin.__qualname__}() raised {type(exc).__name__}: {exc}. "
            "Pass an instance instead: register_step(" + plugin.__qualname__ + "(...), "
            "name=...), or for an entry point a module-level instance "
            "(step = " + plugin.__qualname__ + "(...); entry point 'module:step')."
        ) from exc


def _full_signature_caller(impl: pluggy.HookImpl, spec_args: tuple[str, ...]):
    """Adapt an implementation taking a subset of the hook's arguments."""
    if impl.argnames == spec_args:
        return impl.function
    positions = [spec_args.index(a) for a in impl.argnames]
    fn = impl.function

    def call(*args):
        # A list, not a generator: torch.compile traces this, and a generator
        # left alive across a graph break made dynamo recurse without end.
        return fn(*[args[i] for i in positions])

    return call


def _spec_args(hook_name: str) -> tuple[str, ...]:
    return tuple(inspect.signature(getattr(hookspecs, hook_name)).parameters)


def _roles(name: str, plugin_name: str, hook: str, value: Any) -> tuple[str, ...]:
    roles = (value,) if isinstance(value, str) else value
    ok = (
        isinstance(roles, (tuple, list))
        and roles
        and all(isinstance(r, str) and r.isidentifier() for r in roles)
        and len(set(roles)) == len(roles)
    )
    if not ok:
        raise PluginError(
            f"Step {name!r} (plugin {plugin_name}): hook {hook} returned {value!r}; "
            "expected a non-empty tuple of distinct role names (identifiers)."
        )
    return tuple(roles)


def resolve_step(
    pm: pluggy.PluginManager, name: str, plugin: Any, source: StepSource
) -> Step:
    """Collect ``plugin``'s hook implementations from ``pm`` into a :class:`Step`.

    Raises:
        PluginError: a required hook is missing, or a declarative hook returned
            something unusable.
    """
    hooks: dict[str, Callable[..., Any]] = {}
    for caller in pm.get_hookcallers(plugin) or []:
        if not caller.has_spec():
            # An optionalhook=True implementation of a hook this version does
            # not define (a plugin written for a newer keras-steps): unused.
            continue
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin:
                hooks[caller.name] = _full_signature_caller(impl, _spec_args(caller.name))
    missing = [h for h in REQUIRED_HOOKS if h not in hooks]
    if missing:
        raise PluginError(
            f"Step {name!r} ({source}) does not implement the required hook(s) "
            f"{', '.join(missing)}. Decorate them with @keras_steps.hookimpl."
        )
    options_class = hooks["step_options"]() if "step_options" in hooks else _NoOptions
    if not (isinstance(options_class, type) and issubclass(options_class, StepOptions)):
        raise PluginError(
            f"Step {name!r} ({source}): hook step_options returned {options_class!r}; "
            "expected a subclass of keras_steps.StepOptions."
        )
    model_roles = _roles(
        name, str(source), "step_model_roles", hooks.get("step_model_roles", lambda: ("model",))()
    )
    optimizer_roles = _roles(
        name,
        str(source),
        "step_optimizer_roles",
        hooks.get("step_optimizer_roles", lambda: ("model",))(),
    )
    if len(optimizer_roles) > 1 and not set(optimizer_roles) <= set(model_roles):
        raise PluginError(
            f"Step {name!r} ({source}) has optimizer roles {optimizer_roles} that are "
            f"not all model roles {model_roles}; with several optimizers, each must "
            "name the model whose weights it updates."
        )
    frozen = hooks.get("step_frozen_roles", tuple)()
    frozen_roles = _roles(name, str(source), "step_frozen_roles", frozen) if frozen else ()
    if not set(frozen_roles) < set(model_roles) or set(frozen_roles) & set(optimizer_roles):
        raise PluginError(
            f"Step {name!r} ({source}): hook step_frozen_roles returned {frozen!r}; "
            f"expected some of its model roles {model_roles} (not all of them), none "
            f"of which is an optimizer role {optimizer_roles}."
        )
    if len(model_roles) > 1 and "step_call" not in hooks:
        raise PluginError(
            f"Step {name!r} ({source}) has several model roles {model_roles} but does "
            "not implement step_call, so model(x) and predict() would be undefined."
        )
    doc = inspect.getdoc(plugin) or ""
    return Step(
        name=name,
        source=source,
        summary=doc.strip().splitlines()[0] if doc.strip() else "",
        plugin=plugin,
        options_class=options_class,
        model_roles=model_roles,
        optimizer_roles=optimizer_roles,
        hooks=hooks,
        frozen_roles=frozen_roles,
        arguments=parse_rules(
            name, str(source), hooks["step_arguments"]() if "step_arguments" in hooks else None
        ),
    )
