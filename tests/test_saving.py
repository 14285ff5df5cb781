"""model.save / keras.models.load_model keep the step, its options and its state."""

from __future__ import annotations

import json
import sys
import warnings
import zipfile

import keras
import numpy as np
import pydantic
import pytest
from resume_worker import NEEDS_GAN, Duel, DuelOptions, build, data, fit, weights

import keras_steps
from keras_steps import OptionsError, StepError, StepModel, UnknownStepError


def _load(path, **kwargs):
    """load_model, failing on any warning (such as skipped optimizer variables)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return keras.models.load_model(path, **kwargs)


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def _iterations(optimizer) -> int:
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


def _latents():
    return np.random.default_rng(1).normal(size=(5, 4)).astype("float32")


def _read_config(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("config.json"))


def _write_config(path, config) -> None:
    """Replace config.json inside a .keras file, keeping the rest."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)


# -- round trips ----------------------------------------------------------------
@pytest.mark.parametrize(
    "kind",
    ["supervised", "duel", pytest.param("gan", marks=pytest.mark.skipif(**NEEDS_GAN))],
)
def test_round_trip_then_fit_matches_an_uninterrupted_run(tmp_path, kind):
    model = build(kind)
    fit(model, kind, epochs=2)
    model.save(tmp_path / "m.keras")
    loaded = _load(tmp_path / "m.keras")

    assert type(loaded).__name__ == "StepModel" and isinstance(loaded, StepModel)
    assert loaded.step == model.step
    assert loaded.step_options == model.step_options
    assert sorted(loaded.models) == sorted(model.models)
    x = data(kind)[0] if kind == "supervised" else _latents()
    np.testing.assert_array_equal(
        model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    )
    # Every optimizer's iterations and moments, for one or two optimizers.
    assert sorted(loaded.optimizers) == sorted(model.optimizers)
    for role, optimizer in model.optimizers.items():
        assert _iterations(optimizer) == 2 * 8
        _assert_same(
            [v.numpy() for v in optimizer.variables],
            [v.numpy() for v in loaded.optimizers[role].variables],
        )

    fit(loaded, kind, epochs=4, initial_epoch=2)
    reference = build(kind)
    fit(reference, kind, epochs=4)
    _assert_same(weights(loaded), weights(reference))


@pytest.mark.parametrize(
    "kind", ["duel", pytest.param("gan", marks=pytest.mark.skipif(**NEEDS_GAN))]
)
def test_step_trackers_and_random_state_survive(tmp_path, kind):
    model = build(kind)
    fit(model, kind, epochs=1)
    model.save(tmp_path / "m.keras")
    loaded = _load(tmp_path / "m.keras")
    for name in ("d_loss", "g_loss"):
        tracker = model.step_state[name]
        assert float(tracker.count) >= 8
        assert float(loaded.step_state[name].result()) == float(tracker.result())
    # The step's generators and the Dropout layer's draw the same numbers next.
    generators = [
        name
        for name, item in model.step_state.items()
        if isinstance(item, keras.random.SeedGenerator)
    ]
    assert generators
    for name in generators:
        draws = [
            keras.random.normal((3,), seed=m.step_state[name]) for m in (model, loaded)
        ]
        np.testing.assert_array_equal(*(keras.ops.convert_to_numpy(d) for d in draws))
    dropouts = [m.models["discriminator"].layers[1] for m in (model, loaded)]
    masks = [
        keras.ops.convert_to_numpy(d(np.ones((2, 16)), training=True)) for d in dropouts
    ]
    np.testing.assert_array_equal(*masks)


def test_without_restored_seeds_a_resumed_gan_would_draw_other_numbers(tmp_path):
    # The control for the test above: a fresh model's generator is elsewhere.
    model = build("duel")
    fit(model, "duel", epochs=1)
    fresh = build("duel")
    a, b = (
        keras.ops.convert_to_numpy(
            keras.random.normal((3,), seed=m.step_state["seed_generator"])
        )
        for m in (model, fresh)
    )
    assert not np.array_equal(a, b)


