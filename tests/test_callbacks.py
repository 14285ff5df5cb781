"""keras_steps.callbacks and Keras's own callbacks on steps with several networks."""

import io

import keras
import numpy as np
import pytest
from _gan_testing import gaussian_2d, mlp
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from test_step_vae import make_data, make_vae

import keras_steps
from keras_steps import RoleError, StepModel
from keras_steps.callbacks import ForOptimizers

LR = {"generator": 1e-3, "discriminator": 4e-3}
# Keras 3.15 callbacks change each optimizer of model.optimizer.optimizers; the
# earlier ones set model.optimizer.learning_rate, which the group spreads to
# every role by the same factor (same results for the schedules used here).
KERAS_VERSION = tuple(int(p) for p in keras.version().split(".")[:2])
KERAS_ITERATES_GROUPS = KERAS_VERSION >= (3, 15)


def make_gan(optimizers=None):
    keras.utils.set_random_seed(7)
    gan = StepModel(
        models={"generator": mlp(4, 2, "generator", 8), "discriminator": mlp(2, 1, "d", 8)},
        step="gan",
        step_options={"latent_dim": 4},
    )
    gan.compile(
        optimizer=optimizers
        or {role: keras.optimizers.SGD(lr) for role, lr in LR.items()}
    )
    return gan


def learning_rates(model):
    return {
        role: float(keras.ops.convert_to_numpy(opt.learning_rate))
        for role, opt in model.optimizers.items()
    }


POINTS = gaussian_2d(64)


class RecordLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(dict(logs))
        self.weights.append(self.model.get_weights())


# -- learning rates -------------------------------------------------------------


def test_scheduler_sets_every_role_of_a_gan():
    gan = make_gan()
    seen = []

    def schedule(epoch, lr):
        seen.append(lr)
        return lr * 0.5

    gan.fit(POINTS, batch_size=32, epochs=3, verbose=0,
            callbacks=[keras.callbacks.LearningRateScheduler(schedule)])
    assert learning_rates(gan) == pytest.approx({r: lr / 8 for r, lr in LR.items()})
    if KERAS_ITERATES_GROUPS:
        # Called once per role and epoch, with that role's own learning rate.
        assert sorted(seen[:2]) == pytest.approx(sorted(LR.values()))
        assert len(seen) == 6


def test_reduce_on_plateau_reduces_every_role_of_a_gan():
    gan = make_gan()
    record = RecordLogs()
    # min_delta no loss reaches: every epoch is a plateau.
    reduce = keras.callbacks.ReduceLROnPlateau(
        monitor="g_loss", factor=0.1, patience=1, min_delta=1e6
    )
    gan.fit(POINTS, batch_size=32, epochs=3, verbose=0, callbacks=[reduce, record])
    # best set at epoch 1, plateaus at epochs 2 and 3.
    assert learning_rates(gan) == pytest.approx({r: lr * 0.01 for r, lr in LR.items()})
    if KERAS_ITERATES_GROUPS:  # Keras logs each optimizer's rate
        names = {opt.name for opt in gan.optimizers.values()}
        assert {f"learning_rate_{n}" for n in names} <= set(record.epochs[-1])


def test_for_optimizers_limits_a_callback_to_some_roles():
    gan = make_gan()
    callback = ForOptimizers(
        keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5),
        roles="discriminator",
    )
    gan.fit(POINTS, batch_size=32, epochs=2, verbose=0, callbacks=[callback])
    assert learning_rates(gan) == pytest.approx(
        {"generator": LR["generator"], "discriminator": LR["discriminator"] / 4}
    )


def test_for_optimizers_refuses_an_unknown_role():
    gan = make_gan()
    callback = ForOptimizers(keras.callbacks.ReduceLROnPlateau(), roles=["critic"])
    with pytest.raises(RoleError, match=r"'gan'.*roles=\['critic'\].*'generator'"):
        gan.fit(POINTS, batch_size=32, epochs=1, verbose=0, callbacks=[callback])


def test_for_optimizers_refuses_what_is_not_a_callback():
    with pytest.raises(TypeError, match="keras.callbacks.Callback, got function"):
        ForOptimizers(lambda epoch: 0.1)


def test_group_learning_rate_scales_every_role():
    # What a Keras version whose callbacks only know model.optimizer.learning_rate
    # does with the group: read the first role's rate, set a new one.
    gan = make_gan()
    callback = ForOptimizers(keras.callbacks.Callback())
    callback.set_model(gan)
    group = callback.callback.model.optimizer
    assert float(keras.ops.convert_to_numpy(group.learning_rate)) == pytest.approx(1e-3)
    group.learning_rate = 5e-4
    assert learning_rates(gan) == pytest.approx({r: lr / 2 for r, lr in LR.items()})


