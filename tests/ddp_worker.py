"""Training runs for tests/test_distributed.py, launched under torchrun or alone.

    torchrun --nproc_per_node=2 --standalone tests/ddp_worker.py SCENARIO OUT
    python tests/ddp_worker.py SCENARIO OUT       # the one-process reference

Each run uses a global batch of 16: 8 per rank on two ranks, 16 alone, so
the two runs must end with the same weights. Every rank writes what it saw
to OUT/<name>_rank<r>.npz / .json; the test compares them.

Scenarios: ``train`` (all equivalence and bookkeeping checks), ``raise``
(rank 1 raises mid-epoch), ``hang`` (rank 1 stops answering mid-epoch),
``messages`` (arrays that differ between ranks in rows, values or arguments)
and ``exit`` (rank 1 calls ``sys.exit(0)`` mid-epoch).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np
import torch
import torch.distributed as dist
from resume_worker import Stop, StopAt

import keras_steps
from keras_steps._distributed import _overlap

keras.config.disable_traceback_filtering()
if os.environ.get("DDP_TEST_BUCKET_BYTES"):
    # The tests' networks fit in one bucket, which always starts in apply:
    # tiny buckets make the overlapped all-reduce start some during backward.
    _overlap.FIRST_BUCKET_BYTES = _overlap.BUCKET_BYTES = int(os.environ["DDP_TEST_BUCKET_BYTES"])

GLOBAL_BATCH = 16
LATENT = 3
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(".")

if os.environ.get("DDP_TEST_BACKEND") and "RANK" in os.environ:
    # scripts/ddp-gpu-check.sh: one GPU takes one NCCL rank, or two gloo ranks
    # (NCCL refuses two ranks on one device). The script initialises the group
    # itself, as a user may; StepModel uses it as it is.
    dist.init_process_group(os.environ["DDP_TEST_BACKEND"])


def rank() -> int:
    # RANK, not the process group: models are seeded before StepModel starts it.
    return int(os.environ.get("RANK", "0"))


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


BATCH = GLOBAL_BATCH // int(os.environ.get("WORLD_SIZE", "1"))


def seed_model_init():
    """A different init per rank: only fit()'s broadcast can make them agree.

    Rank 0's init equals the reference run's, which is seeded the same way.
    """
    keras.utils.set_random_seed(1 + 1000 * rank())


def save(name, model, history=None, **extra):
    arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    np.savez(OUT / f"{name}_rank{rank()}.npz", **arrays)
    record = {
        "history": history.history if history is not None else None,
        "overlap_started": overlap_started(model),
        **extra,
    }
    (OUT / f"{name}_rank{rank()}.json").write_text(json.dumps(record, default=float))


def overlap_started(model):
    """Buckets the overlapped averaging started in backward / apply / again (all optimizers)."""
    total = {"backward": 0, "apply": 0, "again": 0}
    for optimizer in getattr(model, "optimizers", {}).values():
        sync = getattr(optimizer, "_keras_steps_gradient_sync", None)
        if sync is not None and sync.overlapped is not None:
            for key, n in sync.overlapped.started.items():
                total[key] += n
    return total


class WeightTrace(keras.callbacks.Callback):
    """A checksum of every weight after every batch, to compare across ranks."""

    def __init__(self):
        super().__init__()
        self.sums = []

    def on_train_batch_end(self, batch, logs=None):
        self.sums.append(
            float(sum(np.asarray(w, dtype="float64").sum() for w in self.model.weights))
        )


class SamplerEpochs(keras.callbacks.Callback):
    """Every ``set_epoch`` call on a DistributedSampler, and its epoch at each epoch's start."""

    def __init__(self, sampler):
        super().__init__()
        self.sampler, self.calls, self.first = sampler, [], []
        if sampler is not None:
            original = sampler.set_epoch

            def recording(epoch):
                self.calls.append(epoch)
                original(epoch)

            sampler.set_epoch = recording

    def on_train_batch_begin(self, batch, logs=None):
        # The first batch is already read: the sampler's epoch is the one used.
        if batch == 0 and self.sampler is not None:
            self.first.append(self.sampler.epoch)