def test_options_round_trip_as_plain_json(tmp_path):
    model = build("duel", options={"latent_dim": 3, "label_noise": 0.125})
    model.save(tmp_path / "m.keras")
    config = _read_config(tmp_path / "m.keras")
    assert config["registered_name"] == "keras_steps>StepModel"
    inner = config["config"]
    assert inner["step"] == "duel"
    assert inner["step_options"] == {"latent_dim": 3, "label_noise": 0.125}
    assert inner["step_options_version"] == 0
    assert inner["step_source"]["kind"] == "local"
    assert sorted(inner["models"]) == ["discriminator", "generator"]
    loaded = _load(tmp_path / "m.keras")
    assert loaded.step_options == DuelOptions(latent_dim=3, label_noise=0.125)


def test_weights_only_round_trip_keeps_step_state(tmp_path):
    model = build("duel")
    fit(model, "duel", epochs=1)
    model.save_weights(tmp_path / "m.weights.h5")
    other = build("duel")
    other.load_weights(tmp_path / "m.weights.h5")
    _assert_same(weights(other), weights(model))
    assert float(other.step_state["d_loss"].result()) == float(
        model.step_state["d_loss"].result()
    )


def test_loading_state_into_a_step_with_other_trackers_is_an_error(tmp_path):
    model = build("duel")
    model.save_weights(tmp_path / "m.weights.h5")

    class Other(Duel):
        @keras_steps.hookimpl
        def step_build():
            return {
                "d_loss": keras.metrics.Mean(),
                "seed_generator": keras.random.SeedGenerator(7),
            }

    keras_steps.register_step(Other, name="duel-other")
    other = build("duel-other")
    # Keras collects per-object load errors into one ValueError, ours included.
    with pytest.raises(ValueError, match=r"Not in the model: \['step_state:g_loss:0'"):
        other.load_weights(tmp_path / "m.weights.h5")


def test_mixed_precision_role_optimizers_round_trip(tmp_path):
    keras.config.set_dtype_policy("mixed_float16")
    model = build("duel")
    assert all(
        isinstance(o, keras.optimizers.LossScaleOptimizer)
        for o in model.optimizers.values()
    )
    fit(model, "duel", epochs=1)
    model.save(tmp_path / "m.keras")
    loaded = _load(tmp_path / "m.keras")
    for role, optimizer in loaded.optimizers.items():
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        _assert_same(
            [v.numpy() for v in optimizer.variables],
            [v.numpy() for v in model.optimizers[role].variables],
        )


def test_model_checkpoint_of_a_multi_network_step(tmp_path):
    model = build("duel")
    checkpoint = keras.callbacks.ModelCheckpoint(tmp_path / "e{epoch}.keras")
    best = keras.callbacks.ModelCheckpoint(
        tmp_path / "best.keras", monitor="g_loss", mode="min", save_best_only=True
    )
    history = fit(model, "duel", epochs=2, callbacks=[checkpoint, best])
    best_epoch = 1 + int(np.argmin(history.history["g_loss"]))
    _assert_same(
        weights(_load(tmp_path / "best.keras")),
        weights(_load(tmp_path / f"e{best_epoch}.keras")),
    )
    first = _load(tmp_path / "e1.keras")
    assert {r: _iterations(o) for r, o in first.optimizers.items()} == {
        "generator": 8,
        "discriminator": 8,
    }
    last = _load(tmp_path / "e2.keras")
    _assert_same(weights(last), weights(model))


# -- user subclasses ------------------------------------------------------------
@keras.saving.register_keras_serializable(package="test_saving")
class Regressor(StepModel):
    """A user subclass with its own constructor argument and call."""

    def __init__(self, *args, units=4, **kwargs):
        super().__init__(*args, **kwargs)
        if not args and "inputs" not in kwargs:
            self.units = units
            self.hidden = keras.layers.Dense(units, activation="relu")
            self.out = keras.layers.Dense(1)

    def call(self, x):
        return self.out(self.hidden(x))


def test_user_subclass_round_trip(tmp_path):
    x, y = data("supervised")
    model = Regressor(units=5, step="supervised")
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    config = _read_config(tmp_path / "m.keras")
    assert config["registered_name"] == "test_saving>Regressor"
    assert config["config"]["units"] == 5  # Keras alone would save the default
    loaded = _load(tmp_path / "m.keras")
    assert type(loaded) is Regressor and loaded.units == 5
    np.testing.assert_array_equal(
        model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    )
    assert _iterations(loaded.optimizer) == 8


