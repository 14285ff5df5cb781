"""Every step honours or refuses each data and compile argument (``step_arguments``).

For each shipped step and each of ``y``, ``sample_weight``, ``class_weight``, a
dict input, ``loss``, ``loss_weights``, ``metrics`` and ``weighted_metrics``,
the table below says what the step does with it. "used" is checked by
training with and without the argument: the results must differ (or the
metric appear), so an argument that is silently ignored fails. "refused" is
checked by the error: an ``ArgumentError`` naming the step, its plugin and
the argument, raised before anything trains or Keras builds anything.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

import keras_steps
from keras_steps import ArgumentError, StepModel

N, FEATURES, CLASSES = 32, 4, 3
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, FEATURES)).astype("float32")
LABELS = (np.arange(N) % CLASSES).astype("int64")
IMAGES = RNG.uniform(size=(N, FEATURES)).astype("float32")  # vae targets in [0, 1]
WEIGHTS = np.linspace(0.0, 2.0, N).astype("float32")
CLASS_WEIGHT = {0: 4.0, 1: 0.5, 2: 1.0}


def _mlp(n_in, n_out, name, input_name=None, activation=None):
    inputs = keras.Input((n_in,), name=input_name)
    h = layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, layers.Dense(n_out, activation=activation)(h), name=name)


def _sce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# step -> (make the model, compile arguments, data without the arguments tried)
def _single(step, options=None):
    def make(input_name=None):
        inputs = keras.Input((FEATURES,), name=input_name)
        outputs = layers.Dense(CLASSES)(layers.Dense(8, activation="relu")(inputs))
        return StepModel(inputs, outputs, step=step, step_options=options)

    return make, {"loss": _sce()}, (X, LABELS)


def _distillation():
    def make(input_name=None):
        keras.utils.set_random_seed(2)
        teacher = _mlp(FEATURES, CLASSES, "teacher", input_name)
        student = _mlp(FEATURES, CLASSES, "student", input_name)
        return StepModel(
            models={"student": student, "teacher": teacher}, step="distillation"
        )

    return make, {"loss": _sce()}, (X, LABELS)


def _vae():
    def make(input_name=None):
        inputs = keras.Input((FEATURES,), name=input_name)
        h = layers.Dense(8, activation="relu")(inputs)
        encoder = keras.Model(inputs, [layers.Dense(2)(h), layers.Dense(2)(h)])
        decoder = _mlp(2, FEATURES, "decoder", activation="sigmoid")
        return StepModel(
            models={"encoder": encoder, "decoder": decoder},
            step="vae",
            step_options={"seed": 0},
        )

    # The target: x itself when no y is given.
    return make, {}, (IMAGES, None)


def _gan(step, roles):
    def make(input_name=None):
        networks = {
            roles[0]: _mlp(2, FEATURES, roles[0]),
            roles[1]: _mlp(FEATURES, 1, roles[1]),
        }
        return StepModel(models=networks, step=step, step_options={"latent_dim": 2})

    return make, {}, (X, None)


SETUPS = {
    "supervised": _single("supervised"),
    "sam": _single("sam"),
    "mixup": _single("mixup", {"seed": 0}),
    "adversarial": _single("adversarial", {"seed": 0}),
    "distillation": _distillation(),
    "vae": _vae(),
    "gan": _gan("gan", ("generator", "discriminator")),
    "wgan-gp": _gan("wgan-gp", ("generator", "critic")),
}

USED, REFUSED, REQUIRED = "used", "refused", "required"
ARGUMENTS = (
    "y",
    "sample_weight",
    "class_weight",
    "nested_x",
    "loss",
    "loss_weights",
    "metrics",
    "weighted_metrics",
)
# What each step does with each argument (its docs/steps page says the same).
TABLE = {
    "supervised": dict.fromkeys(ARGUMENTS, USED),
    "sam": {**dict.fromkeys(ARGUMENTS, USED), "y": REQUIRED, "loss": REQUIRED},
    "mixup": {
        **dict.fromkeys(ARGUMENTS, USED),
        "y": REQUIRED,
        "loss": REQUIRED,
        "nested_x": REFUSED,
    },
    "adversarial": {
        **dict.fromkeys(ARGUMENTS, USED),
        "y": REQUIRED,
        "loss": REQUIRED,
        "nested_x": REFUSED,
    },
    "distillation": {**dict.fromkeys(ARGUMENTS, USED), "y": REQUIRED, "loss": REQUIRED},
    "vae": {
        **dict.fromkeys(ARGUMENTS, USED),
        "class_weight": REFUSED,
        "loss": REFUSED,
        "loss_weights": REFUSED,
    },
    "gan": {**dict.fromkeys(ARGUMENTS, REFUSED), "loss": USED},
    "wgan-gp": dict.fromkeys(ARGUMENTS, REFUSED),
}

def _metric(step):
    """A metric that fits the step's targets and outputs."""
    return "mae" if step == "vae" else "sparse_categorical_accuracy"


