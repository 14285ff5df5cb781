"""The pydantic base class of every step's options."""

from __future__ import annotations

from typing import Any, ClassVar

import pydantic

from keras_steps._errors import OptionsError

__all__ = ["StepOptions", "validate_options"]


class StepOptions(pydantic.BaseModel):
    """Base class for a step's options.

    Subclass it, give every field a default and a ``description``, and return
    the subclass from the ``step_options`` hook::

        class Options(keras_steps.StepOptions):
            rho: float = Field(0.05, gt=0, description="Neighbourhood radius.")

    Unknown option names are rejected (``extra="forbid"``), values are checked
    again on assignment, and ``model_json_schema()`` exports the schema.

    Attributes:
        options_version: version of the options' layout, saved with every
            model. Bump it when an option is renamed, removed or changes
            meaning, and implement the ``step_migrate_options`` hook to turn
            options saved under an older version into current ones. Adding an
            option whose default keeps the old behaviour needs no bump.
    """

    model_config = pydantic.ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False
    )

    options_version: ClassVar[int] = 0


def validate_options(step: str, source: str, cls: type[StepOptions], given: Any):
    """Validate ``given`` (a dict, an instance, or None) against ``cls``.

    Raises:
        OptionsError: naming the step, its source, each bad field, the value
            given and what was expected.
    """
    if given is None:
        given = {}
    if isinstance(given, cls):
        # Re-validate: the instance may have been built with model_construct.
        given = given.model_dump()
    elif isinstance(given, pydantic.BaseModel):
        raise OptionsError(
            f"Step {step!r} ({source}) takes options of type {cls.__name__}, "
            f"got an instance of {type(given).__name__}. Pass a dict or "
            f"{cls.__name__}(...)."
        )
    elif not isinstance(given, dict):
        raise OptionsError(
            f"Step {step!r} ({source}) takes step_options as a dict or a "
            f"{cls.__name__} instance, got {type(given).__name__}: {given!r}."
        )
    try:
        return cls.model_validate(given)
    except pydantic.ValidationError as exc:
        raise OptionsError(_describe(step, source, cls, exc)) from None


def _describe(step: str, source: str, cls: type, exc: pydantic.ValidationError):
    lines = [f"Invalid options for step {step!r} ({source}):"]
    fields = cls.model_fields
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "<options>"
        if err["type"] == "extra_forbidden":
            known = ", ".join(sorted(fields)) or "none"
            lines.append(
                f"  - unknown option {name!r} = {err['input']!r}; "
                f"the options are: {known}"
            )
            continue
        if err["type"] == "missing":
            line = f"  - option {name!r} is required and was not given"
        else:
            line = f"  - option {name!r} = {err['input']!r}: {err['msg']}"
        field = fields.get(str(err["loc"][0])) if err["loc"] else None
        if field is not None and field.description:
            line += f" (expected: {field.description})"
        lines.append(line)
    lines.append(f"See `keras-steps show {step}` for every option.")
    return "\n".join(lines)