def test_user_subclass_built_functionally_loads_as_that_class(tmp_path):
    inputs = keras.Input((8,))
    model = Regressor(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    model.save(tmp_path / "m.keras")
    assert (
        _read_config(tmp_path / "m.keras")["registered_name"] == "test_saving>Regressor"
    )
    loaded = _load(tmp_path / "m.keras")
    assert isinstance(loaded, Regressor) and type(loaded) is type(model)
    # The class itself is untouched: it still builds as a subclassed model.
    assert type(Regressor(units=2)) is Regressor


class ScaledOptions(keras_steps.StepOptions):
    """Options of a one-network test step."""

    factor: float = pydantic.Field(1.0, gt=0, description="Unused scale.")


class Scaled:
    """Keras's own training, with an option."""

    @keras_steps.hookimpl
    def step_options():
        return ScaledOptions

    @keras_steps.hookimpl
    def train_step(model, data):
        return keras.Model.train_step(model, data)

    @keras_steps.hookimpl
    def test_step(model, data):
        return keras.Model.test_step(model, data)


@keras.saving.register_keras_serializable(package="test_saving")
class Fixed(StepModel):
    """A subclass whose constructor always asks for step "scaled", factor 2."""

    def __init__(self, **kwargs):
        super().__init__(step="scaled", step_options={"factor": 2.0}, **kwargs)
        self.dense = keras.layers.Dense(1)

    def call(self, x):
        return self.dense(x)


@keras.saving.register_keras_serializable(package="test_saving")
class OwnConfig(Fixed):
    """A subclass whose get_config leaves the step out: its constructor picks it."""

    def get_config(self):
        return {"name": self.name}


def test_saved_step_wins_over_what_the_subclass_constructor_passes(tmp_path):
    keras_steps.register_step(Scaled, name="scaled")
    model = Fixed()
    model.step_options.factor = 0.5  # what it was trained with, say
    model(np.zeros((1, 8)))
    model.save(tmp_path / "m.keras")
    assert _load(tmp_path / "m.keras").step_options.factor == 0.5


# -- errors ----------------------------------------------------------------------
def _saved_duel(tmp_path, **options):
    model = build("duel", options=options)
    model.save(tmp_path / "m.keras")
    return tmp_path / "m.keras"


def test_step_not_installed_names_the_step_and_distribution(tmp_path):
    path = _saved_duel(tmp_path)
    config = _read_config(path)
    config["config"]["step_source"] = {
        "kind": "plugin",
        "distribution": "keras-steps-duel",
        "version": "1.2.0",
        "entry_point": "keras_steps_duel:Duel",
    }
    _write_config(path, config)
    keras_steps.unregister_step("duel")
    with pytest.raises(UnknownStepError) as info:
        keras.models.load_model(path)
    message = str(info.value)
    assert "'duel'" in message and "keras-steps-duel" in message and "1.2.0" in message


def _reregister_duel(options_class, **hooks):
    plugin = type(
        "DuelV2",
        (Duel,),
        {"step_options": keras_steps.hookimpl(lambda: options_class), **hooks},
    )
    keras_steps.register_step(plugin, name="duel")


class RenamedOptions(keras_steps.StepOptions):
    """label_noise renamed to noise, without a migration."""

    latent_dim: int = pydantic.Field(4, gt=0, description="Latent size.")
    noise: float = pydantic.Field(0.05, ge=0, description="Label noise scale.")


def test_renamed_option_is_an_error_naming_step_and_field(tmp_path):
    path = _saved_duel(tmp_path, label_noise=0.3)
    _reregister_duel(RenamedOptions)
    with pytest.raises(OptionsError) as info:
        keras.models.load_model(path)
    message = str(info.value)
    assert (
        "'duel'" in message
        and "'label_noise'" in message
        and "step_migrate_options" in message
    )


class MigratedOptions(RenamedOptions):
    options_version = 1


def _migrate(options, version):
    if version < 1:
        options["noise"] = options.pop("label_noise")
    return options


def test_migration_hook_converts_old_options(tmp_path):
    path = _saved_duel(tmp_path, label_noise=0.3)
    _reregister_duel(
        MigratedOptions, step_migrate_options=keras_steps.hookimpl(_migrate)
    )
    loaded = _load(path)
    assert loaded.step_options == MigratedOptions(latent_dim=4, noise=0.3)
    loaded.save(tmp_path / "again.keras")
    assert _read_config(tmp_path / "again.keras")["config"]["step_options_version"] == 1


def test_version_bump_without_migration_hook_is_an_error(tmp_path):
    path = _saved_duel(tmp_path)
    _reregister_duel(MigratedOptions)
    with pytest.raises(
        OptionsError, match=r"version 0.*options version 1.*no step_migrate_options"
    ):
        keras.models.load_model(path)


def test_options_from_a_newer_plugin_are_an_error(tmp_path):
    path = _saved_duel(tmp_path)
    config = _read_config(path)
    config["config"]["step_options_version"] = 3
    _write_config(path, config)
    with pytest.raises(
        OptionsError, match="version 3, newer than the installed step's version 0"
    ):
        keras.models.load_model(path)


def test_migration_hook_returning_garbage_is_a_plugin_error(tmp_path):
    path = _saved_duel(tmp_path)
    _reregister_duel(
        MigratedOptions, step_migrate_options=keras_steps.hookimpl(lambda options: None)
    )
    with pytest.raises(
        keras_steps.PluginError, match="step_migrate_options returned NoneType"
    ):
        keras.models.load_model(path)


# -- safe_mode: the file names no code that loading would run ----------------------
def _evil_lambda(marker):
    """A lambda that writes ``marker``, serialized as Keras serializes lambdas."""
    fn = lambda path=str(marker): open(path, "w").write("pwned")  # noqa: E731, SIM115
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return keras.saving.serialize_keras_object(fn)


def test_the_evil_payload_is_live(tmp_path):
    """Control: the payload used below does write the marker when evaluated."""
    marker = tmp_path / "marker"
    payload = _evil_lambda(marker)
    fn = keras.saving.deserialize_keras_object(payload, safe_mode=False)
    fn()
    assert marker.exists()


@pytest.mark.parametrize("safe_mode", [True, False])
@pytest.mark.parametrize(
    "attack",
    [
        "step_os_system",
        "step_module",
        "step_lambda",
        "options_lambda",
        "options_class",
        "source",
    ],
)
def test_crafted_file_runs_nothing(tmp_path, monkeypatch, attack, safe_mode):
    marker = tmp_path / "marker"
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    (module_dir / "evil_step_mod.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\nobj = None\n"
    )
    monkeypatch.syspath_prepend(str(module_dir))
    evil = _evil_lambda(marker)
    path = _saved_duel(tmp_path)
    config = _read_config(path)
    inner = config["config"]
    expected: type[StepError] = StepError
    if attack == "step_os_system":
        inner["step"], expected = "os:system", UnknownStepError
    elif attack == "step_module":
        inner["step"], expected = "evil_step_mod:obj", UnknownStepError
    elif attack == "step_lambda":
        inner["step"] = evil
    elif attack == "options_lambda":
        inner["step_options"]["label_noise"], expected = evil, OptionsError
    elif attack == "options_class":
        inner["step_options"]["__class__"] = {
            "module": "os",
            "class_name": "system",
            "config": "true",
        }
        expected = OptionsError
    elif attack == "source":
        # The recorded source is only quoted in messages, never loaded.
        inner["step"] = "not-installed"
        inner["step_source"] = {
            "kind": "plugin",
            "distribution": "x",
            "version": "1",
            "entry_point": "evil_step_mod:obj",
        }
        expected = UnknownStepError
    _write_config(path, config)
    with pytest.raises(expected):
        keras.models.load_model(path, safe_mode=safe_mode)
    assert not marker.exists()
    assert "evil_step_mod" not in sys.modules


def test_load_without_compiling_then_compile_again(tmp_path):
    model = build("duel")
    fit(model, "duel", epochs=1)
    model.save(tmp_path / "m.keras")
    loaded = _load(tmp_path / "m.keras", compile=False)
    assert loaded.optimizers == {}
    np.testing.assert_array_equal(
        model.predict(_latents(), verbose=0), loaded.predict(_latents(), verbose=0)
    )
    loaded.compile(optimizer={"generator": "adam", "discriminator": "adam"})
    fit(loaded, "duel", epochs=1)


def test_json_round_trip_of_the_architecture():
    model = build("duel", options={"latent_dim": 4, "label_noise": 0.25})
    rebuilt = keras.models.model_from_json(model.to_json())
    assert rebuilt.step == "duel" and rebuilt.step_options.label_noise == 0.25
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in model.weights]


