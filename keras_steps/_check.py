"""``keras-steps check``: inspect every installed step plugin, one by one.

Unlike the registry, which loads what the environment variables select and
sets aside what fails, this loads *every* entry point of the ``keras_steps``
group, each into a registry of its own, and lists every step name provided
twice, so that a plugin author or a user sees everything that is wrong at
once. Each entry point is loaded by the registry's own
:func:`~keras_steps._registry.load_entry_point` (same import, same class
instantiation, same refusals, same guard against using the registry at
import), so "ok" means the runtime loads it. Then it is linted further (hook
wrappers, unmarked hook functions, deprecated hooks) and its options checked.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from typing import Any

from keras_steps import hookspecs
from keras_steps._errors import StepConflictError, StepError
from keras_steps._registry import (
    CORE_NAMES,
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    ONLY_ENV,
    _parse_only,
    _PluginImportError,
    _Registry,
    entry_point_source,
    load_entry_point,
)
from keras_steps._step import StepSource

__all__ = ["PluginReport", "check_plugins"]


@dataclasses.dataclass
class PluginReport:
    """What ``keras-steps check`` found about one step plugin.

    Attributes:
        name: the step name (the entry point's name).
        source: where it comes from.
        enabled: whether the registry loads it under the current
            ``KERAS_STEPS_*`` environment variables.
        errors: problem kind (``"import"``, ``"hooks"``, ``"options"``,
            ``"conflict"``) to messages; empty when the plugin is sound.
        warnings: messages that do not break it (deprecated hooks).
        summary: the first line of the plugin's docstring.
        model_roles, optimizer_roles: the step's roles, once resolved.
        hooks: the hooks it implements.
        requires: the oldest keras-steps version with every hook it implements.
        options: the options model's JSON Schema.
    """

    name: str
    source: StepSource
    enabled: bool
    errors: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    summary: str = ""
    model_roles: list[str] = dataclasses.field(default_factory=list)
    optimizer_roles: list[str] = dataclasses.field(default_factory=list)
    hooks: list[str] = dataclasses.field(default_factory=list)
    requires: str | None = None
    options: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["source"] = {
            **dataclasses.asdict(self.source),
            "label": _label(self.source),
        }
        data["ok"] = self.ok
        return data


def _label(source: StepSource) -> str:
    if source.kind != "plugin":
        return str(source)
    return f"{source} ({source.entry_point})"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _inspect(name: str, plugin: Any, report: PluginReport) -> None:
    # keras_steps.testing imports StepModel (hence all of Keras): only here.
    from keras_steps.testing import inspect_hooks, options_problems

    findings = inspect_hooks(plugin, name, report.source)
    if findings.problems:
        report.errors["hooks"] = findings.problems
    report.warnings.extend(findings.deprecations)
    step = findings.step
    if step is None:
        return
    report.summary = step.summary
    report.model_roles = list(step.model_roles)
    report.optimizer_roles = list(step.optimizer_roles)
    report.hooks = sorted(step.hooks)
    versions = hookspecs.hook_versions()
    report.requires = max(
        (versions[h] for h in step.hooks if h in versions), key=_version_key
    )
    problems = options_problems(step.options_class, name)
    if problems:
        report.errors["options"] = problems
    try:
        report.options = step.options_class.model_json_schema()
    except Exception:
        report.options = None  # options_problems has said why


def _enabled(name: str, distribution: str | None) -> bool:
    if os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return False
    only = _parse_only(os.environ.get(ONLY_ENV))
    return only is None or name in only or f"{distribution}:{name}" in only


def check_plugins() -> dict[str, Any]:
    """Inspect the core step and every installed entry point.

    Returns:
        ``{"ok": bool, "plugins": [PluginReport.as_dict(), ...],
        "conflicts": {name: [source label, ...]}}``; ``ok`` is False when any
        plugin has an error, including a step name provided twice.
    """
    from keras_steps import supervised

    core = PluginReport("supervised", StepSource("core"), enabled=True)
    _inspect("supervised", supervised, core)
    reports = [core]
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        source = entry_point_source(ep)
        report = PluginReport(ep.name, source, enabled=_enabled(ep.name, source.distribution))
        reports.append(report)
        try:
            # A registry of its own: the entry point is checked alone, as
            # the runtime would load it; names provided twice are _conflicts'.
            step = load_entry_point(_Registry(), ep)
        except StepError as exc:
            kind = (
                "import"
                if isinstance(exc, _PluginImportError)
                else "conflict"
                if isinstance(exc, StepConflictError)
                else "hooks"
            )
            report.errors[kind] = [str(exc)]
            continue
        _inspect(ep.name, step.plugin, report)
    conflicts = _conflicts(reports)
    return {
        "ok": all(r.ok for r in reports),
        "plugins": [r.as_dict() for r in reports],
        "conflicts": conflicts,
    }


def _conflicts(reports: list[PluginReport]) -> dict[str, list[str]]:
    by_name: dict[str, list[PluginReport]] = {}
    for report in reports:
        # A plugin claiming a core name is refused by its own report; the
        # core step is unaffected, so neither is flagged as a conflict.
        if report.name not in CORE_NAMES:
            by_name.setdefault(report.name, []).append(report)
    conflicts = {}
    for name, group in sorted(by_name.items()):
        if len(group) < 2:
            continue
        conflicts[name] = [_label(r.source) for r in group]
        active = [r for r in group if r.enabled]
        choose = ", ".join(
            f"{ONLY_ENV}={r.source.distribution}:{name}"
            for r in group
            if r.source.kind == "plugin"
        )
        for report in group:
            others = "; ".join(_label(r.source) for r in group if r is not report)
            message = f"step name {name!r} is also provided by {others}."
            if len(active) > 1:
                report.errors["conflict"] = [
                    f"{message} keras_steps refuses to pick one: choose with "
                    f"{choose}, or uninstall one."
                ]
            else:
                report.warnings.append(
                    f"{message} The environment variables select one, so the name "
                    "works here."
                )
    return conflicts


def format_report(result: dict[str, Any]) -> str:
    """The text form of :func:`check_plugins`' result."""
    plugins = result["plugins"]
    broken = [p for p in plugins if not p["ok"]]
    lines = [
        f"keras-steps check: {len(plugins)} step plugin(s), "
        + (f"{len(broken)} with problems" if broken else "all sound")
    ]
    width = max(len(p["name"]) for p in plugins)
    for p in plugins:
        status = "FAILED" if not p["ok"] else "warn" if p["warnings"] else "ok"
        off = "" if p["enabled"] else "  [not loaded: environment variables]"
        lines.append(f"{status:<6}  {p['name']:<{width}}  {p['source']['label']}{off}")
        if p["ok"] and p["options"] is not None:
            props = p["options"].get("properties", {})
            lines.append(
                f"          options: {', '.join(props) or 'none'}; requires "
                f"keras-steps >= {p['requires']}"
            )
        for kind, messages in p["errors"].items():
            lines.extend(f"          {kind}: {m}" for m in messages)
        lines.extend(f"          warning: {m}" for m in p["warnings"])
    return "\n".join(lines)
