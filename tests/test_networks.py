"""Users' networks are theirs: steps never change them for good.

A step may freeze a network for itself (step_frozen_roles) and build an
unbuilt one on what it feeds it, but the network's trainable flag, dtype
policy and (when it was built) build shape stay as the user left them.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

import keras_steps
from keras_steps import PluginError, StepError, hookimpl

RNG = np.random.default_rng(0)
X = RNG.random((32, 6)).astype("float32")
Y = (X.sum(axis=1) > 3).astype("int32")
IMAGES = RNG.random((16, 4, 4, 1)).astype("float32")


def classifier(name, width=8):
    return keras.Sequential(
        [keras.Input((6,)), layers.Dense(width, activation="relu"), layers.Dense(2)],
        name=name,
    )


def _distiller(teacher, student=None):
    model = keras_steps.StepModel(
        models={"student": student or classifier("student", 4), "teacher": teacher},
        step="distillation",
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _flat(network):
    return np.concatenate([np.ravel(w) for w in network.get_weights()])


def test_distillation_freezes_the_teacher_for_the_step_only(tmp_path):
    teacher = classifier("teacher")
    distiller = _distiller(teacher)
    student = distiller.models["student"]
    assert teacher.trainable is True
    assert all(v.trainable for v in teacher.weights)
    assert [id(v) for v in distiller.trainable_weights] == [
        id(v) for v in student.trainable_weights
    ]
    assert {id(v) for v in teacher.weights} <= {
        id(v) for v in distiller.non_trainable_weights
    }
    before = _flat(teacher)
    distiller.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    np.testing.assert_array_equal(_flat(teacher), before)
    assert teacher.trainable is True
    # The optimizer has state for the student's weights only (Adam: two each).
    optimizer_vars = {id(v) for v in distiller.optimizer.variables}
    assert len(distiller.optimizer.variables) == 2 + 2 * len(student.trainable_weights)
    assert not any(id(v) in optimizer_vars for v in teacher.weights)

    # The same network trains in a model of its own afterwards.
    teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    assert not np.allclose(_flat(teacher), before)

    # A saved distiller comes back with a frozen, but trainable-flagged, teacher.
    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.models.load_model(tmp_path / "distiller.keras")
    assert loaded.models["teacher"].trainable is True
    assert [id(v) for v in loaded.trainable_weights] == [
        id(v) for v in loaded.models["student"].trainable_weights
    ]


def test_a_teacher_the_user_froze_stays_frozen():
    teacher = classifier("teacher")
    teacher.trainable = False
    _distiller(teacher).fit(X, Y, batch_size=8, epochs=1, verbose=0)
    assert teacher.trainable is False


def test_teacher_regularization_does_not_count():
    teacher = keras.Sequential(
        [keras.Input((6,)), layers.Dense(2, kernel_regularizer=keras.regularizers.L2(10.0))]
    )
    distiller = _distiller(teacher)
    assert distiller.losses == []
    assert len(teacher.losses) == 1  # the teacher, used on its own, still has it


def test_an_unbuilt_teacher_is_refused():
    unbuilt = keras.Sequential([layers.Dense(2)], name="fresh")
    with pytest.raises(StepError, match="'distillation'.*teacher network 'fresh' is not built"):
        _distiller(unbuilt)


def _gan(step, generator, judge, latent_dim=3):
    second = "critic" if step == "wgan-gp" else "discriminator"
    model = keras_steps.StepModel(
        models={"generator": generator, second: judge},
        step=step,
        step_options={"latent_dim": latent_dim, "d_steps": 1},
    )
    model.compile(
        optimizer={"generator": keras.optimizers.Adam(1e-3), second: keras.optimizers.Adam(1e-3)}
    )
    return model


def _unbuilt_generator():
    return keras.Sequential([layers.Dense(16), layers.Dense(16), layers.Reshape((4, 4, 1))])


def _unbuilt_judge(outputs=1):
    return keras.Sequential([layers.Flatten(), layers.Dense(8), layers.Dense(outputs)])


@pytest.mark.parametrize("step", ["gan", "wgan-gp"])
def test_unbuilt_sequential_networks_are_built_on_what_the_step_feeds_them(step):
    generator, judge = _unbuilt_generator(), _unbuilt_judge()
    model = _gan(step, generator, judge)
    assert model.built
    assert generator.input_shape == (None, 3)  # latents, not images
    assert generator.get_build_config() == {"input_shape": (None, 3)}
    assert judge.input_shape == (None, 4, 4, 1)
    history = model.fit(IMAGES, batch_size=8, epochs=1, verbose=0)
    assert all(np.isfinite(v).all() for v in history.history.values())
    assert model.predict(RNG.normal(size=(5, 3)).astype("float32"), verbose=0).shape == (
        5,
        4,
        4,
        1,
    )


class SubclassedGenerator(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = layers.Dense(16)
        self.reshape = layers.Reshape((4, 4, 1))

    def call(self, z):
        return self.reshape(self.dense(z))


def test_an_unbuilt_subclassed_generator_is_built_on_latents():
    generator = SubclassedGenerator()
    _gan("gan", generator, _unbuilt_judge()).fit(IMAGES, batch_size=8, epochs=1, verbose=0)
    assert generator.dense.kernel.shape == (3, 16)


@pytest.mark.parametrize("step", ["gan", "wgan-gp"])
def test_a_generator_built_for_other_latents_is_refused_by_role(step):
    generator = keras.Sequential([keras.Input((5,)), layers.Dense(16), layers.Reshape((4, 4, 1))])
    with pytest.raises(
        StepError,
        match=rf"'{step}': the generator network cannot take latent vectors "
        r"\(option latent_dim=3\) of shape \(batch, 3\)",
    ):
        _gan(step, generator, _unbuilt_judge())


def test_a_discriminator_that_does_not_fit_the_generator_is_refused():
    judge = keras.Sequential([keras.Input((8, 8, 1)), layers.Flatten(), layers.Dense(1)])
    with pytest.raises(
        StepError,
        match=r"'gan': the discriminator network cannot take the generator's "
        r"outputs of shape \(batch, 4, 4, 1\)",
    ):
        _gan("gan", _unbuilt_generator(), judge)


def test_a_discriminator_with_several_scores_per_example_is_refused():
    with pytest.raises(StepError, match=r"returned shape \(2, 10\).*one score per example"):
        _gan("gan", _unbuilt_generator(), _unbuilt_judge(outputs=10))


def _single(step):
    def build(networks):
        model = keras_steps.StepModel(models=networks, step=step)
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    return {"model": classifier("net")}, build, (X, Y)


def _vae(_):
    inputs = keras.Input((6,))
    hidden = layers.Dense(4)(inputs)
    encoder = keras.Model(inputs, [layers.Dense(2)(hidden), layers.Dense(2)(hidden)])
    decoder = keras.Sequential(
        [keras.Input((2,)), layers.Dense(6, activation="sigmoid")], name="decoder"
    )

    def build(networks):
        model = keras_steps.StepModel(models=networks, step="vae")
        model.compile("adam")
        return model

    return {"encoder": encoder, "decoder": decoder}, build, (X,)


def _gans(step):
    generator = keras.Sequential(
        [keras.Input((3,)), layers.Dense(16), layers.Reshape((4, 4, 1))], name="generator"
    )
    judge = keras.Sequential([keras.Input((4, 4, 1)), layers.Flatten(), layers.Dense(1)])
    second = "critic" if step == "wgan-gp" else "discriminator"
    return (
        {"generator": generator, second: judge},
        lambda networks: _gan(step, networks["generator"], networks[second]),
        (IMAGES,),
    )


def _distillation(_):
    networks = {"student": classifier("student", 4), "teacher": classifier("teacher")}
    return networks, lambda n: _distiller(n["teacher"], n["student"]), (X, Y)


BUILDERS = {
    "supervised": _single,
    "sam": _single,
    "mixup": _single,
    "adversarial": _single,
    "vae": _vae,
    "gan": _gans,
    "wgan-gp": _gans,
    "distillation": _distillation,
}


def _catalog():
    return sorted(
        s.name
        for s in keras_steps.list_steps()
        if s.source.kind == "core" or s.source.distribution == "keras-steps"
    )


def test_every_catalog_step_is_audited():
    assert sorted(BUILDERS) == _catalog()


def _layers(network):
    for layer in getattr(network, "layers", []):
        yield layer
        yield from _layers(layer)


def _state(network):
    return (
        network.trainable,
        [layer.trainable for layer in _layers(network)],
        [v.trainable for v in network.weights],
        network.dtype_policy.name,
        network.get_build_config(),
    )


@pytest.mark.parametrize("step", sorted(BUILDERS))
def test_fit_leaves_every_users_network_as_it_was(step):
    keras.config.set_dtype_policy("float32")
    networks, build, data = BUILDERS[step](step)
    before = {role: _state(n) for role, n in networks.items()}
    model = build(networks)
    model.fit(*data, batch_size=8, epochs=1, verbose=0)
    model.evaluate(*data, batch_size=8, verbose=0)
    assert {role: _state(n) for role, n in networks.items()} == before


class BadFrozen:
    @hookimpl
    def step_model_roles():
        return ("a", "b")

    @hookimpl
    def step_optimizer_roles():
        return ("a", "b")

    @hookimpl
    def step_frozen_roles():
        return ("b",)

    @hookimpl
    def step_call(model, inputs):
        return inputs

    @hookimpl
    def train_step(model, data):
        return {}

    @hookimpl
    def test_step(model, data):
        return {}


def test_a_frozen_role_with_an_optimizer_is_refused():
    with pytest.raises(PluginError, match="step_frozen_roles returned \\('b',\\)"):
        keras_steps.register_step(BadFrozen, "bad-frozen")


def _unbuilt_classifier():
    return keras.Sequential([layers.Dense(8, activation="relu"), layers.Dense(2)])


@pytest.mark.parametrize("step", ["supervised", "sam", "mixup", "adversarial"])
def test_an_unbuilt_single_network_is_built_on_the_inputs(step):
    network = _unbuilt_classifier()
    model = keras_steps.StepModel(models={"model": network}, step=step)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    # Built by Keras on the first batch, as a plain keras.Model builds it (the
    # batch size, 8, is recorded too, as plain Keras records it).
    assert network.input_shape[1:] == (6,)


def test_an_unbuilt_vae_decoder_is_built_on_the_latents():
    inputs = keras.Input((6,))
    hidden = layers.Dense(4)(inputs)
    encoder = keras.Model(inputs, [layers.Dense(2)(hidden), layers.Dense(2)(hidden)])
    decoder = keras.Sequential([layers.Dense(6, activation="sigmoid")])
    model = keras_steps.StepModel(models={"encoder": encoder, "decoder": decoder}, step="vae")
    model.compile("adam")
    model.fit(X, batch_size=8, epochs=1, verbose=0)
    assert decoder.input_shape[1:] == (2,)  # z, not the images


def test_an_unbuilt_student_is_built_on_the_inputs():
    student = _unbuilt_classifier()
    _distiller(classifier("teacher"), student).fit(X, Y, batch_size=8, epochs=1, verbose=0)
    assert student.input_shape[1:] == (6,)