def test_the_view_passes_stop_training_to_the_model():
    gan = make_gan()
    callback = ForOptimizers(keras.callbacks.Callback())
    callback.set_model(gan)
    callback.callback.model.stop_training = True
    assert gan.stop_training is True
    assert callback.callback.model.step == "gan"


def test_lr_callbacks_keep_saving_and_ema_of_a_gan(tmp_path):
    # model.optimizer stays None for Keras's saving and EMA finalization.
    gan = make_gan(
        {r: keras.optimizers.Adam(lr, use_ema=True) for r, lr in LR.items()}
    )
    gan.fit(POINTS, batch_size=32, epochs=2, verbose=0,
            callbacks=[keras.callbacks.LearningRateScheduler(lambda e, lr: lr * 0.5)])
    assert gan.optimizer is None
    path = tmp_path / "gan.keras"
    gan.save(path)
    loaded = keras.models.load_model(path)
    assert learning_rates(loaded) == pytest.approx({r: lr / 4 for r, lr in LR.items()})


def test_scheduler_on_a_vae():
    vae = make_vae(optimizer=keras.optimizers.Adam(1e-2))
    vae.fit(make_data(64), batch_size=32, epochs=2, verbose=0,
            callbacks=[keras.callbacks.LearningRateScheduler(lambda e, lr: 1e-3 * (e + 1))])
    assert learning_rates(vae) == pytest.approx({"model": 2e-3})


# -- directions of the step's trackers -------------------------------------------


@pytest.mark.parametrize(
    "make_callback",
    [
        lambda: keras.callbacks.EarlyStopping(monitor="val_g_loss", patience=1),
        lambda: keras.callbacks.ReduceLROnPlateau(monitor="val_g_loss", patience=1),
    ],
    ids=["EarlyStopping", "ReduceLROnPlateau"],
)
def test_monitoring_a_gan_tracker_needs_no_mode(make_callback):
    gan = make_gan()
    callback = make_callback()
    gan.fit(POINTS, validation_data=(POINTS,), batch_size=32, epochs=2, verbose=0,
            callbacks=[callback])
    assert callback.mode == "min"


def test_checkpoint_keeps_the_best_vae_by_its_reconstruction_loss(tmp_path):
    vae = make_vae(optimizer=keras.optimizers.Adam(1e-2))
    x = make_data(128)
    path = tmp_path / "best.weights.h5"
    checkpoint = keras.callbacks.ModelCheckpoint(
        path, monitor="val_reconstruction_loss", save_best_only=True, save_weights_only=True
    )
    record = RecordLogs()
    vae.fit(x, validation_data=(x[:64],), batch_size=32, epochs=4, verbose=0,
            callbacks=[checkpoint, record])
    losses = [logs["val_reconstruction_loss"] for logs in record.epochs]
    assert checkpoint.best == pytest.approx(min(losses))
    assert losses != sorted(losses, reverse=True), "every epoch improved: nothing tested"
    best = make_vae()
    best.load_weights(path)
    for saved, kept in zip(best.get_weights(), record.weights[int(np.argmin(losses))]):
        np.testing.assert_array_equal(saved, kept)


def test_directions_of_trackers():
    gan = make_gan()
    assert keras_steps.callbacks._learning_rate.tracker_directions(gan) == {
        "d_loss": "down",
        "g_loss": "down",
    }
    model = StepModel(
        models={"model": mlp(2, 3, "classifier")},
        step="adversarial",
    )
    directions = keras_steps.callbacks._learning_rate.tracker_directions(model)
    assert directions == {"adv_loss": "down", "adv_accuracy": "up"}


def test_a_tracker_of_unknown_direction_still_needs_mode():
    gan = make_gan()
    callback = keras.callbacks.EarlyStopping(monitor="val_wasserstein")
    keras_steps.callbacks._learning_rate.fit_callbacks(gan, [callback])
    assert callback.mode == "auto"


def test_an_explicit_mode_is_kept():
    gan = make_gan()
    callback = keras.callbacks.EarlyStopping(monitor="val_g_loss", mode="max")
    keras_steps.callbacks._learning_rate.fit_callbacks(gan, [callback])
    assert callback.mode == "max"


def test_single_optimizer_callbacks_are_not_wrapped():
    vae = make_vae()
    callback = keras.callbacks.ReduceLROnPlateau()
    assert keras_steps.callbacks._learning_rate.fit_callbacks(vae, [callback]) == [callback]
    assert np.isfinite(learning_rates(vae)["model"])


# -- TensorBoard -----------------------------------------------------------------

def read_events(folder):
    events = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0}
    )
    events.Reload()
    return events


def scalars(events, tag):
    return [(e.step, e.value) for e in events.Scalars(tag)]