def _optimizers(model):
    roles = model._step.optimizer_roles
    if len(roles) == 1:
        return keras.optimizers.SGD(0.1)
    return {role: keras.optimizers.SGD(0.1) for role in roles}


def _run(step, compile_extra=None, fit_extra=None, input_name=None, x=None, drop=()):
    """Train two batches and evaluate; return the evaluation and training logs."""
    make, compile_args, (default_x, y) = SETUPS[step]
    keras.utils.set_random_seed(0)
    model = make(input_name)
    compile_args = {**compile_args, **(compile_extra or {})}
    for name in drop:
        compile_args.pop(name, None)
    model.compile(optimizer=_optimizers(model), **compile_args)
    fit_args = {"x": default_x if x is None else x, "y": y, **(fit_extra or {})}
    history = model.fit(batch_size=16, epochs=1, shuffle=False, verbose=0, **fit_args)
    fit_args.pop("class_weight", None)
    results = model.evaluate(batch_size=16, verbose=0, return_dict=True, **fit_args)
    return {**{f"fit_{k}": v[-1] for k, v in history.history.items()}, **results}


def _differs(a, b):
    shared = sorted(set(a) & set(b))
    assert shared
    return set(a) != set(b) or any(
        not np.isclose(a[k], b[k], rtol=1e-6, atol=1e-9) for k in shared
    )


def _target(step):
    return LABELS if TABLE[step]["y"] == REQUIRED else SETUPS[step][2][1]


def _case(step, argument):
    """The arguments of the run that uses ``argument``: compile, fit, input name, x."""
    x = SETUPS[step][2][0]
    if argument == "y":
        # A target other than the default: other labels for classifiers,
        # other images for the vae (as a denoising vae), labels for GANs.
        other = IMAGES[::-1].copy() if step == "vae" else (LABELS + 1) % CLASSES
        return {}, {"y": other}, None, None
    if argument == "sample_weight":
        return {}, {"sample_weight": WEIGHTS, "y": _target(step)}, None, None
    if argument == "class_weight":
        return {}, {"class_weight": CLASS_WEIGHT, "y": LABELS}, None, None
    if argument == "nested_x":
        fit = {"y": IMAGES} if step == "vae" else {}
        return {}, fit, "features", {"features": x}
    if argument == "loss":
        return {"loss": "mse" if step == "gan" else "categorical_hinge"}, {}, None, None
    if argument == "loss_weights":
        return {"loss_weights": 0.25}, {}, None, None
    fit = {}
    if argument == "weighted_metrics":
        fit = {"sample_weight": WEIGHTS, "y": _target(step)}
    return {argument: [_metric(step)]}, fit, None, None


CASES = [(step, argument) for step in TABLE for argument in ARGUMENTS]


@pytest.mark.parametrize(("step", "argument"), CASES)
def test_argument_is_used_or_refused(step, argument):
    rule = TABLE[step][argument]
    compile_extra, fit_extra, input_name, x = _case(step, argument)
    if argument == "loss" and step != "gan":
        # A classifier loss on labels: categorical_hinge needs one-hot labels.
        fit_extra = {"y": keras.utils.to_categorical(LABELS, CLASSES)}
    if rule == REFUSED:
        with pytest.raises(ArgumentError) as info:
            _run(step, compile_extra, fit_extra, input_name, x)
        message = str(info.value)
        assert f"Step {step!r} (keras-steps " in message
        assert f"does not take {argument} " in message
        return
    if rule == REQUIRED:
        # Leaving it out is refused by name...
        with pytest.raises(ArgumentError, match=rf"Step '{step}' .* needs {argument}"):
            if argument == "y":
                _run(step, fit_extra={"y": None})
            else:
                _run(step, drop=("loss",))
    used = _run(step, compile_extra, fit_extra, input_name, x)
    if argument in ("metrics", "weighted_metrics"):
        assert f"fit_{_metric(step)}" in used and _metric(step) in used, used
    elif argument == "nested_x":
        # The same numbers as with the array: the dict reached the network,
        # keyed by its input's name.
        baseline = _run(step, fit_extra=fit_extra)
        assert not _differs(baseline, used), (baseline, used)
    else:
        # ...and giving it (another value of it) changes what the step computes.
        base_fit = {"y": _target(step)} if argument == "sample_weight" else None
        baseline = _run(step, fit_extra=base_fit)
        assert _differs(baseline, used), (baseline, used)


def test_the_table_is_what_the_steps_declare():
    """The table above and each step's step_arguments hook agree."""
    for step, expected in TABLE.items():
        rules = keras_steps.get_step(step).arguments
        for argument, rule in expected.items():
            declared = rules.rule(argument)
            if rule == REFUSED:
                assert isinstance(declared, keras_steps.Refused), (step, argument)
            elif rule == REQUIRED:
                assert declared == "required", (step, argument)
            else:
                assert not isinstance(declared, keras_steps.Refused), (step, argument)