# -- loading never guesses ----------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "change", "error", "match"),
    [
        ("step", "remove", StepError, r"no 'step' field"),
        ("step", None, StepError, r"'step' field is NoneType None, not a str"),
        ("step", 3, StepError, r"'step' field is int 3, not a str"),
        ("step_options", "remove", OptionsError, r"step 'duel'.*no 'step_options' field"),
        ("step_options", None, OptionsError, r"step 'duel'.*'step_options' field is null"),
        ("step_options", [1], OptionsError, r"'step_options' field is list \[1\]"),
        ("step_options_version", "remove", OptionsError, r"no 'step_options_version'"),
        ("step_options_version", None, OptionsError, r"'step_options_version' field is null"),
        ("step_options_version", "0", OptionsError, r"'step_options_version' field is '0'"),
        ("step_options_version", True, OptionsError, r"'step_options_version' field is True"),
    ],
)
def test_missing_null_or_malformed_step_fields_are_refused(
    tmp_path, field, change, error, match
):
    path = _saved_duel(tmp_path, latent_dim=3)
    config = _read_config(path)
    if change == "remove":
        del config["config"][field]
    else:
        config["config"][field] = change
    _write_config(path, config)
    with pytest.raises(error, match=match) as info:
        keras.models.load_model(path)
    # Never a message about a step the file does not name (the default).
    assert "supervised" not in str(info.value)


