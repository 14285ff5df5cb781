"""The ``hooks`` check: a plugin's hook implementations against the hook specifications."""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from typing import Any

import pluggy

from keras_steps import hookspecs
from keras_steps._errors import StepError
from keras_steps._step import Step, StepSource, resolve_step
from keras_steps.testing._report import one_line


def _spec_names() -> list[str]:
    return sorted(
        n
        for n in dir(hookspecs)
        if getattr(getattr(hookspecs, n), f"{hookspecs.PROJECT_NAME}_spec", None)
    )


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
            problems.append(f"invalid hook implementation: {one_line(exc)}")
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
            problems.append(one_line(exc))
    return HookFindings(problems, deprecations, step)
