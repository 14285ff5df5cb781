"""The ``options`` check: a step's options have defaults, descriptions and constraints."""

from __future__ import annotations

import json
from typing import Any

import pydantic

from keras_steps._errors import OptionsError
from keras_steps._options import StepOptions, validate_options
from keras_steps.testing._report import one_line


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
            f"{one_line(exc)}"
        )
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
            f"store options as JSON): {type(exc).__name__}: {one_line(exc)}"
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
                        f"does not name the option: {one_line(exc)}. A validator "
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