def test_null_options_are_not_replaced_by_the_defaults(tmp_path):
    # The options differ from the defaults (latent_dim 4), so a fallback shows.
    path = _saved_duel(tmp_path, latent_dim=3)
    config = _read_config(path)
    config["config"]["step_options"] = None
    _write_config(path, config)
    with pytest.raises(OptionsError, match="Nothing is assumed"):
        keras.models.load_model(path)


def test_a_subclass_with_its_own_config_rebuilds_its_step_itself(tmp_path):
    keras_steps.register_step(Scaled, name="scaled")
    model = OwnConfig()
    model(np.zeros((1, 8)))
    model.save(tmp_path / "m.keras")
    assert "step" not in _read_config(tmp_path / "m.keras")["config"]
    assert _load(tmp_path / "m.keras").step_options.factor == 2.0


# -- damaged files ----------------------------------------------------------------
def _cut(path, size) -> None:
    content = path.read_bytes()
    path.write_bytes(content[:size])


@pytest.mark.parametrize("size", [0, 100, 3540, -100])
def test_a_truncated_model_file_is_damaged_not_missing(tmp_path, size):
    path = _saved_duel(tmp_path)
    _cut(path, size)
    with pytest.raises(keras_steps.DamagedFileError, match=r"is damaged: it is not a complete zip"):
        keras_steps.load_model(path)
    # Keras alone says the file is not there, which is what keras_steps.load_model avoids.
    with pytest.raises(ValueError, match="File not found"):
        keras.models.load_model(path)


def test_a_zip_that_is_not_a_keras_file_is_damaged(tmp_path):
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(keras_steps.DamagedFileError, match="config.json, metadata.json"):
        keras_steps.load_model(path)


def test_a_missing_file_is_keras_s_file_not_found(tmp_path):
    with pytest.raises(ValueError, match="File not found"):
        keras_steps.load_model(tmp_path / "nothing.keras")


@pytest.mark.parametrize("size", [0, 3000, -10])
def test_truncated_weights_are_damaged(tmp_path, size):
    model = build("duel")
    path = tmp_path / "m.weights.h5"
    model.save_weights(path)
    _cut(path, size)
    with pytest.raises(keras_steps.DamagedFileError, match="not a complete HDF5 file"):
        build("duel").load_weights(path)