# -- supervised: Keras's own train_step -------------------------------------------------
def supervised():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(62, 5)).astype("float32")
    y = (x @ rng.normal(size=(5, 2)) + 0.1).astype("float32")
    weights = rng.uniform(0.5, 1.5, size=(62,)).astype("float32")
    # 17 rows: rank 0 evaluates 9 in 2 batches, rank 1 8 in 1 batch.
    x_val = rng.normal(size=(17, 5)).astype("float32")
    y_val = (x_val @ rng.normal(size=(5, 2))).astype("float32")

    seed_model_init()
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    model = keras_steps.StepModel(inputs, keras.layers.Dense(2)(hidden))
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss="mse", metrics=["mae"])
    if world() > 1:
        # Unseeded data: each rank would shard its own, different arrays.
        try:
            model.fit(x + rank(), y, batch_size=BATCH, verbose=0)
            refused = ""
        except keras_steps.DistributedError as err:
            refused = str(err)
        (OUT / f"refused_rank{rank()}.txt").write_text(refused)
    trace = WeightTrace()
    callbacks = [
        trace,
        keras.callbacks.ModelCheckpoint(
            str(OUT / f"ckpt_rank{rank()}.weights.h5"), save_weights_only=True
        ),
        keras.callbacks.CSVLogger(str(OUT / f"log_rank{rank()}.csv")),
        keras_steps.callbacks.TensorBoard(OUT / f"tensorboard_rank{rank()}"),
    ]
    history = model.fit(
        x,
        y,
        sample_weight=weights,
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        validation_data=(x_val, y_val),
        callbacks=callbacks,
        verbose=2,
    )
    evaluated = model.evaluate(x_val, y_val, batch_size=BATCH, return_dict=True, verbose=0)
    # predict is not sharded: every rank gets every row.
    predicted = model.predict(x_val, batch_size=BATCH, verbose=0)
    save(
        "supervised",
        model,
        history,
        trace=trace.sums,
        evaluate=evaluated,
        predict_rows=len(predicted),
    )

    # The same data through a DataLoader with a DistributedSampler.
    seed_model_init()
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    loader_model = keras_steps.StepModel(inputs, keras.layers.Dense(2)(hidden))
    loader_model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x[:48]), torch.from_numpy(y[:48]))
    sampler = None
    if world() > 1:
        sampler = torch.utils.data.DistributedSampler(dataset, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, sampler=sampler)
    epochs = SamplerEpochs(sampler)
    loader_model.fit(loader, epochs=2, verbose=0, callbacks=[epochs])
    save("loader", loader_model, sampler_calls=epochs.calls, sampler_at_first_batch=epochs.first)

    # Reference for the loader: the same 48 rows as arrays.
    seed_model_init()
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    array_model = keras_steps.StepModel(inputs, keras.layers.Dense(2)(hidden))
    array_model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    array_model.fit(x[:48], y[:48], batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    save("arrays48", array_model)

    # A DataLoader without a DistributedSampler would feed every rank the same rows.
    plain = torch.utils.data.DataLoader(dataset, batch_size=BATCH)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        array_model.fit(plain, epochs=1, steps_per_epoch=1, verbose=0)
    (OUT / f"loader_warning_rank{rank()}.txt").write_text(
        "\n".join(str(w.message) for w in caught if "DistributedSampler" in str(w.message))
    )


# -- mixed precision: a LossScaleOptimizer around the averaged gradients -----------------
def mixed_precision():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(48, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 1))).astype("float32")
    keras.config.set_dtype_policy("mixed_float16")
    try:
        seed_model_init()
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(8, activation="tanh")(inputs)
        model = keras_steps.StepModel(inputs, keras.layers.Dense(1, dtype="float32")(hidden))
        model.compile(keras.optimizers.SGD(0.05), loss="mse")
        trace = WeightTrace()
        history = model.fit(
            x, y, batch_size=BATCH, epochs=2, shuffle=False, callbacks=[trace], verbose=0
        )
        scale = float(np.asarray(model.optimizer.dynamic_scale))
        save("mixed", model, history, trace=trace.sums, loss_scale=scale)
    finally:
        keras.config.set_dtype_policy("float32")


