"""The registry of named steps: the core step, entry points, local steps.

One pluggy ``PluginManager`` holds every step plugin under its step name.
pluggy validates hook signatures when a plugin is registered; this module adds
what pluggy leaves to its users: per-plugin isolation (whatever a plugin raises
while it is imported, validated or resolved fails that plugin alone), name
conflicts that are reported instead of resolved silently, the core step's
name kept for the core step, and the environment variables.

``keras-steps check`` loads every entry point with :func:`load_entry_point`,
the function the registry itself uses, so that its "ok" means the runtime
loads the plugin.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import re
import threading
import warnings
from typing import Any

import pluggy

from keras_steps import hookspecs
from keras_steps._errors import (
    PluginError,
    StepConflictError,
    StepError,
    UnknownStepError,
)
from keras_steps._step import Step, StepSource, plugin_object, resolve_step

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginLoadWarning",
    "get_step",
    "list_problems",
    "list_steps",
    "register_step",
    "unregister_step",
]

#: The entry-point group third-party packages declare their steps in.
ENTRY_POINT_GROUP = "keras_steps"
DISABLE_ENV = "KERAS_STEPS_DISABLE_PLUGIN_AUTOLOAD"
ONLY_ENV = "KERAS_STEPS_LOAD_PLUGINS"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Step names only keras_steps itself provides; no plugin or local step takes them.
CORE_NAMES = frozenset({"supervised"})
# What a plugin may raise while it is loaded, all isolated to that plugin.
# SystemExit too: a plugin calling sys.exit() at import must not end the
# user's process. KeyboardInterrupt still stops everything.
_PLUGIN_FAILURES = (Exception, SystemExit)


class PluginLoadWarning(UserWarning):
    """An installed plugin could not be loaded; every other plugin still is."""


class _PluginImportError(PluginError):
    """An entry point's module or object failed to import (``check``'s "import")."""


# The plugin this thread is loading. A plugin that calls the registry while
# it loads (register_step at import) would otherwise wait forever for the
# lock its own loading holds; it gets a PluginError instead.
_loading = threading.local()
# The same, seen from every thread: a thread that a plugin's import starts
# and waits for would otherwise wait for the registry lock forever.
_loading_anywhere: dict[str, str | None] = {"what": None}
#: Seconds another thread waits for the registry while plugins load.
WAIT_S = 300.0


def _refuse_while_loading(call: str) -> None:
    what = getattr(_loading, "what", None)
    if what is None:
        return
    hint = (
        "An installed package declares each of its steps as an entry point of the "
        f"{ENTRY_POINT_GROUP!r} group (name = \"module:object\") instead; register_step() "
        "is for scripts and notebooks."
        if call == "register_step"
        else "Call it from a hook, which runs after loading, not at import."
    )
    raise PluginError(
        f"keras_steps.{call}() was called while keras_steps was loading {what}; "
        f"the registry cannot be used before its plugins are loaded. {hint}"
    )


def load_entry_point(registry: _Registry, ep: importlib.metadata.EntryPoint) -> Step | None:
    """Import, validate and resolve one entry point into ``registry``.

    Whatever the plugin raises on the way (at import, in pluggy's validation,
    in its declarative hooks) becomes a :class:`StepError` naming the entry
    point, its distribution and the error; nothing else escapes.

    Returns:
        The step, or None when another source already provides its name in
        ``registry`` (the name is then contested, see ``StepConflictError``).

    Raises:
        StepConflictError: the entry point claims a core step name.
        PluginError: anything else that stops it loading.
    """
    source = entry_point_source(ep)
    if not _NAME.match(ep.name):
        raise PluginError(
            f"Entry point {ep.name!r} ({source}) is not a valid step name: use letters, "
            "digits, '_', '-' and '.', starting with a letter or digit."
        )
    if ep.name in CORE_NAMES:
        # Refused before import: a plugin claiming the name runs no code.
        raise StepConflictError(
            f"Plugin entry point {ep.name!r} = {ep.value!r} from distribution {source} "
            f"is refused: {ep.name!r} is the core step of keras_steps, which no plugin "
            "can replace. The core step is used; rename the entry point."
        )
    label = f"plugin entry point {ep.name!r} = {ep.value!r} from distribution {source}"
    _loading.what = _loading_anywhere["what"] = label
    try:
        try:
            loaded = ep.load()
        except _PLUGIN_FAILURES as exc:
            raise _PluginImportError(
                f"Plugin entry point {ep.name!r} = {ep.value!r} from distribution "
                f"{source} failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        return registry.add(ep.name, plugin_object(loaded, ep.name, source), source)
    finally:
        _loading.what = _loading_anywhere["what"] = None


def entry_point_source(ep: importlib.metadata.EntryPoint) -> StepSource:
    """The :class:`StepSource` of an installed entry point."""
    return StepSource(
        "plugin",
        distribution=ep.dist.name if ep.dist is not None else "unknown distribution",
        version=ep.dist.version if ep.dist is not None else "?",
        entry_point=ep.value,
    )


class _Registry:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.steps: dict[str, Step] = {}
        self.conflicts: dict[str, list[StepSource]] = {}
        self.problems: dict[str, StepError] = {}

    # -- adding ---------------------------------------------------------------
    def add(self, name: str, plugin: Any, source: StepSource) -> Step | None:
        """Register ``plugin`` as step ``name``; None when the name is contested.

        Raises:
            StepConflictError: a local step takes a core or installed name.
            PluginError: the plugin is invalid, or raised while it was
                registered or resolved (any exception, wrapped).
        """
        if name in CORE_NAMES and source.kind != "core":
            raise StepConflictError(
                f"Step name {name!r} is the core step of keras_steps; no plugin or "
                f"local step can take it ({source}). Pick another name."
            )
        if name in self.conflicts:
            self.conflicts[name].append(source)
            return None
        existing = self.steps.get(name)
        if existing is not None:
            if existing.source.kind == source.kind == "local":
                # Re-running a notebook cell re-registers its own step.
                self.remove(name)
            elif source.kind == "local":
                raise StepConflictError(
                    f"Step name {name!r} is already provided by {existing.source}. "
                    f"Pick another name, or call keras_steps.unregister_step({name!r}) "
                    "first to replace it on purpose."
                )
            else:
                self.remove(name)
                self.conflicts[name] = [existing.source, source]
                return None
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(
                f"Plugin for step {name!r} ({source}) has an invalid hook "
                f"implementation: {exc}"
            ) from None
        except ValueError as exc:
            if not self.pm.is_registered(plugin):
                raise self._failed(name, source, "was registered", exc) from exc
            raise StepConflictError(
                f"Cannot register step {name!r} ({source}): the same plugin object "
                f"is already registered as step "
                f"{self.pm.get_name(plugin)!r}. Each step needs its own plugin "
                "object (a module, class or instance)."
            ) from exc
        except _PLUGIN_FAILURES as exc:
            self._forget(name)
            raise self._failed(name, source, "was registered", exc) from exc
        try:
            self._check_unknown_hooks(name, plugin, source)
            step = resolve_step(self.pm, name, plugin, source)
        except StepError:
            self._forget(name)
            raise
        except _PLUGIN_FAILURES as exc:
            self._forget(name)
            raise self._failed(
                name,
                source,
                "was resolved (its step_options, step_model_roles and "
                "step_optimizer_roles hooks are called once, when it is loaded)",
                exc,
            ) from exc
        self.steps[name] = step
        return step

    def _check_unknown_hooks(self, name: str, plugin: Any, source: StepSource):
        # pluggy.check_pending does this for the whole manager; doing it per
        # plugin lets one misspelled hook fail only its own plugin.
        known = [
            n for n in dir(hookspecs) if getattr(getattr(hookspecs, n), "keras_steps_spec", None)
        ]
        for caller in self.pm.get_hookcallers(plugin) or []:
            if caller.has_spec():
                continue
            impls = [i for i in caller.get_hookimpls() if i.plugin is plugin]
            if all(i.optionalhook for i in impls):
                continue
            close = difflib.get_close_matches(caller.name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise PluginError(
                f"Plugin for step {name!r} ({source}) implements unknown hook "
                f"{caller.name!r}.{hint} Known hooks: {', '.join(sorted(known))}."
            )

    def _forget(self, name: str) -> None:
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)

    @staticmethod
    def _failed(name: str, source: StepSource, when: str, exc: BaseException) -> PluginError:
        return PluginError(
            f"Plugin for step {name!r} ({source}) raised {type(exc).__name__}: {exc} "
            f"while it {when}."
        )

    def remove(self, name: str) -> None:
        self.steps.pop(name, None)
        self.conflicts.pop(name, None)
        self.problems.pop(name, None)
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)

    # -- entry points ---------------------------------------------------------
    def load_entry_points(self) -> None:
        if os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
            return
        only = _parse_only(os.environ.get(ONLY_ENV))
        wanted_seen: set[str] = set()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else None
            if only is not None:
                selector = next((s for s in (ep.name, f"{dist}:{ep.name}") if s in only), None)
                if selector is None:
                    continue
                wanted_seen.add(selector)
            try:
                load_entry_point(self, ep)
            except StepError as exc:
                # A core name stays the core step's: its refusal is keyed by
                # DISTRIBUTION:NAME, so that list_problems() does not report
                # the name itself as unusable.
                key = ep.name
                if ep.name in CORE_NAMES:
                    key = f"{entry_point_source(ep).distribution}:{ep.name}"
                self._record(key, exc)
        if only is not None:
            for name in sorted(only - wanted_seen - CORE_NAMES):
                warnings.warn(
                    f"{ONLY_ENV} names {name!r}, but no installed distribution has "
                    f"a {ENTRY_POINT_GROUP!r} entry point of that name. Installed: "
                    f"{', '.join(_installed_names()) or 'none'}.",
                    PluginLoadWarning,
                    stacklevel=4,
                )

    def _record(self, name: str, error: StepError) -> None:
        self.problems[name] = error
        warnings.warn(f"{error} Other plugins are unaffected.", PluginLoadWarning, stacklevel=6)

    # -- lookup ---------------------------------------------------------------
    def get(self, name: str) -> Step:
        step = self.steps.get(name)
        if step is not None:
            return step
        if name in self.conflicts:
            sources = self.conflicts[name]
            listed = "; ".join(f"{s} ({s.entry_point or s.kind})" for s in sources)
            qualified = ",".join(
                f"{s.distribution}:{name}" for s in sources if s.kind == "plugin"
            )
            raise StepConflictError(
                f"Step name {name!r} is provided by {len(sources)} sources: {listed}. "
                "keras_steps does not pick one silently. Choose one by loading only it, "
                f"for example KERAS_STEPS_LOAD_PLUGINS={qualified.split(',')[-1]} "
                f"(entries are NAME or DISTRIBUTION:NAME), or uninstall the other."
            )
        if name in self.problems:
            raise self.problems[name]
        known = sorted(self.steps)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownStepError(
            f"No step named {name!r}.{hint} Available steps: {', '.join(known)}. "
            "Install a plugin that provides it, or register one with "
            "keras_steps.register_step(plugin, name=...)."
        )


def _parse_only(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _installed_names() -> list[str]:
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})


# Re-entrant so that the thread holding it is never blocked by itself;
# _refuse_while_loading keeps that thread from using a half-built registry.
_lock = threading.RLock()
_registry: _Registry | None = None


def _get_registry(call: str) -> _Registry:
    _refuse_while_loading(call)
    global _registry
    if not _lock.acquire(timeout=WAIT_S):
        raise PluginError(
            f"keras_steps.{call}() waited {WAIT_S:g} s for the registry, which another "
            f"thread is still building (loading {_loading_anywhere['what'] or 'plugins'}). "
            "A plugin whose import starts a thread that uses keras_steps, and waits for "
            "it, never lets the registry finish: use keras_steps from hooks instead."
        )
    try:
        if _registry is None:
            from keras_steps import supervised

            registry = _Registry()
            registry.add("supervised", supervised, StepSource("core"))
            registry.load_entry_points()
            _registry = registry
        return _registry
    finally:
        _lock.release()


def reset() -> None:
    """Forget every step; the next lookup loads the core and entry points again.

    Useful in tests and after changing the environment variables.
    """
    _refuse_while_loading("reset")
    global _registry
    with _lock:
        _registry = None


def list_steps() -> list[Step]:
    """Return every usable step, sorted by name.

    Names provided by two sources, and plugins that failed to load, are left
    out; :func:`list_problems` reports them.
    """
    return [s for _, s in sorted(_get_registry("list_steps").steps.items())]


def list_problems() -> dict[str, StepError]:
    """Return the step names that cannot be used, each with the error it raises.

    An entry point refused for claiming a core step name (``supervised``) is
    listed as ``DISTRIBUTION:NAME``: the core step itself stays usable.
    """
    registry = _get_registry("list_problems")
    problems = dict(registry.problems)
    for name in registry.conflicts:
        try:
            registry.get(name)
        except StepError as exc:
            problems[name] = exc
    return dict(sorted(problems.items()))


def get_step(name: str) -> Step:
    """Return the step registered as ``name``.

    Raises:
        UnknownStepError: no such step; the message lists the available steps
            and suggests the closest name.
        StepConflictError: two sources provide ``name``.
        PluginError: the plugin providing ``name`` failed to load or validate.
    """
    if not isinstance(name, str):
        raise UnknownStepError(f"A step name must be a str, got {type(name).__name__}: {name!r}.")
    return _get_registry("get_step").get(name)


def register_step(plugin: Any, name: str) -> Step:
    """Register ``plugin`` (a module, class or instance) as step ``name``.

    For steps defined in a script or notebook; their source is ``"local"``.
    Registering the same name again from local code replaces the step. A
    class whose hooks take ``self`` is instantiated once, with no arguments.

    Returns:
        The resolved :class:`Step`.

    Raises:
        StepConflictError: ``name`` belongs to the core or an installed plugin.
        PluginError: a hook is misspelled, has a wrong signature, or a
            required hook is missing; the plugin raised while it was
            resolved; or this was called while a plugin was being loaded
            (from a plugin's import).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise StepError(
            f"Step name {name!r} is not valid: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit."
        )
    source = StepSource("local")
    registry = _get_registry("register_step")
    with _lock:
        step = registry.add(name, plugin_object(plugin, name, source), source)
    assert step is not None  # local names never enter the conflict table
    return step


def unregister_step(name: str) -> None:
    """Remove step ``name`` (of any source), or clear a contested name.

    Raises:
        UnknownStepError: nothing is registered under ``name``.
        StepConflictError: ``name`` is the core step's.
    """
    registry = _get_registry("unregister_step")
    if name in CORE_NAMES:
        raise StepConflictError(
            f"Step {name!r} is the core step of keras_steps and cannot be unregistered."
        )
    with _lock:
        if not any(
            name in table for table in (registry.steps, registry.conflicts, registry.problems)
        ):
            registry.get(name)  # raises with suggestions
        registry.remove(name)
