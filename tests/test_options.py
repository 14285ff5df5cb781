"""Options refuse nonsense: every option of every catalog step, walked with bad values.

The steps are discovered from the registry, so a new catalog step is walked
without a change here. The values are written out in this file (not taken
from the conformance kit), so a bug in the kit cannot hide an accepting
option; the kit's own walk is checked against the same steps at the end.
"""

from __future__ import annotations

import math
import types
import typing

import keras
import numpy as np
import pytest
from pydantic import Field

import keras_steps
from keras_steps import OptionsError
from keras_steps.testing import options_problems


def _catalog_steps():
    return [
        s
        for s in keras_steps.list_steps()
        if s.source.kind == "core" or s.source.distribution == "keras-steps"
    ]


def _admits(annotation) -> set:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*(_admits(a) for a in typing.get_args(annotation)))
    if typing.get_origin(annotation) is typing.Literal:
        return {type(a) for a in typing.get_args(annotation)}
    return {annotation}


class _Object:
    def __repr__(self):
        return "<object>"


def _cases():
    cases = []
    for step in _catalog_steps():
        for name, field in step.options_class.model_fields.items():
            kinds = _admits(field.annotation)
            values = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
            if bool in kinds:
                values["int-for-bool"] = 1
            else:
                values["bool"] = True
            values["huge-int"] = 10**400 if kinds & {float} and int not in kinds else 2**63
            values["str"] = "1" if kinds & {int, float, bool} else 1
            values["object"] = _Object()
            if str in kinds:
                values["str"] = "<not one of the choices>"
            for label, value in values.items():
                cases.append(pytest.param(step.name, name, value, id=f"{step.name}-{name}-{label}"))
    return cases


def test_the_walk_covers_every_catalog_step_with_options():
    walked = {c.values[0] for c in _cases()}
    with_options = {s.name for s in _catalog_steps() if s.options_class.model_fields}
    assert walked == with_options
    assert {"adversarial", "distillation", "gan", "mixup", "sam", "vae", "wgan-gp"} <= walked


@pytest.mark.parametrize(("step", "option", "value"), _cases())
def test_every_option_refuses_nonsense(step, option, value):
    with pytest.raises(OptionsError) as excinfo:
        keras_steps.get_step(step).validate_options({option: value})
    message = str(excinfo.value)
    assert f"Invalid options for step {step!r}" in message
    assert f"option {option!r} = " in message


@pytest.mark.parametrize(
    ("step", "options"),
    [
        ("sam", {"rho": math.inf}),
        ("sam", {"eps": math.inf}),
        ("wgan-gp", {"gp_weight": math.inf}),
        ("adversarial", {"epsilon": math.inf}),
        ("adversarial", {"clip_min": math.nan}),
        ("gan", {"latent_dim": True}),
        ("vae", {"seed": 2**40}),
        ("mixup", {"seed": 2**40}),
        ("adversarial", {"seed": 2**40}),
    ],
)
def test_the_reported_cases_fail_when_the_model_is_made(step, options):
    """The cases of issue 13, through StepModel as a user writes them."""
    inputs = keras.Input((3,))
    with pytest.raises(OptionsError, match=repr(next(iter(options)))):
        if step in ("gan", "wgan-gp", "vae"):
            second = "critic" if step == "wgan-gp" else "discriminator"
            roles = ("encoder", "decoder") if step == "vae" else ("generator", second)
            keras_steps.StepModel(
                models={r: keras.Sequential([keras.layers.Dense(1)]) for r in roles},
                step=step,
                step_options=options,
            )
        else:
            outputs = keras.layers.Dense(1)(inputs)
            keras_steps.StepModel(inputs, outputs, step=step, step_options=options)


def test_every_seed_has_the_same_bounds():
    seeds = {
        s.name: s.options_class.model_fields["seed"]
        for s in _catalog_steps()
        if "seed" in s.options_class.model_fields
    }
    assert set(seeds) == {"adversarial", "gan", "mixup", "vae", "wgan-gp"}
    for name, field in seeds.items():
        options = keras_steps.get_step(name).validate_options
        assert options({"seed": keras_steps.MAX_SEED}).seed == 2**31 - 1
        assert options({"seed": 0}).seed == 0
        for bad in (-1, keras_steps.MAX_SEED + 1):
            with pytest.raises(OptionsError, match="A seed is an int in \\[0, 2147483647\\]"):
                options({"seed": bad})
        assert field.description.endswith("A seed is an int in [0, 2147483647] (2**31 - 1).")