# -- the catalog's multi-network steps ----------------------------------------------
def _gan_networks():
    generator = keras.Sequential(
        [keras.Input((LATENT,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(4)]
    )
    discriminator = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
    )
    return generator, discriminator


def _sgd():
    return keras.optimizers.SGD(0.02, momentum=0.5)


def gans():
    """The real ``gan`` and ``wgan-gp`` steps: latents and label noise from batch_random."""
    rng = np.random.default_rng(1)
    images = rng.normal(1.0, 0.5, size=(64, 4)).astype("float32")
    # 32 rows: 2 batches of 8 per rank, 2 of 16 alone, so the evaluation
    # stream's latents line up too.
    val_images = rng.normal(1.0, 0.5, size=(32, 4)).astype("float32")
    cases = (
        ("gan", "gan", "discriminator", {"latent_dim": LATENT, "d_steps": 2}),
        ("wgan_gp", "wgan-gp", "critic", {"latent_dim": LATENT, "d_steps": 2}),
    )
    for name, step, second, options in cases:
        seed_model_init()
        generator, other = _gan_networks()
        model = keras_steps.StepModel(
            models={"generator": generator, second: other}, step=step, step_options=options
        )
        model.compile(optimizer={"generator": _sgd(), second: _sgd()})
        trace = WeightTrace()
        history = model.fit(
            images,
            batch_size=BATCH,
            epochs=2,
            shuffle=False,
            validation_data=(val_images,),
            callbacks=[trace],
            verbose=0,
        )
        save(name, model, history, trace=trace.sums)


def vae():
    """The real ``vae`` step: the reparameterisation noise from batch_random."""
    x = np.random.default_rng(6).uniform(size=(48, 6)).astype("float32")
    seed_model_init()
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    encoder = keras.Model(inputs, [keras.layers.Dense(2)(hidden), keras.layers.Dense(2)(hidden)])
    decoder = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(6)]
    )
    model = keras_steps.StepModel(
        models={"encoder": encoder, "decoder": decoder},
        step="vae",
        step_options={"reconstruction": "mse", "seed": 3},
    )
    model.compile(_sgd())
    trace = WeightTrace()
    history = model.fit(x, batch_size=BATCH, epochs=2, shuffle=False, callbacks=[trace], verbose=0)
    save("vae", model, history, trace=trace.sums)


