"""The data and compile arguments a step takes, checked before Keras sees them.

A step declares them with the ``step_arguments`` hook (see
:mod:`keras_steps.hookspecs`). :class:`~keras_steps.StepModel` checks the
declaration in ``compile``, ``fit`` and ``evaluate``, before Keras's symbolic
build, and on every batch, so that an argument a step cannot use is refused
with a message naming the step, its plugin and the argument, never ignored and
never left to fail deep inside Keras.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import keras

from keras_steps._errors import ArgumentError, PluginError, RoleError

__all__ = [
    "ARGUMENTS",
    "ArgumentRules",
    "Refused",
    "check_arguments",
    "check_optimizers",
    "parse_rules",
]

#: Every argument a step can declare, with how a user gives it.
ARGUMENTS: Mapping[str, str] = {
    "y": "targets: fit(x, y), or (x, y) batches",
    "sample_weight": "fit(..., sample_weight=...), or (x, y, sample_weight) batches",
    "class_weight": "fit(..., class_weight={...})",
    "nested_x": "x as a dict, list or tuple of several inputs",
    "loss": "compile(loss=...)",
    "loss_weights": "compile(loss_weights=...)",
    "metrics": "compile(metrics=...)",
    "weighted_metrics": "compile(weighted_metrics=...)",
}

_COMPILE = ("loss", "loss_weights", "metrics", "weighted_metrics")
_DATA = ("y", "sample_weight", "class_weight", "nested_x")

#: Rule values, besides :class:`Refused`. "own" (``loss`` only): the step
#: computes with ``model.loss`` itself, so Keras's compiled loss is not built
#: from it. "defaults_to_x" (``y`` only): without ``y`` the step's target is
#: ``x``, so ``sample_weight`` and ``class_weight`` are kept with ``fit(x)``.
_VALUES = {
    "optional": _DATA + _COMPILE,
    "required": ("y", "loss"),
    "own": ("loss",),
    "defaults_to_x": ("y",),
}


@dataclasses.dataclass(frozen=True)
class Refused:
    """A ``step_arguments`` rule: the step refuses the argument.

    Args:
        reason: what the step does instead, as a sentence ("computes its own
            reconstruction and KL losses"); it ends the error message.
    """

    reason: str

    def __post_init__(self):
        if not (isinstance(self.reason, str) and self.reason.strip()):
            raise TypeError(
                f"Refused(reason) needs a sentence saying what the step does "
                f"instead; got {self.reason!r}."
            )


def parse_rules(step: str, source: str, declared: Any) -> ArgumentRules:
    """Validate what a ``step_arguments`` implementation returned.

    Args:
        step: the step name.
        source: where the step comes from (for messages).
        declared: the hook's return value, or ``None`` when the step does not
            implement it (every argument is then optional, as in Keras).

    Raises:
        PluginError: an unknown argument, or a rule it cannot have.
    """
    if declared is None:
        return ArgumentRules(step, source, {}, declared=False)
    if not isinstance(declared, Mapping):
        raise PluginError(
            f"Step {step!r} ({source}): hook step_arguments returned "
            f"{type(declared).__name__}; expected a dict from argument name to rule."
        )
    rules: dict[str, Any] = {}
    for name, rule in declared.items():
        if name not in ARGUMENTS:
            raise PluginError(
                f"Step {step!r} ({source}): hook step_arguments names unknown argument "
                f"{name!r}; the arguments are {sorted(ARGUMENTS)}."
            )
        allowed = [v for v, names in _VALUES.items() if name in names]
        if not isinstance(rule, Refused) and rule not in allowed:
            raise PluginError(
                f"Step {step!r} ({source}): hook step_arguments gives {name!r} the "
                f"rule {rule!r}; expected one of {allowed} or "
                "keras_steps.Refused('what the step does instead')."
            )
        rules[name] = rule
    return ArgumentRules(step, source, rules, declared=True)


@dataclasses.dataclass(frozen=True)
class ArgumentRules:
    """The resolved ``step_arguments`` of one step, with the checks that use them.

    Attributes:
        step: the step name.
        source: where the step comes from.
        rules: argument name to rule; an argument not named is optional.
        declared: whether the step implements ``step_arguments``.
    """

    step: str
    source: str
    rules: Mapping[str, Any]
    declared: bool

    def rule(self, name: str) -> Any:
        return self.rules.get(name, "optional")

    @property
    def owns_loss(self) -> bool:
        """Whether the step computes with ``model.loss`` itself."""
        return self.rule("loss") == "own"

    def _refuse(self, name: str, value: Any) -> None:
        rule = self.rule(name)
        if isinstance(rule, Refused):
            raise ArgumentError(
                f"Step {self.step!r} ({self.source}) does not take {name} "
                f"({ARGUMENTS[name]}); got {name}={_describe(value)}. "
                f"{_sentence(rule.reason)}"
            )

    def _require(self, name: str, how: str) -> None:
        raise ArgumentError(
            f"Step {self.step!r} ({self.source}) needs {name} ({ARGUMENTS[name]}); "
            f"{how}."
        )

    def check_compile(self, **given: Any) -> None:
        """Refuse compile arguments the step cannot use.

        Raises:
            ArgumentError: naming the step, the argument and what the step
                computes instead.
        """
        for name in _COMPILE:
            if given.get(name) is not None:
                self._refuse(name, given[name])

    def check_call(
        self,
        call: str,
        x: Any,
        y: Any = None,
        sample_weight: Any = None,
        class_weight: Any = None,
        has_loss: bool = True,
    ) -> None:
        """Check the data arguments of ``fit`` or ``evaluate`` (or its validation data).

        Only array data (arrays, tensors, and dicts, lists or tuples of them)
        is checked here; a dataset's batches are checked by
        :meth:`check_batch`.

        Args:
            call: how the data was given, for messages: ``"fit()"``, ...
            x, y, sample_weight, class_weight: as given to the call.
            has_loss: whether ``compile`` was given a loss.

        Raises:
            ArgumentError: an argument the step refuses, one it needs is
                missing, or one Keras would drop without a word.
        """
        if class_weight is not None:
            self._refuse("class_weight", class_weight)
        if self.rule("loss") == "required" and not has_loss:
            self._require("loss", f"{call} was called on a model compiled without one")
        if not _is_array_data(x):
            return
        if sample_weight is not None:
            self._refuse("sample_weight", sample_weight)
        weighted = sample_weight is not None or class_weight is not None
        if y is None and weighted and self.rule("y") != "defaults_to_x":
            name = "sample_weight" if sample_weight is not None else "class_weight"
            raise ArgumentError(
                f"Step {self.step!r} ({self.source}): {call} got {name} but no y; "
                "Keras drops the weights of data without targets. Pass y, or leave "
                f"out {name}."
            )
        self.check_batch(x, y, sample_weight, call=call)

    def check_batch(self, x: Any, y: Any, sample_weight: Any, call: str = "a batch") -> None:
        """Check one batch's structure, as a step hook would receive it.

        Raises:
            ArgumentError: as :meth:`check_call`.
        """
        if not self.declared:
            return
        if y is None:
            if self.rule("y") == "required":
                self._require("y", f"{call} got x only")
        else:
            self._refuse("y", y)
        if sample_weight is not None:
            self._refuse("sample_weight", sample_weight)
        if isinstance(x, (dict, list, tuple)):
            self._refuse("nested_x", x)

    def targets(self, x: Any, y: Any) -> Any:
        """The targets for ``compute_loss``/``compute_metrics``; refuse missing ones.

        Keras's symbolic build calls them on the first batch of a dataset
        before any step hook runs, so a missing ``y`` is caught here first.
        Only that is checked: a step also calls them with targets and weights
        it makes itself, which its refusals of user data do not concern.

        Returns:
            ``y``, or ``x`` where the step's ``y`` is ``"defaults_to_x"``.

        Raises:
            ArgumentError: ``y`` is required and missing.
        """
        if y is None:
            if self.rule("y") == "required":
                self._require("y", "a batch got x only")
            if self.rule("y") == "defaults_to_x":
                return x
        return y

    def check_data(self, data: Any) -> None:
        """:meth:`check_batch` on a batch as Keras packs it."""
        if self.declared:
            self.check_batch(*keras.utils.unpack_x_y_sample_weight(data))


def _is_array_data(x: Any) -> bool:
    leaves = keras.tree.flatten(x) if isinstance(x, (dict, list, tuple)) else [x]
    return bool(leaves) and all(
        hasattr(leaf, "__array__") or hasattr(leaf, "shape") for leaf in leaves
    )


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"a dict with keys {sorted(value, key=str)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"an array of shape {tuple(shape)}"
    text = repr(value)
    return text if len(text) <= 80 else f"a {type(value).__name__}"


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."



def check_arguments(rules: ArgumentRules, call: str, has_loss: bool, arguments: dict) -> None:
    """Check the bound arguments of ``fit`` or ``evaluate``, before Keras sees them.

    Args:
        rules: the step's rules.
        call: ``"fit"`` or ``"evaluate"``.
        has_loss: whether ``compile`` was given a loss.
        arguments: the call's arguments by name, changed in place where the
            step's ``y`` is ``"defaults_to_x"``: array data without ``y`` gets
            ``y = x``, the same target, so that Keras keeps the weights and
            builds compiled metrics on it (in ``validation_data`` too).

    Raises:
        ArgumentError: as :meth:`ArgumentRules.check_call`.
    """
    to_x = rules.rule("y") == "defaults_to_x"
    x = arguments.get("x")
    if to_x and arguments.get("y") is None and _is_array_data(x):
        arguments["y"] = x
    rules.check_call(
        f"{call}()",
        x,
        arguments.get("y"),
        arguments.get("sample_weight"),
        arguments.get("class_weight"),
        has_loss=has_loss,
    )
    validation = arguments.get("validation_data")
    if isinstance(validation, (list, tuple)) and 1 <= len(validation) <= 3:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(tuple(validation))
        if to_x and y is None and _is_array_data(x):
            y = x
            arguments["validation_data"] = (x, y, sample_weight)
        rules.check_call("fit(validation_data=...)", x, y, sample_weight, has_loss=has_loss)


def check_optimizers(step: str, source: str, optimizers: Mapping[str, Any]) -> None:
    """Refuse a missing optimizer or one optimizer object shared by two roles.

    Args:
        step: the step name.
        source: where the step comes from.
        optimizers: role to what ``compile(optimizer={...})`` got for it.

    Raises:
        RoleError: a role's optimizer is ``None``, or one object is given
            for two roles (it would be built on one network's weights and
            then asked to update the other's).
    """
    for role, optimizer in optimizers.items():
        if optimizer is None:
            raise RoleError(
                f"Step {step!r} ({source}): compile(optimizer={{{role!r}: None, ...}}); "
                f"role {role!r} needs an optimizer (a keras.optimizers.Optimizer or "
                "its name, e.g. 'adam')."
            )
    seen: dict[int, str] = {}
    for role, optimizer in optimizers.items():
        if isinstance(optimizer, str):
            continue
        if id(optimizer) in seen:
            raise RoleError(
                f"Step {step!r} ({source}): roles {seen[id(optimizer)]!r} and {role!r} "
                "got the same optimizer object; each role needs its own, since an "
                "optimizer keeps state per weight (e.g. two keras.optimizers.Adam(...))."
            )
        seen[id(optimizer)] = role