# -- every optimizer's state in weights-only files -----------------------------------
@pytest.mark.parametrize("kind", ["supervised", "duel"])
def test_save_weights_restores_every_optimizer_before_any_step(tmp_path, kind):
    model = build(kind)
    x = data(kind)
    model.fit(*(a[:16] for a in x), batch_size=8, epochs=1, verbose=0, shuffle=False)
    model.save_weights(tmp_path / "m.weights.h5")
    other = build(kind)  # compiled, never trained: its optimizer is not built
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other.load_weights(tmp_path / "m.weights.h5")
    assert {r: _iterations(o) for r, o in other.optimizers.items()} == {
        r: 2 for r in model.optimizers
    }
    _assert_same(weights(other), weights(model))
    # The next batch gives the same weights as in the model that never stopped.
    for m in (model, other):
        m.fit(*(a[16:24] for a in x), batch_size=8, epochs=1, verbose=0, shuffle=False)
    _assert_same(weights(other), weights(model))


def test_optimizer_state_that_does_not_fit_is_an_error(tmp_path):
    model = build("supervised")
    x, y = data("supervised")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save_weights(tmp_path / "m.weights.h5")
    other = build("supervised")
    other.compile(optimizer="sgd", loss="mse")  # 1 variable fewer per weight than Adam
    with pytest.raises(StepError, match=r"optimizer state in the file does not fit"):
        other.load_weights(tmp_path / "m.weights.h5")
    # skip_mismatch=True asks for Keras's behaviour: a warning, the rest loaded.
    with pytest.warns(UserWarning, match="Skipping variable loading for optimizer"):
        other.load_weights(tmp_path / "m.weights.h5", skip_mismatch=True)
    _assert_same(
        [v.numpy() for v in other.weights], [v.numpy() for v in model.weights]
    )


# -- atomic writes ----------------------------------------------------------------
class _Boom(Exception):
    pass


@pytest.mark.parametrize("method", ["save", "save_weights"])
def test_a_save_that_fails_half_way_leaves_the_old_file(tmp_path, monkeypatch, method):
    model = build("duel")
    path = tmp_path / ("m.keras" if method == "save" else "m.weights.h5")
    getattr(model, method)(path)
    before = path.read_bytes()
    path.chmod(0o640)
    fit(model, "duel", epochs=1)

    def explode(self, store):
        raise _Boom  # after Keras has written part of the file

    monkeypatch.setattr(StepModel, "save_own_variables", explode)
    with pytest.raises(_Boom):
        getattr(model, method)(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file
    monkeypatch.undo()
    getattr(model, method)(path)
    assert path.read_bytes() != before
    assert path.stat().st_mode & 0o777 == 0o640  # the file's permissions are kept
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_save_through_a_symlink_replaces_the_file_it_points_to(tmp_path):
    model = build("duel")
    model.save(tmp_path / "real.keras")
    (tmp_path / "link.keras").symlink_to(tmp_path / "real.keras")
    fit(model, "duel", epochs=1)
    model.save(tmp_path / "link.keras")
    assert (tmp_path / "link.keras").is_symlink()
    _assert_same(weights(_load(tmp_path / "real.keras")), weights(model))


def test_save_without_overwrite_asks_first(tmp_path, monkeypatch):
    from keras_steps import _keras_private

    model = build("duel")
    path = tmp_path / "m.keras"
    model.save(path)
    before = path.read_bytes()
    fit(model, "duel", epochs=1)
    answers = []
    monkeypatch.setattr(
        _keras_private, "ask_to_proceed_with_overwrite", lambda p: answers.append(p) or False
    )
    model.save(path, overwrite=False)
    assert answers == [str(path)] and path.read_bytes() == before


def test_paths_keras_refuses_are_refused_by_keras_naming_them(tmp_path):
    model = build("duel")
    with pytest.raises(ValueError, match=r"m\.txt"):
        model.save(tmp_path / "m.txt")
    with pytest.raises(ValueError, match=r"must end in `\.weights\.h5`.*m\.h5"):
        model.save_weights(tmp_path / "m.h5")
    with pytest.raises(OSError, match="nowhere"):
        model.save_weights(tmp_path / "nowhere" / "m.weights.h5")
    assert list(tmp_path.iterdir()) == []