def adversarial():
    """The real ``adversarial`` step: PGD's random starts from batch_random."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(48, 5)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    seed_model_init()
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    model = keras_steps.StepModel(
        inputs,
        keras.layers.Dense(2)(hidden),
        step="adversarial",
        step_options={"epsilon": 0.3, "step_size": 0.1, "n_steps": 2, "seed": 5},
    )
    model.compile(
        _sgd(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    trace = WeightTrace()
    history = model.fit(
        x, y, batch_size=BATCH, epochs=2, shuffle=False, callbacks=[trace], verbose=0
    )
    save("adversarial", model, history, trace=trace.sums)


def sam_and_mixup():
    """The real ``sam`` and ``mixup`` steps: per-rank by design, but ranks stay equal.

    SAM perturbs along each rank's own gradient (m-sharpness); MixUp and
    CutMix pair examples within each rank's batch. Neither equals one
    process with twice the batch, but the update that is applied is averaged,
    so every rank must hold the same weights after every step.
    """
    rng = np.random.default_rng(9)
    images = rng.normal(size=(48, 4, 4, 1)).astype("float32")
    labels = (images.mean(axis=(1, 2, 3)) > 0).astype("int64")
    cases = (
        ("sam", "sam", {"rho": 0.05}),
        ("mixup", "mixup", {"mode": "mixup", "seed": 3}),
        ("cutmix", "mixup", {"mode": "cutmix", "seed": 3}),
    )
    for name, step, options in cases:
        seed_model_init()
        inputs = keras.Input((4, 4, 1))
        hidden = keras.layers.Dense(8, activation="tanh")(keras.layers.Flatten()(inputs))
        model = keras_steps.StepModel(
            inputs, keras.layers.Dense(2)(hidden), step=step, step_options=options
        )
        # MixUp mixes the targets: one-hot ones.
        if step == "mixup":
            targets = keras.utils.to_categorical(labels, 2)
            loss = keras.losses.CategoricalCrossentropy(from_logits=True)
        else:
            targets, loss = labels, keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(_sgd(), loss=loss, metrics=["accuracy"])
        # Loss on the clean data: the steps' own training losses are of mixed
        # or perturbed batches. Before training only for one process, whose
        # init is rank 0's.
        initial = model.evaluate(images, targets, verbose=0) if world() == 1 else None
        trace = WeightTrace()
        history = model.fit(
            images, targets, batch_size=BATCH, epochs=8, shuffle=False,
            callbacks=[trace], verbose=0,
        )
        final = model.evaluate(images, targets, verbose=0)
        save(name, model, history, trace=trace.sums, initial=initial, final=final)


class CollectiveSizes(keras.callbacks.Callback):
    """Sizes of the all-reduces made inside training steps."""

    def __init__(self):
        super().__init__()
        self.sizes, self._on = [], False
        original = dist.all_reduce

        def recording(tensor, *args, **kwargs):
            if self._on:
                self.sizes.append(tensor.numel())
            return original(tensor, *args, **kwargs)

        dist.all_reduce = recording

    def on_train_batch_begin(self, batch, logs=None):
        self._on = True

    def on_train_batch_end(self, batch, logs=None):
        self._on = False


def distillation():
    """The real ``distillation`` step: a frozen teacher, a student with or without BatchNorm."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(48, 6)).astype("float32")
    y = rng.integers(0, 3, size=(48,))
    for name, batch_norm in (("distill", True), ("distill_plain", False)):
        seed_model_init()
        # BatchNorm in the teacher too: frozen, its statistics must stay out
        # of the per-step averaging.
        teacher = keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(7),
                keras.layers.BatchNormalization(),
                keras.layers.Dense(3),
            ]
        )
        middle = [keras.layers.BatchNormalization()] if batch_norm else []
        student = keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(4), *middle, keras.layers.Dense(3)]
        )
        model = keras_steps.StepModel(
            models={"student": student, "teacher": teacher},
            step="distillation",
            step_options={"alpha": 0.3, "temperature": 2.0},
        )
        model.compile(
            keras.optimizers.SGD(0.05),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        # Rank 0's teacher, as fit()'s broadcast gives it to every rank.
        teacher_before = [np.asarray(w) for w in teacher.weights]
        sizes = CollectiveSizes() if world() > 1 else None
        trace = WeightTrace()
        history = model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=1,
            shuffle=False,
            callbacks=[trace] + ([sizes] if sizes else []),
            verbose=0,
        )
        trainable = student.trainable_weights
        bn = student.layers[1] if batch_norm else None
        save(
            name,
            model,
            history,
            trace=trace.sums,
            step_sizes=sizes.sizes if sizes else [],
            grad_size=sum(int(np.prod(v.shape)) for v in trainable) + len(trainable),
            bn_size=sum(int(np.prod(v.shape)) for v in bn.non_trainable_weights) if bn else 0,
            teacher_size=sum(int(np.prod(v.shape)) for v in teacher.weights),
            teacher_unchanged=all(
                np.array_equal(a, np.asarray(w)) for a, w in zip(teacher_before, teacher.weights)
            ),
        )


# -- BackupAndRestore: rank 0 restores, every rank resumes -------------------------------
def resume():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    backup = OUT / "backup"

    def build():
        seed_model_init()
        inputs = keras.Input((3,))
        model = keras_steps.StepModel(inputs, keras.layers.Dense(1)(inputs))
        model.compile(keras.optimizers.SGD(0.1), loss="mse")
        return model

    first = build()
    restore = keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False)
    first.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, callbacks=[restore], verbose=0)
    # A fresh model, initialised differently on each rank, picks up after epoch 1.
    second = build()
    restore = keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False)
    history = second.fit(
        x, y, batch_size=BATCH, epochs=3, shuffle=False, callbacks=[restore], verbose=0
    )
    save("resume", second, history, backup_written=backup.exists())


