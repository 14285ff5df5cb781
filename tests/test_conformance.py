"""Every installed step passes the conformance kit.

Steps with one network need no entry in ``EXAMPLES``: the kit's defaults (a
small MLP on random regression data, ``compile(optimizer="adam",
loss="mse")``) fit them. A step with several networks, or one that needs
other data or compile arguments, gets tiny networks and data here.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_steps
from keras_steps.testing import check_step

LATENT = 8


def _images(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, size=(n, 4, 4, 1)).astype("float32")


def _generator():
    return keras.Sequential(
        [
            keras.Input((LATENT,)),
            keras.layers.Dense(16, activation="sigmoid"),
            keras.layers.Reshape((4, 4, 1)),
        ]
    )


def _critic():
    return keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(1)]
    )


def _encoder():
    x = keras.Input((4, 4, 1))
    h = keras.layers.Dense(8, activation="relu")(keras.layers.Flatten()(x))
    return keras.Model(x, [keras.layers.Dense(2)(h), keras.layers.Dense(2)(h)])


def _decoder():
    return keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(16, activation="sigmoid"),
            keras.layers.Reshape((4, 4, 1)),
        ]
    )


def _classifier(units=3):
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(units)])


def _labelled(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0)


_Z = np.random.default_rng(1).normal(size=(16, LATENT)).astype("float32")

#: Step name -> keyword arguments of check_step.
EXAMPLES = {
    "gan": dict(
        models=lambda: {"generator": _generator(), "discriminator": _critic()},
        data=_images(),
        predict_data=_Z,
        step_options={"latent_dim": LATENT},
    ),
    "wgan-gp": dict(
        models=lambda: {"generator": _generator(), "critic": _critic()},
        data=_images(),
        predict_data=_Z,
        step_options={"latent_dim": LATENT},
    ),
    "vae": dict(
        models=lambda: {"encoder": _encoder(), "decoder": _decoder()},
        data=_images(),
        compile={"optimizer": "adam"},
    ),
    "distillation": dict(
        models=lambda: {"student": _classifier(), "teacher": _classifier()},
        data=_labelled(),
        compile=lambda: {
            "optimizer": "adam",
            "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        },
    ),
}


@pytest.mark.parametrize("name", [s.name for s in keras_steps.list_steps()])
def test_installed_step_conforms(name, tmp_path):
    step = keras_steps.get_step(name)
    if name not in EXAMPLES and len(step.model_roles) > 1:
        pytest.fail(
            f"Step {name!r} works on networks {step.model_roles}: add tiny networks "
            "and data for it to EXAMPLES in tests/test_conformance.py."
        )
    check_step(name, tmp_path=tmp_path, **EXAMPLES.get(name, {}))


@pytest.mark.slow
@pytest.mark.parametrize("name", [s.name for s in keras_steps.list_steps()])
def test_installed_step_compiles_like_eager(name, tmp_path):
    """The kit's optional check: jit_compile=True trains as eager does."""
    check_step(name, checks=["compiled"], tmp_path=tmp_path, **EXAMPLES.get(name, {}))
