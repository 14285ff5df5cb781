"""The pydantic base class of every step's options."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
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
    again on assignment (where a bad value raises
    :class:`~keras_steps.OptionsError`),
    and ``model_json_schema()`` exports the schema.

    Values are checked strictly, so nonsense fails here and not in the
    middle of training:

    - a float option refuses NaN and infinity (``allow_inf_nan=False``); a
      field that gives infinity a meaning opts in with
      ``Field(allow_inf_nan=True)`` and says what it means in its
      description;
    - pydantic's strict mode: an ``int`` option takes ints only (not
      ``True``, ``3.0`` or ``"3"``), a ``float`` option takes floats and ints
      (not booleans or strings), a ``bool`` option takes ``True``/``False``
      only;
    - NumPy scalars (``np.int64(3)``, ``np.float32(0.5)``) are taken as the
      Python numbers they hold.

    Options saved with a model are JSON data and are validated as JSON, so a
    ``tuple`` or ``Enum`` option survives a save and a load; from Python,
    strict mode wants the tuple or the ``Enum`` member itself (give such a
    field ``Field(strict=False)`` to take lists or values too).

    Attributes:
        options_version: version of the options' layout, saved with every
            model. Bump it when an option is renamed, removed or changes
            meaning, and implement the ``step_migrate_options`` hook to turn
            options saved under an older version into current ones. Adding an
            option whose default keeps the old behaviour needs no bump.
    """

    model_config = pydantic.ConfigDict(
        extra="forbid",
        validate_assignment=True,
        frozen=False,
        strict=True,
        allow_inf_nan=False,
    )

    options_version: ClassVar[int] = 0

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, _python_scalar(value))
        except pydantic.ValidationError as exc:
            heading = f"Invalid value assigned to {type(self).__name__}.{name}:"
            raise OptionsError(_describe(heading, None, type(self), exc)) from None


def _python_scalar(value: Any) -> Any:
    # Strict mode refuses np.int64 for an int; a NumPy scalar is the number it
    # holds (np.bool_ becomes a bool, which an int option still refuses).
    return value.item() if isinstance(value, np.generic) else value


def validate_options(
    step: str, source: str, cls: type[StepOptions], given: Any, *, saved: bool = False
):
    """Validate ``given`` (a dict, an instance, or None) against ``cls``.

    Args:
        step: the step's name, for messages.
        source: where the step comes from, for messages.
        cls: the step's options class.
        given: the options.
        saved: ``given`` is the JSON data of a saved model's options; it is
            validated as JSON (a list for a tuple option, a value for an
            ``Enum`` option), still strictly.

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
        if saved:
            return cls.model_validate_json(json.dumps(given))
        return cls.model_validate({k: _python_scalar(v) for k, v in given.items()})
    except pydantic.ValidationError as exc:
        heading = f"Invalid options for step {step!r} ({source}):"
        raise OptionsError(_describe(heading, step, cls, exc)) from None


def _describe(heading: str, step: str | None, cls: type, exc: pydantic.ValidationError):
    lines = [heading]
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
    if step is not None:
        lines.append(f"See `keras-steps show {step}` for every option.")
    return "\n".join(lines)