def resume_fused():
    """Fused steps, interrupted in mid-epoch, resumed from rank 0's backup.

    4 batches per epoch in groups of 2: backups after batches 1 and 3. The
    run stops after batch 3 of epoch 1, before that batch's backup (the
    interruption comes first), so it resumes after batch 1 of epoch 1. Only
    rank 0 writes backups.
    """
    rng = np.random.default_rng(6)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")).astype("float32")
    # A folder per rank, as on machines that do not share a disk: rank 1 never
    # sees rank 0's backup and must take its resume position from rank 0.
    backup = OUT / f"backup_fused_rank{rank()}"

    def build():
        seed_model_init()
        inputs = keras.Input((3,))
        model = keras_steps.StepModel(inputs, keras.layers.Dense(1)(inputs))
        model.compile(keras.optimizers.SGD(0.05), loss="mse", steps_per_execution=2)
        return model

    def run(model, *callbacks):
        callbacks = [*callbacks, keras.callbacks.BackupAndRestore(str(backup), save_freq=2)]
        return model.fit(
            x, y, batch_size=BATCH, epochs=3, shuffle=False, callbacks=callbacks, verbose=0
        )

    with contextlib.suppress(Stop):
        run(build(), StopAt(1, 3))
    history = run(build())  # a fresh model, initialised differently on each rank
    save("resume_fused", history.model, history)


