"""`supervised` behaves exactly like keras.Model's own torch train/test/predict steps.

Each test builds the same network twice from the same seed, once as a plain
``keras.Model`` and once as a ``StepModel`` (in each of its forms), trains both
with the same call, and compares histories, weights and predictions.
"""

import warnings

import keras
import numpy as np
import pytest
import torch

import keras_steps

RNG = np.random.default_rng(7)
X = RNG.random((120, 6)).astype("float32")
Y_REG = (X @ RNG.normal(size=(6, 1))).astype("float32")
Y_CLS = (X[:, 0] + X[:, 1] > 1.0).astype("int64")
SW = RNG.random((120,)).astype("float32")


def _mlp_layers(inputs, outputs=1, activation=None, reg=None):
    h = keras.layers.Dense(8, activation="relu", kernel_regularizer=reg)(inputs)
    return keras.layers.Dense(outputs, activation=activation)(h)


def twins(build, form="functional"):
    """Return (keras.Model, StepModel) with identical initial weights."""
    keras.utils.set_random_seed(3)
    inputs, outputs = build()
    plain = keras.Model(inputs, outputs)
    keras.utils.set_random_seed(3)
    inputs, outputs = build()
    if form == "functional":
        ours = keras_steps.StepModel(inputs, outputs, step="supervised")
    else:
        ours = keras_steps.StepModel(models={"model": keras.Model(inputs, outputs)})
    ours.set_weights(plain.get_weights())
    return plain, ours


def fit_both(plain, ours, compile_kw, fit_kw, epochs=3):
    results = []
    for model in (plain, ours):
        opt = compile_kw["optimizer"]
        model.compile(**{**compile_kw, "optimizer": opt.__class__.from_config(opt.get_config())})
        keras.utils.set_random_seed(11)
        history = model.fit(epochs=epochs, verbose=0, **fit_kw).history
        results.append(history)
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        np.testing.assert_allclose(
            results[0][key], results[1][key], rtol=1e-5, atol=1e-6, err_msg=key
        )
    for a, b in zip(plain.get_weights(), ours.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    return results[1]


def _compile(**kw):
    base = {"optimizer": keras.optimizers.Adam(0.01), "loss": "mse", "metrics": ["mae"]}
    base.update(kw)
    return base


@pytest.mark.parametrize("form", ["functional", "wrapper"])
def test_plain_fit_history_and_weights_match(form):
    plain, ours = twins(lambda: (i := keras.Input((6,)), _mlp_layers(i)), form)
    history = fit_both(plain, ours, _compile(), {"x": X, "y": Y_REG, "batch_size": 16})
    assert history["loss"][-1] < history["loss"][0]
    np.testing.assert_allclose(plain.predict(X, verbose=0), ours.predict(X, verbose=0), rtol=1e-6)
    np.testing.assert_allclose(
        plain.evaluate(X, Y_REG, verbose=0), ours.evaluate(X, Y_REG, verbose=0), rtol=1e-6
    )


def test_sample_weight_and_weighted_metrics():
    plain, ours = twins(lambda: (i := keras.Input((6,)), _mlp_layers(i)))
    compile_kw = _compile(weighted_metrics=["mse"])
    fit_both(plain, ours, compile_kw, {"x": X, "y": Y_REG, "sample_weight": SW, "batch_size": 32})
    assert ours.evaluate(X, Y_REG, sample_weight=SW, verbose=0) == pytest.approx(
        plain.evaluate(X, Y_REG, sample_weight=SW, verbose=0), rel=1e-6
    )


def test_class_weight_classification():
    plain, ours = twins(lambda: (i := keras.Input((6,)), _mlp_layers(i, 2, "softmax")))
    compile_kw = _compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    fit_both(plain, ours, compile_kw, {"x": X, "y": Y_CLS, "class_weight": {0: 1.0, 1: 3.0}})


def test_add_loss_regularisation_counts():
    plain, ours = twins(lambda: (i := keras.Input((6,)), _mlp_layers(i, reg="l2")))
    fit_both(plain, ours, _compile(), {"x": X, "y": Y_REG})
    assert ours.losses  # the regulariser is there, and was part of the equal history


def test_multi_input_multi_output_loss_weights_dict_data():
    def build():
        a = keras.Input((6,), name="a")
        b = keras.Input((3,), name="b")
        h = keras.layers.Concatenate()([keras.layers.Dense(4)(a), b])
        out1 = keras.layers.Dense(1, name="reg")(h)
        out2 = keras.layers.Dense(2, activation="softmax", name="cls")(h)
        return {"a": a, "b": b}, {"reg": out1, "cls": out2}

    plain, ours = twins(build)
    compile_kw = {
        "optimizer": keras.optimizers.SGD(0.05),
        "loss": {"reg": "mse", "cls": "sparse_categorical_crossentropy"},
        "loss_weights": {"reg": 0.5, "cls": 2.0},
        "metrics": {"reg": ["mae"], "cls": ["accuracy"]},
    }
    data = {"x": {"a": X, "b": X[:, :3]}, "y": {"reg": Y_REG, "cls": Y_CLS}, "batch_size": 20}
    history = fit_both(plain, ours, compile_kw, data)
    assert {"reg_loss", "cls_loss", "reg_mae", "cls_accuracy"} <= set(history)


def test_tuple_data_from_torch_dataloader():
    plain, ours = twins(lambda: (i := keras.Input((6,)), _mlp_layers(i)))
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(Y_REG))
    loader = torch.utils.data.DataLoader(dataset, batch_size=24, shuffle=False)
    fit_both(plain, ours, _compile(), {"x": loader, "shuffle": False})