def image_gan():
    """A GAN whose generator draws 8x8 grey images (tanh), for the sample grid."""
    keras.utils.set_random_seed(3)
    generator = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(64, activation="tanh"),
         keras.layers.Reshape((8, 8, 1))],
        name="generator",
    )
    discriminator = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(1)],
        name="discriminator",
    )
    gan = StepModel(
        models={"generator": generator, "discriminator": discriminator},
        step="gan",
        step_options={"latent_dim": 4},
    )
    gan.compile(optimizer={role: keras.optimizers.SGD(lr) for role, lr in LR.items()})
    images = np.random.default_rng(0).uniform(-1, 1, size=(64, 8, 8, 1)).astype("float32")
    return gan, images


def test_tensorboard_writes_a_gans_metrics_rates_and_samples(tmp_path):
    gan, images = image_gan()
    record = RecordLogs()
    board = keras_steps.callbacks.TensorBoard(
        tmp_path, update_freq="batch", images_every=2, max_images=9
    )
    scheduler = keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5)
    gan.fit(images, validation_data=(images[:32],), batch_size=32, epochs=4, verbose=0,
            callbacks=[scheduler, board, record])

    train = read_events(tmp_path / "train")
    for name in ("d_loss", "g_loss"):
        written = scalars(train, f"epoch_{name}")
        assert [s for s, _ in written] == [0, 1, 2, 3]
        assert [v for _, v in written] == pytest.approx([e[name] for e in record.epochs])
        assert [s for s, _ in scalars(train, f"batch_{name}")] == list(range(1, 9))
    for role, lr in LR.items():
        assert [v for _, v in scalars(train, f"epoch_learning_rate/{role}")] == pytest.approx(
            [lr / 2, lr / 4, lr / 8, lr / 16]
        )
    validation = read_events(tmp_path / "validation")
    assert [v for _, v in scalars(validation, "epoch_g_loss")] == pytest.approx(
        [e["val_g_loss"] for e in record.epochs]
    )
    assert "epoch_val_g_loss" not in train.Tags()["scalars"]

    samples = train.Images("samples")
    assert [s.step for s in samples] == [1, 3]
    grid = Image.open(io.BytesIO(samples[-1].encoded_image_string))
    # 9 images of 8x8: 3x3, with 1-pixel lines between them.
    assert grid.format == "PNG"
    assert grid.size == (3 * 8 + 2, 3 * 8 + 2)
    # The last generator's samples, tanh mapped to [0, 1], at the top left.
    expected = (gan.predict(np.random.default_rng(0).normal(size=(9, 4)).astype("float32"),
                            verbose=0)[0, ..., 0] + 1) / 2
    pixels = np.asarray(grid.convert("L"), dtype="float32")[:8, :8] / 255
    np.testing.assert_allclose(pixels, expected, atol=1 / 255 + 1e-6)


def test_tensorboard_per_epoch_only_by_default(tmp_path):
    gan = make_gan()  # 2-D points: no images
    gan.fit(POINTS, batch_size=32, epochs=2, verbose=0,
            callbacks=[keras_steps.callbacks.TensorBoard(tmp_path)])
    train = read_events(tmp_path / "train")
    assert not [t for t in train.Tags()["scalars"] if t.startswith("batch_")]
    assert train.Tags()["images"] == []
    assert len(scalars(train, "epoch_g_loss")) == 2


def test_tensorboard_every_n_batches(tmp_path):
    gan = make_gan()
    gan.fit(gaussian_2d(32 * 6), batch_size=32, epochs=1, verbose=0,
            callbacks=[keras_steps.callbacks.TensorBoard(tmp_path, update_freq=4)])
    assert [s for s, _ in scalars(read_events(tmp_path / "train"), "batch_d_loss")] == [4]


def test_tensorboard_reconstructions_of_a_vae(tmp_path):
    keras.utils.set_random_seed(5)
    inputs = keras.Input((4, 4, 1))
    h = keras.layers.Flatten()(inputs)
    encoder = keras.Model(inputs, [keras.layers.Dense(2)(h), keras.layers.Dense(2)(h)])
    z = keras.Input((2,))
    decoder = keras.Model(
        z, keras.layers.Reshape((4, 4, 1))(keras.layers.Dense(16, activation="sigmoid")(z))
    )
    vae = StepModel(models={"encoder": encoder, "decoder": decoder}, step="vae")
    vae.compile(optimizer="adam")
    x = np.random.default_rng(0).uniform(size=(32, 4, 4, 1)).astype("float32")
    vae.fit(x, batch_size=16, epochs=1, verbose=0,
            callbacks=[keras_steps.callbacks.TensorBoard(tmp_path, image_inputs=x[:4])])
    train = read_events(tmp_path / "train")
    assert [s.step for s in train.Images("samples")] == [0]
    assert [v for _, v in scalars(train, "epoch_learning_rate/model")] == pytest.approx([1e-3])
    assert len(scalars(train, "epoch_reconstruction_loss")) == 1


