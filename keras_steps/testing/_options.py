"""The ``options`` check: a step's options have defaults, descriptions and constraints."""

from __future__ import annotations

import json
import math
import types
import typing
from typing import Any

import pydantic

from keras_steps._errors import OptionsError
from keras_steps._options import StepOptions, validate_options
from keras_steps.testing._report import one_line


class _Unlike:
    """A value no typed option accepts."""

    def __repr__(self) -> str:
        return "<arbitrary object>"


#: An int no torch tensor can hold (int64 stops at 2**63 - 1): an int option
#: needs an upper bound below it.
HUGE_INT = 2**63
#: An int no float64 can hold: a float option must refuse it, not make it inf.
HUGE_FLOAT_INT = 10**400


def _schema_bad_values(prop: dict[str, Any]) -> list[Any]:
    """Values just outside the bounds of the JSON Schema ``prop`` of one option."""
    bad: list[Any] = []
    for schema in [prop, *prop.get("anyOf", [])]:
        if "minimum" in schema:
            bad.append(schema["minimum"] - 1)
        if "exclusiveMinimum" in schema:
            bad.append(schema["exclusiveMinimum"])
        if "maximum" in schema:
            bad.append(schema["maximum"] + 1)
        if "exclusiveMaximum" in schema:
            bad.append(schema["exclusiveMaximum"])
        if "enum" in schema:
            bad.append("<none of " + ", ".join(map(str, schema["enum"])) + ">")
    return bad


def _kinds(annotation: Any) -> set[Any]:
    """The plain types an option's annotation admits (``float | None``: float, None)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*(_kinds(a) for a in args))
    if typing.get_origin(annotation) is typing.Literal:
        return {type(a) for a in args}
    return {annotation}


def takes_inf_nan(field: Any) -> bool:
    """Whether a field opted in to NaN and infinity (``Field(allow_inf_nan=True)``)."""
    return any(getattr(m, "allow_inf_nan", None) is True for m in field.metadata)


def nonsense_values(field: Any) -> list[tuple[str, Any]]:
    """Values an option of this type must refuse, each with what it stands for.

    NaN and both infinities (unless the field opted in to them), a boolean
    (unless it takes booleans), a huge int, a string of a number and an
    arbitrary object, for what the field's annotation does not admit.

    Args:
        field: a ``pydantic.fields.FieldInfo`` of a StepOptions class.

    Returns:
        ``(label, value)`` pairs.
    """
    kinds = _kinds(field.annotation)
    if typing.Any in kinds or object in kinds:
        return [("an arbitrary object", _Unlike())]  # an untyped option: the kit says so
    numeric = bool(kinds & {int, float})
    bad: list[tuple[str, Any]] = []
    if not takes_inf_nan(field):
        bad += [("NaN", math.nan), ("infinity", math.inf), ("-infinity", -math.inf)]
    if bool not in kinds:
        bad.append(("a boolean", True))
    else:
        bad += [("the int 1 for a boolean", 1), ("the string 'true'", "true")]
    if float in kinds and int not in kinds:
        bad.append(("an int beyond float64", HUGE_FLOAT_INT))
    else:
        bad.append(("a huge int", HUGE_INT))
    if numeric:
        bad.append(("a string of a number", "1"))
    elif str not in kinds:
        bad.append(("a string", "1"))
    bad.append(("an arbitrary object", _Unlike()))
    return bad


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _hint(label: str) -> str:
    if "inf" in label or label == "NaN":
        return (
            "keep StepOptions' allow_inf_nan=False (or, for a documented meaning, "
            "Field(allow_inf_nan=True) and say it in the description)."
        )
    if "huge" in label or "beyond" in label:
        return "give it an upper bound (Field(le=...)) that the step can honour."
    if "boolean" in label or "string" in label:
        return "keep StepOptions' strict=True (do not set strict=False on the field)."
    return "give it a type and constraints (Field(gt=...), Literal[...])."


def options_problems(options_class: Any, name: str = "step") -> list[str]:
    """Check a step's options class.

    Args:
        options_class: the class the step's ``step_options`` hook returns.
        name: the step name, used in messages.

    Returns:
        One message per defect: not a :class:`~keras_steps.StepOptions`
        subclass, an option without a default or a description, an invalid
        default, a schema that does not export to JSON, options that do not
        survive a JSON round trip, a field that takes infinity without saying
        what it means, or a bad value or unknown name that is not rejected
        with an error naming it. The bad values are those just outside each
        bound of the schema and :func:`nonsense_values` (NaN, infinities, a
        boolean, a huge int, a string of a number, an arbitrary object).
        Empty when the options are sound.
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
            f"{one_line(exc)}"
        )
    if problems:
        return problems
    instance = options_class()
    try:
        dumped = json.loads(json.dumps(instance.model_dump(mode="json")))
        # As load_model validates saved options: as JSON.
        again = validate_options(name, "conformance check", options_class, dumped, saved=True)
        if again != instance:
            problems.append(
                f"the default options change in a JSON round trip ({instance!r} "
                f"became {again!r}); saved models store options as JSON."
            )
    except Exception as exc:
        problems.append(
            "the default options do not survive a JSON round trip (saved models "
            f"store options as JSON): {type(exc).__name__}: {one_line(exc)}"
        )
    props = schema.get("properties", {})
    for field_name, field in fields.items():
        if takes_inf_nan(field) and "inf" not in (field.description or "").lower():
            problems.append(
                f"option {field_name!r} takes NaN and infinity (allow_inf_nan=True) "
                "but its description does not say what infinity means."
            )
        candidates = [(repr(bad), bad) for bad in _schema_bad_values(props.get(field_name, {}))]
        candidates += nonsense_values(field)
        for label, bad in candidates:
            try:
                validate_options(
                    name, "conformance check", options_class, {field_name: bad}
                )
            except OptionsError as exc:
                # The core's message says "option 'NAME' = ..." for a field
                # error; a model-wide error says "option '<options>'".
                if f"option {field_name!r}" not in str(exc):
                    problems.append(
                        f"option {field_name!r} = {_short(bad)} is rejected, but the error "
                        f"does not name the option: {one_line(exc)}. A validator "
                        "that checks several fields must raise for a field, not "
                        "for the whole model."
                    )
            else:
                problems.append(
                    f"option {field_name!r} accepts the bad value {_short(bad)} "
                    f"({label}); {_hint(label)}"
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