def test_validation_split_data_and_callbacks():
    plain, ours = twins(lambda: (i := keras.Input((6,)), _mlp_layers(i)))
    history = fit_both(
        plain,
        ours,
        _compile(),
        {"x": X, "y": Y_REG, "validation_split": 0.25, "shuffle": True},
    )
    assert "val_loss" in history and "val_mae" in history

    plain, ours = twins(lambda: (i := keras.Input((6,)), _mlp_layers(i)))
    stops = []
    for model in (plain, ours):
        model.compile(**_compile(optimizer=keras.optimizers.SGD(1e-9)))
        early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=1.0)
        history = model.fit(
            X, Y_REG, validation_data=(X[:20], Y_REG[:20]), epochs=10, verbose=0, callbacks=[early]
        )
        stops.append(len(history.history["loss"]))
    assert stops[0] == stops[1] == 2


def test_learning_rate_schedule_callback_and_optimizer_options():
    plain, ours = twins(lambda: (i := keras.Input((6,)), _mlp_layers(i)))
    compile_kw = _compile(
        optimizer=keras.optimizers.Adam(0.05, global_clipnorm=0.1, use_ema=True)
    )
    results = []
    for model in (plain, ours):
        compile_kw["optimizer"] = keras.optimizers.Adam(0.05, global_clipnorm=0.1, use_ema=True)
        model.compile(**compile_kw)
        sched = keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5)
        keras.utils.set_random_seed(11)
        results.append(model.fit(X, Y_REG, epochs=3, verbose=0, callbacks=[sched]).history)
    np.testing.assert_allclose(results[0]["loss"], results[1]["loss"], rtol=1e-5)
    np.testing.assert_allclose(results[0]["learning_rate"], results[1]["learning_rate"])


def test_mixed_float16_loss_scaling_matches_keras():
    keras.config.set_dtype_policy("mixed_float16")
    plain, ours = twins(lambda: (i := keras.Input((6,)), _mlp_layers(i)))
    history = fit_both(plain, ours, _compile(), {"x": X, "y": Y_REG})
    assert isinstance(ours.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(history["loss"]).all()


def test_mixed_bfloat16_matches_keras():
    keras.config.set_dtype_policy("mixed_bfloat16")
    plain, ours = twins(lambda: (i := keras.Input((6,)), _mlp_layers(i)))
    fit_both(plain, ours, _compile(), {"x": X, "y": Y_REG})


def test_no_trainable_weights_warns_like_keras():
    inputs = keras.Input((6,))
    layer = keras.layers.Dense(1, trainable=False)
    model = keras_steps.StepModel(inputs, layer(inputs))
    model.compile(optimizer="sgd", loss="mse")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.fit(X, Y_REG, epochs=1, verbose=0)
    assert any("does not have any trainable weights" in str(w.message) for w in record)


def test_predict_and_train_on_batch_and_test_on_batch():
    plain, ours = twins(lambda: (i := keras.Input((6,)), _mlp_layers(i)))
    for model in (plain, ours):
        model.compile(**_compile(optimizer=keras.optimizers.SGD(0.1)))
    for model in (plain, ours):
        model.train_on_batch(X[:32], Y_REG[:32])
    np.testing.assert_allclose(
        plain.test_on_batch(X, Y_REG), ours.test_on_batch(X, Y_REG), rtol=1e-6
    )
    np.testing.assert_allclose(plain.predict_on_batch(X), ours.predict_on_batch(X), rtol=1e-6)


def test_steps_per_epoch_and_initial_epoch():
    plain, ours = twins(lambda: (i := keras.Input((6,)), _mlp_layers(i)))
    fit_both(
        plain,
        ours,
        _compile(),
        {"x": X, "y": Y_REG, "steps_per_epoch": 2, "initial_epoch": 1, "batch_size": 8},
        epochs=4,
    )