# -- what Keras's torch trainer may also do (3.16: DDP, metric all-reduce, sharding) ----
class SeenExamples(keras.metrics.Metric):
    """How many times each example was trained on this epoch (ids in y[:, 1]).

    Its one variable is summed over ranks once per epoch, so over all ranks
    every count is 1: a count of 2 means the metric was reduced twice (or the
    data not sharded), a count of 0 that the data was sharded twice.
    """

    def __init__(self, examples, name="seen", **kwargs):
        super().__init__(name=name, **kwargs)
        self.examples = examples
        self.counts = self.add_variable(
            (examples,), initializer="zeros", name="counts", aggregation="sum"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        ids = keras.ops.cast(y_true[:, 1], "int32")
        self.counts.assign_add(keras.ops.sum(keras.ops.one_hot(ids, self.examples), axis=0))

    def result(self):
        counts = self.counts.value
        return {
            "seen_min": keras.ops.min(counts),
            "seen_max": keras.ops.max(counts),
            "seen_total": keras.ops.sum(counts),
        }

    def reset_state(self):
        self.counts.assign(keras.ops.zeros_like(self.counts.value))


def _first_column_mse(y_true, y_pred):
    return keras.ops.mean(keras.ops.square(y_true[:, :1] - y_pred), axis=-1)


def trainer_mechanisms():
    """Each example once per epoch, metrics reduced once, the model wrapped by nobody.

    48 rows, global batch 16, 2 epochs: as arrays, as arrays in fused
    executions (steps_per_execution=3, a whole epoch), and through a
    DataLoader with a DistributedSampler.
    """
    import gc

    rng = np.random.default_rng(7)
    n = 48
    x = rng.normal(size=(n, 3)).astype("float32")
    target = x @ np.array([[0.5], [-1.0], [2.0]], dtype="float32")
    y = np.concatenate([target, np.arange(n, dtype="float32")[:, None]], axis=1)

    def build(steps_per_execution=1):
        seed_model_init()
        inputs = keras.Input((3,))
        model = keras_steps.StepModel(inputs, keras.layers.Dense(1)(inputs))
        model.compile(
            keras.optimizers.SGD(0.05),
            loss=_first_column_mse,
            metrics=[SeenExamples(n)],
            steps_per_execution=steps_per_execution,
        )
        return model

    def record(name, model, history):
        ddp = torch.nn.parallel.DistributedDataParallel
        save(
            name,
            model,
            history,
            # Keras >= 3.16 keeps its wrapper here; None or absent: not wrapped.
            ddp_model=repr(getattr(model, "ddp_model", "absent")),
            ddp_instances=sum(isinstance(o, ddp) for o in gc.get_objects()),
        )

    model = build()
    history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    record("counted_arrays", model, history)

    model = build(steps_per_execution=3)
    history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    record("counted_fused", model, history)

    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    sampler = torch.utils.data.DistributedSampler(dataset, shuffle=False) if world() > 1 else None
    model = build()
    history = model.fit(
        torch.utils.data.DataLoader(dataset, batch_size=BATCH, sampler=sampler),
        epochs=2,
        verbose=0,
    )
    record("counted_loader", model, history)


# -- failures ------------------------------------------------------------------------
class Misbehave(keras.callbacks.Callback):
    def __init__(self, how):
        super().__init__()
        self.how = how

    def on_train_batch_begin(self, batch, logs=None):
        if rank() == 1 and batch == 2:
            if self.how == "raise":
                raise RuntimeError("deliberate failure on rank 1 at batch 2")
            print("rank 1 stops answering at batch 2", flush=True)
            time.sleep(600)


class Leave(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if rank() == 1 and batch == 2:
            sys.exit(0)


def leaving():
    x = np.random.default_rng(4).normal(size=(64, 3)).astype("float32")
    inputs = keras.Input((3,))
    model = keras_steps.StepModel(inputs, keras.layers.Dense(1)(inputs))
    model.compile("sgd", loss="mse")
    model.fit(x, x[:, :1], batch_size=BATCH, epochs=2, callbacks=[Leave()], verbose=0)
    print(f"rank {rank()} finished training", flush=True)


def messages():
    """Each refusal's message, per rank, in OUT/message_<case>_rank<r>.txt."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    inputs = keras.Input((3,))
    model = keras_steps.StepModel(inputs, keras.layers.Dense(1)(inputs))
    model.compile("sgd", loss="mse")
    cases = {
        # x loses 2 rows on rank 1; y keeps its 32.
        "rows": lambda: model.fit(x[: 32 - 2 * rank()], y, batch_size=BATCH, verbose=0),
        # The same rows, other values on rank 1 (an unseeded draw).
        "values": lambda: model.fit(x, y + rank(), batch_size=BATCH, verbose=0),
        "dtype": lambda: model.fit(
            x, y.astype("float64") if rank() else y, batch_size=BATCH, verbose=0
        ),
        # sample_weight on rank 1 only.
        "arguments": lambda: model.fit(
            x, y, sample_weight=np.ones(32) if rank() else None, batch_size=BATCH, verbose=0
        ),
        "evaluate": lambda: model.evaluate(x, y + rank(), batch_size=BATCH, verbose=0),
    }
    for case, run in cases.items():
        try:
            run()
            message = ""
        except keras_steps.DistributedError as err:
            message = str(err)
        (OUT / f"message_{case}_rank{rank()}.txt").write_text(message)


def failing(how):
    x = np.random.default_rng(4).normal(size=(64, 3)).astype("float32")
    inputs = keras.Input((3,))
    model = keras_steps.StepModel(inputs, keras.layers.Dense(1)(inputs))
    model.compile("sgd", loss="mse")
    model.fit(x, x[:, :1], batch_size=BATCH, epochs=1, callbacks=[Misbehave(how)], verbose=0)
    print(f"rank {rank()} finished training", flush=True)


if __name__ == "__main__":
    scenario = sys.argv[1]
    OUT.mkdir(parents=True, exist_ok=True)
    if scenario == "train":
        supervised()
        mixed_precision()
        gans()
        vae()
        adversarial()
        sam_and_mixup()
        distillation()
        resume()
        resume_fused()
        trainer_mechanisms()
    elif scenario in ("raise", "hang"):
        failing(scenario)
    elif scenario == "exit":
        leaving()
    elif scenario == "messages":
        messages()
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    print(f"rank {rank()} done", flush=True)