def test_the_largest_seed_trains():
    """MAX_SEED is a real bound: a SeedGenerator at it draws (2**40 did not)."""
    x = np.random.default_rng(0).random((8, 3)).astype("float32")
    y = (x.sum(axis=1) > 1.5).astype("int32")
    inputs = keras.Input((3,))
    for step in ("mixup", "adversarial"):
        model = keras_steps.StepModel(
            inputs,
            keras.layers.Dense(2)(inputs),
            step=step,
            step_options={"seed": keras_steps.MAX_SEED},
        )
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"]).all()


def test_ints_for_floats_and_numpy_scalars_are_taken():
    sam = keras_steps.get_step("sam").validate_options({"rho": 1, "eps": np.float32(1e-6)})
    assert sam.rho == 1.0 and type(sam.rho) is float
    assert sam.eps == pytest.approx(1e-6) and type(sam.eps) is float
    gan = keras_steps.get_step("gan").validate_options({"latent_dim": np.int64(16)})
    assert gan.latent_dim == 16 and type(gan.latent_dim) is int
    with pytest.raises(OptionsError, match="'latent_dim' = 16.0"):
        keras_steps.get_step("gan").validate_options({"latent_dim": 16.0})
    with pytest.raises(OptionsError, match="'latent_dim' = True"):
        keras_steps.get_step("gan").validate_options({"latent_dim": np.bool_(True)})


def test_assignment_and_unvalidated_instances_raise_options_errors():
    options = keras_steps.get_step("vae").validate_options({})
    with pytest.raises(OptionsError, match="(?s)VAEOptions.kl_weight.*'kl_weight' = nan"):
        options.kl_weight = math.nan
    assert options.kl_weight == 1.0
    options.kl_weight = np.float64(0.5)
    assert options.kl_weight == 0.5
    sam = keras_steps.get_step("sam")
    with pytest.raises(OptionsError, match="'rho' = inf"):
        sam.validate_options(sam.options_class.model_construct(rho=math.inf))


class TupleOptions(keras_steps.StepOptions):
    """A third-party layout that strict Python validation and JSON disagree on."""

    sizes: tuple[int, ...] = Field((4, 2), description="Widths of the layers.")


def test_saved_options_are_validated_as_json_so_tuples_survive():
    from keras_steps._options import validate_options

    saved = TupleOptions().model_dump(mode="json")
    assert saved == {"sizes": [4, 2]}
    assert validate_options("t", "test", TupleOptions, saved, saved=True).sizes == (4, 2)
    with pytest.raises(OptionsError, match="'sizes' = \\[4, 2\\]"):
        validate_options("t", "test", TupleOptions, saved)
    assert options_problems(TupleOptions, "t") == []  # the kit round-trips as JSON too
    # JSON validation is strict too: a boolean is no int there either.
    with pytest.raises(OptionsError, match="'sizes.0' = True"):
        validate_options("t", "test", TupleOptions, {"sizes": [True]}, saved=True)


@pytest.mark.parametrize("step", [s.name for s in _catalog_steps()])
def test_the_conformance_kit_finds_nothing_in_catalog_options(step):
    assert options_problems(keras_steps.get_step(step).options_class, step) == []


class Careless(keras_steps.StepOptions):
    """What the kit must catch in a third-party step."""

    width: int = Field(8, ge=1, description="No upper bound.")
    rate: float = Field(0.1, allow_inf_nan=True, description="A rate.")
    loose: int = Field(1, strict=False, ge=0, le=10, description="Lax.")


def test_the_conformance_kit_walks_third_party_options():
    problems = "\n".join(options_problems(Careless, "careless"))
    assert "option 'width' accepts the bad value 9223372036854775808 (a huge int)" in problems
    assert "upper bound" in problems
    assert "option 'rate' takes NaN and infinity (allow_inf_nan=True) but its" in problems
    assert "option 'loose' accepts the bad value True (a boolean)" in problems
    assert "option 'loose' accepts the bad value '1' (a string of a number)" in problems
    assert "option 'rate' accepts" not in problems  # inf opted in; nothing else accepted


class Documented(keras_steps.StepOptions):
    """A field that gives infinity a meaning and says so."""

    clip: float = Field(
        math.inf, gt=0, allow_inf_nan=True, description="Gradient norm clip; inf: no clipping."
    )


def test_a_documented_infinity_passes_the_kit():
    assert options_problems(Documented, "documented") == []
    assert Documented(clip=math.inf).clip == math.inf