def test_tensorboard_refuses_inputs_whose_predictions_are_no_images(tmp_path):
    vae = make_vae()
    x = make_data(32)
    board = keras_steps.callbacks.TensorBoard(tmp_path, image_inputs=x[:4])
    with pytest.raises(keras_steps.StepError, match=r"'vae'.*returned \(4, 16\)"):
        vae.fit(x, batch_size=16, epochs=1, verbose=0, callbacks=[board])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"update_freq": "step"}, r"update_freq='step'.*'epoch', 'batch'"),
        ({"update_freq": 0}, r"update_freq=0"),
        ({"images_every": -1}, r"images_every=-1.*>= 0"),
        ({"max_images": 0}, r"max_images=0.*>= 1"),
    ],
)
def test_tensorboard_refuses_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(keras_steps.StepError, match=message):
        keras_steps.callbacks.TensorBoard(tmp_path, **kwargs)


def test_tensorboard_without_the_extra_names_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.split(".")[0] == "tensorboard":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    monkeypatch.delitem(__import__("sys").modules, "tensorboard")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'keras-steps\[tensorboard\]'"):
        keras_steps.callbacks.TensorBoard("logs")


def test_only_rank_zero_writes_tensorboard(tmp_path, monkeypatch):
    from keras_steps._distributed import _group, _run

    board = keras_steps.callbacks.TensorBoard(tmp_path)
    checkpoint = ForOptimizers(keras.callbacks.ModelCheckpoint(tmp_path / "m.keras"))
    reduce = keras.callbacks.ReduceLROnPlateau()
    callbacks = [board, checkpoint, reduce]
    assert _run._rank_callbacks(callbacks) == callbacks
    monkeypatch.setattr(_group, "rank", lambda: 1)
    assert _run._rank_callbacks(callbacks) == [reduce]


@pytest.mark.skipif(
    not keras_steps.callbacks._learning_rate._SWAP_EMA_KNOWS_GROUPS,
    reason="SwapEMAWeights handles several optimizers from Keras 3.15",
)
def test_swap_ema_weights_evaluates_every_roles_averages():
    gan = make_gan({r: keras.optimizers.SGD(lr, use_ema=True) for r, lr in LR.items()})
    seen = {}

    class Weights(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            seen["evaluated"] = [w.copy() for w in gan.models["generator"].get_weights()]

        def on_epoch_end(self, epoch, logs=None):
            seen["trained"] = [w.copy() for w in gan.models["generator"].get_weights()]

    # Listed after SwapEMAWeights, Weights sees the averages swapped in for the
    # evaluation, and the trained weights swapped back at epoch end.
    swap = keras.callbacks.SwapEMAWeights()
    gan.fit(POINTS, validation_data=(POINTS,), batch_size=32, epochs=1, verbose=0,
            callbacks=[swap, Weights()])
    assert not np.allclose(seen["evaluated"][0], seen["trained"][0])
    # fit() ends by putting the averages in the weights (no step after evaluation).
    np.testing.assert_allclose(seen["evaluated"][0], gan.models["generator"].get_weights()[0])


@pytest.mark.skipif(
    KERAS_VERSION < (3, 11),
    reason="Keras 3.10 tells callbacks an execution's first batch, not its last",
)
def test_tensorboard_counts_batches_under_fused_execution(tmp_path):
    gan = make_gan()
    gan.compile(
        optimizer={role: keras.optimizers.SGD(lr) for role, lr in LR.items()},
        steps_per_execution=3,
    )
    # 6 batches an epoch, run 3 at a time: callbacks at batches 3, 6, 9, 12.
    gan.fit(gaussian_2d(32 * 6), batch_size=32, epochs=2, verbose=0,
            callbacks=[keras_steps.callbacks.TensorBoard(tmp_path, update_freq=4)])
    steps = [s for s, _ in scalars(read_events(tmp_path / "train"), "batch_d_loss")]
    assert steps == [6, 9, 12]


def test_swap_ema_weights_before_keras_3_15_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(keras_steps.callbacks._learning_rate, "_SWAP_EMA_KNOWS_GROUPS", False)
    gan = make_gan({r: keras.optimizers.SGD(lr, use_ema=True) for r, lr in LR.items()})
    with pytest.raises(keras_steps.StepError, match=r"'gan'.*SwapEMAWeights.*needs Keras 3.15"):
        gan.fit(POINTS, batch_size=32, epochs=1, verbose=0,
                callbacks=[keras.callbacks.SwapEMAWeights()])
