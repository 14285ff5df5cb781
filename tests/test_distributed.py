"""Data-parallel fit() under torchrun: 2 CPU ranks with gloo against 1 process.

The slow tests launch ``torchrun --nproc_per_node=2 --standalone`` on
tests/ddp_worker.py (global batch 16: 8 per rank) and compare with the same
script run as one process (batch 16): Keras's own step and the catalog's
real ``gan``, ``wgan-gp``, ``vae``, ``adversarial`` and ``distillation``
steps; ``sam`` and ``mixup``, per-rank by design, are checked for equal ranks
and for training. The fast ones check the helpers alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import torch

import keras_steps
from keras_steps import _distributed

WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(KERAS_BACKEND="torch", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _run(command, timeout=240, **env):
    done = subprocess.run(command, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 2-rank run and one 1-process run of every training scenario."""
    ref, ddp = tmp_path_factory.mktemp("one_process"), tmp_path_factory.mktemp("two_ranks")
    code, out = _run([sys.executable, str(WORKER), "train", str(ref)])
    assert code == 0, out[-4000:]
    code, out = _run([*TORCHRUN, str(WORKER), "train", str(ddp)])
    assert code == 0, out[-4000:]
    return ref, ddp, out


def _weights(folder, name, rank=0):
    with np.load(folder / f"{name}_rank{rank}.npz") as data:
        return [data[f"w{i}"] for i in range(len(data.files))]


def _record(folder, name, rank=0):
    return json.loads((folder / f"{name}_rank{rank}.json").read_text())


# -- slow: under torchrun ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "supervised", "loader", "gan", "wgan_gp", "vae", "adversarial", "distill_plain",
        "resume", "resume_fused", "counted_arrays", "counted_fused", "counted_loader",
    ],
)
def test_two_ranks_train_like_one_process_with_twice_the_batch(runs, name):
    ref, ddp, _ = runs
    expected = _weights(ref, name)
    rank0, rank1 = _weights(ddp, name, 0), _weights(ddp, name, 1)
    # Each rank started from its own random init: only the broadcast from
    # rank 0 and averaged gradients make them end equal. The catalog's steps
    # (gan, wgan_gp, vae, adversarial) match one process only because they
    # draw their noise with batch_random: drawn per rank, gan, wgan_gp and
    # vae end up to 8e-2 apart.
    for a, b in zip(rank0, rank1, strict=True):
        np.testing.assert_array_equal(a, b)
    for got, want in zip(rank0, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def overlapped(runs, tmp_path_factory):
    """The 2-rank run again, all-reduced during backward() in 16-byte buckets (~1 per tensor)."""
    out = tmp_path_factory.mktemp("two_ranks_overlapped")
    code, log = _run(
        [*TORCHRUN, str(WORKER), "train", str(out)], timeout=600,
        KERAS_STEPS_OVERLAP_GRADIENTS="1", DDP_TEST_BUCKET_BYTES="16",
    )
    assert code == 0, log[-4000:]
    return runs[0], runs[1], out


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "supervised", "loader", "mixed", "gan", "wgan_gp", "vae", "adversarial", "distill",
        "distill_plain", "sam", "mixup", "cutmix", "resume", "resume_fused",
    ],
)
def test_overlapped_all_reduce_trains_exactly_as_after_backward(overlapped, name):
    _, after, over = overlapped
    # Each element summed over the same 2 ranks either way: bitwise equal,
    # and so equal to one process wherever the default path is.
    for rank in (0, 1):
        for got, want in zip(_weights(over, name, rank), _weights(after, name, rank), strict=True):
            np.testing.assert_array_equal(got, want)
    started = _record(over, name)["overlap_started"]
    # resume's Dense(3 -> 1) is 16 bytes, one bucket, which always starts in apply.
    assert started["backward"] > 0 or name.startswith("resume"), started
    assert started["again"] == 0, started


@pytest.mark.slow
def test_overlapped_all_reduce_handles_every_way_to_get_gradients(tmp_path):
    code, out = _run(
        [*TORCHRUN, str(WORKER.with_name("overlap_worker.py")), str(tmp_path)], timeout=240
    )
    assert code == 0, out[-4000:]
    ranks = [_record(tmp_path, "overlap", r) for r in (0, 1)]
    for case in ranks[0]:
        for r in ranks:
            assert r[case]["diff"] == 0.0, case  # bitwise the after-backward result
            assert r[case]["buckets"] == 3
        assert ranks[0][case]["weights"] == ranks[1][case]["weights"], case
    first, other = ranks
    # Hooks start all but the last bucket during backward() from the second update.
    assert first["backward"]["started"] == {"backward": 4, "apply": 2, "again": 0}
    # torch.autograd.grad writes no .grad: every bucket starts in apply.
    assert first["autograd_grad"]["started"] == {"backward": 0, "apply": 6, "again": 0}
    # Rank 1 has no gradient for the first bucket's head: nothing starts early
    # there, yet both ranks meet in the same collectives.
    assert other["none_on_rank_1"]["started"] == {"backward": 0, "apply": 6, "again": 0}
    assert first["none_on_rank_1"]["started"]["backward"] == 4
    # A second backward() into sent buckets, or an edit in place on rank 0
    # only, has every rank all-reduce those buckets again.
    # A backward() outside fit's train function (rank 0 only) starts nothing.
    for r in ranks:
        assert r["backward_outside_fit"]["started"] == first["backward"]["started"]
    for r in ranks:
        assert r["twice"]["started"]["again"] == 4
        assert r["edited"]["started"]["again"] == 2
        assert r["subset"]["started"]["again"] == 0


@pytest.mark.slow
def test_mixed_precision_averages_before_the_loss_scale_optimizer(runs):
    ref, ddp, _ = runs
    # float16 sums over 8 rows per rank differ from sums over 16: a looser match.
    for got, want in zip(_weights(ddp, "mixed"), _weights(ref, "mixed"), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    assert _record(ddp, "mixed", 0)["loss_scale"] == _record(ddp, "mixed", 1)["loss_scale"]
    assert _record(ddp, "mixed", 0)["loss_scale"] == _record(ref, "mixed")["loss_scale"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "supervised", "mixed", "gan", "wgan_gp", "vae", "adversarial", "distill",
        "distill_plain", "sam", "mixup", "cutmix",
    ],
)
def test_ranks_hold_the_same_weights_after_every_step(runs, name):
    _, ddp, _ = runs
    trace0, trace1 = _record(ddp, name, 0)["trace"], _record(ddp, name, 1)["trace"]
    assert len(trace0) >= 3
    assert trace0 == trace1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sam", "mixup", "cutmix"])
def test_per_rank_steps_train_and_end_equal_on_every_rank(runs, name):
    """sam and mixup differ from one process by design (docs), but they train
    and every rank ends with the same weights."""
    ref, ddp, _ = runs
    for a, b in zip(_weights(ddp, name, 0), _weights(ddp, name, 1), strict=True):
        np.testing.assert_array_equal(a, b)
    # [loss, accuracy] on the clean data, from rank 0's (the one process's) init.
    initial = _record(ref, name)["initial"][0]
    for folder in (ref, ddp):
        assert _record(folder, name)["final"][0] < 0.8 * initial, (folder.name, initial)


@pytest.mark.slow
def test_history_and_evaluate_cover_all_ranks(runs):
    ref, ddp, _ = runs
    want = _record(ref, "supervised")
    for rank in (0, 1):
        got = _record(ddp, "supervised", rank)
        for key, values in want["history"].items():
            np.testing.assert_allclose(got["history"][key], values, rtol=1e-5, err_msg=key)
        # 17 validation rows: 9 (2 batches) on rank 0, 8 (1 batch) on rank 1.
        for key, value in want["evaluate"].items():
            assert got["evaluate"][key] == pytest.approx(value, rel=1e-5), key
        assert got["predict_rows"] == 17


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gan", "wgan_gp", "vae", "adversarial", "distill_plain"])
def test_catalog_steps_report_the_losses_of_one_process(runs, name):
    """Every metric of every epoch, training and (gan, wgan_gp) validation."""
    ref, ddp, _ = runs
    want = _record(ref, name)["history"]
    assert want["d_loss" if name in ("gan", "wgan_gp") else "loss"]
    for rank in (0, 1):
        got = _record(ddp, name, rank)["history"]
        assert set(got) == set(want)
        for key, values in want.items():
            np.testing.assert_allclose(
                got[key], values, rtol=1e-5, atol=1e-6, err_msg=f"{name} {key} rank {rank}"
            )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["counted_arrays", "counted_fused", "counted_loader"])
def test_each_example_counts_once_per_epoch_over_all_ranks(runs, name):
    """Data is sharded once and metrics are reduced once, on every Keras version.

    Keras 3.16's torch trainer all-reduces metric variables itself and its
    adapters can shard data: keras-steps switches both off (docs/distributed.md).
    A metric reduced twice counts every example twice; data sharded twice
    leaves examples uncounted. The counts match one process with the global batch.
    """
    ref, ddp, _ = runs
    assert _record(ref, name)["history"]["seen_max"] == [1.0, 1.0]
    for rank in (0, 1):
        history = _record(ddp, name, rank)["history"]
        assert history["seen_min"] == [1.0, 1.0], rank
        assert history["seen_max"] == [1.0, 1.0], rank
        assert history["seen_total"] == [48.0, 48.0], rank
        for key, values in _record(ref, name)["history"].items():
            np.testing.assert_allclose(history[key], values, rtol=1e-5, err_msg=key)


@pytest.mark.slow
def test_nobody_wraps_the_model_in_distributed_data_parallel(runs):
    """keras-steps averages gradients in optimizer.apply; Keras 3.16's own
    DDP wrapper (``model.ddp_model``) is switched off, so nothing averages twice."""
    _, ddp, _ = runs
    for name in ("counted_arrays", "counted_fused", "counted_loader"):
        for rank in (0, 1):
            record = _record(ddp, name, rank)
            assert record["ddp_model"] in ("None", "'absent'"), (name, rank)
            assert record["ddp_instances"] == 0, (name, rank)


@pytest.mark.slow
def test_only_rank_zero_prints_and_writes_files(runs):
    _, ddp, out = runs
    assert (ddp / "ckpt_rank0.weights.h5").exists()
    assert (ddp / "log_rank0.csv").exists()
    assert not (ddp / "ckpt_rank1.weights.h5").exists()
    assert not (ddp / "log_rank1.csv").exists()
    assert list((ddp / "tensorboard_rank0" / "validation").glob("events.out.tfevents.*"))
    assert not (ddp / "tensorboard_rank1").exists()
    assert out.count("Epoch 1/2") == 1
    # BackupAndRestore: rank 0 kept the backup and every rank resumed at epoch 2.
    for rank in (0, 1):
        assert len(_record(ddp, "resume", rank)["history"]["loss"]) == 2


@pytest.mark.slow
def test_arrays_that_differ_between_ranks_are_refused(runs):
    _, ddp, _ = runs
    for rank in (0, 1):
        message = (ddp / f"refused_rank{rank}.txt").read_text()
        assert f"rank {rank} of 2: the training arrays differ between ranks" in message
        assert "every rank must pass the same ones" in message


@pytest.mark.slow
def test_data_loaders_need_a_distributed_sampler(runs):
    _, ddp, _ = runs
    # The sampler is moved on once per epoch (by keras-steps before Keras
    # 3.16, by Keras's adapter from 3.16 on, never by both), the same way on
    # every rank, so each epoch reads another shuffle of every example.
    records = [_record(ddp, "loader", rank) for rank in (0, 1)]
    assert records[0]["sampler_calls"] == records[1]["sampler_calls"]
    first = records[0]["sampler_at_first_batch"]
    assert first == records[1]["sampler_at_first_batch"]
    assert len(first) == 2 and first[0] < first[1]
    assert len(records[0]["sampler_calls"]) <= 3  # one per epoch (+ Keras 3.16's at the start)
    for rank in (0, 1):
        warning = (ddp / f"loader_warning_rank{rank}.txt").read_text()
        assert "DistributedSampler" in warning and "same samples" in warning


@pytest.mark.slow
@pytest.mark.parametrize("name", ["distill", "distill_plain"])
def test_frozen_teacher_is_never_synchronised(runs, name):
    _, ddp, _ = runs
    record = _record(ddp, name, 0)
    # Per step: one all-reduce of the student's gradients (plus one flag per
    # variable) and, with BatchNorm, one of its statistics; nothing of the
    # teacher, whose own BatchNorm statistics stay out.
    steps = len(record["trace"])
    per_step = [record["grad_size"]] + ([record["bn_size"]] if record["bn_size"] else [])
    assert steps == 3
    assert record["step_sizes"] == per_step * steps
    assert record["teacher_size"] not in record["step_sizes"]
    assert record["teacher_unchanged"]
    for a, b in zip(_weights(ddp, name, 0), _weights(ddp, name, 1), strict=True):
        np.testing.assert_array_equal(a, b)  # BatchNorm moving statistics included


@pytest.mark.slow
@pytest.mark.parametrize(
    "how, expected",
    [
        # torchrun reports the failed rank; rank 0 loses its peer mid all-reduce.
        (
            "raise",
            [
                "deliberate failure on rank 1 at batch 2",
                "Rank 1 left: its process exited during fit() in epoch 1, after 2 batch(es)",
            ],
        ),
        # Nobody exits: only the process group's timeout ends rank 0's wait.
        (
            "hang",
            [
                "rank 1 stops answering",
                "DistributedError: keras_steps, rank 0 of 2: all-reduce of gradients failed",
                "took longer than 10 s (KERAS_STEPS_DIST_TIMEOUT)",
                "Rank 1 left no word of leaving: it hangs",
            ],
        ),
    ],
)
def test_a_failing_rank_ends_the_run_with_an_error(tmp_path, how, expected):
    # subprocess's timeout turns a hang of the whole run into a failure.
    code, out = _run(
        [*TORCHRUN, str(WORKER), how, str(tmp_path)], timeout=150, KERAS_STEPS_DIST_TIMEOUT="10"
    )
    assert code != 0
    for text in expected:
        assert text in out
    assert "finished training" not in out


# -- fast: one process ----------------------------------------------------------------------
def test_one_process_is_not_distributed():
    assert not _distributed.is_active()
    assert (_distributed.rank(), _distributed.world_size()) == (0, 1)
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    inputs = keras.Input((3,))
    model = keras_steps.StepModel(inputs, keras.layers.Dense(1)(inputs))
    model.compile("sgd", loss="mse")
    history = model.fit(x, x[:, :1], batch_size=8, epochs=2, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]
    assert not hasattr(model.optimizer, "_keras_steps_averages_gradients")


def test_batch_random_is_the_plain_draw_on_one_process():
    seed_a, seed_b = keras.random.SeedGenerator(3), keras.random.SeedGenerator(3)
    got = keras_steps.batch_random(keras.random.normal, (4, 2), seed=seed_a, stddev=2.0)
    want = keras.random.normal((4, 2), seed=seed_b, stddev=2.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want))


@pytest.mark.parametrize("blocks", [1, 2])
def test_batch_random_rows_of_all_ranks_make_the_global_draw(monkeypatch, blocks):
    world, per_rank = 3, 4
    global_draw = keras.ops.convert_to_numpy(
        keras.random.uniform((blocks * world * per_rank, 2), seed=keras.random.SeedGenerator(5))
    )
    monkeypatch.setattr(_distributed._group, "world_size", lambda: world)
    parts = []
    for r in range(world):
        monkeypatch.setattr(_distributed._group, "rank", lambda r=r: r)
        parts.append(
            keras.ops.convert_to_numpy(
                keras_steps.batch_random(
                    keras.random.uniform,
                    (blocks * per_rank, 2),
                    seed=keras.random.SeedGenerator(5),
                    blocks=blocks,
                )
            )
        )
    # Rank r's row j of block b is global row j * world + r of that block,
    # as arrays are sharded (x[r::world]) and DistributedSampler splits.
    for b in range(blocks):
        block = global_draw[b * world * per_rank : (b + 1) * world * per_rank]
        for r in range(world):
            np.testing.assert_array_equal(
                parts[r][b * per_rank : (b + 1) * per_rank], block[r::world]
            )


def test_batch_random_rejects_a_batch_not_made_of_blocks():
    with pytest.raises(keras_steps.StepError, match="multiple of blocks=2"):
        keras_steps.batch_random(keras.random.normal, (5, 2), seed=1, blocks=2)


def test_shards_split_rows_like_a_distributed_sampler(monkeypatch):
    monkeypatch.setattr(_distributed._group, "world_size", lambda: 2)
    monkeypatch.setattr(_distributed._group, "rank", lambda: 1)
    x, y = np.arange(7), {"a": torch.arange(7)}
    sx, sy, sw = _distributed._data.shard((x, y, None), drop_remainder=True)
    np.testing.assert_array_equal(sx, [1, 3, 5])
    assert sy["a"].tolist() == [1, 3, 5]
    assert sw is None
    np.testing.assert_array_equal(_distributed._data.shard(x, drop_remainder=False), [1, 3, 5])
    monkeypatch.setattr(_distributed._group, "rank", lambda: 0)
    np.testing.assert_array_equal(_distributed._data.shard(x, drop_remainder=False), [0, 2, 4, 6])
    np.testing.assert_array_equal(_distributed._data.shard(x, drop_remainder=True), [0, 2, 4])


@pytest.mark.parametrize("value, expected", [(None, False), ("0", False), ("1", True)])
def test_overlap_is_asked_for_with_an_environment_variable(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(_distributed.OVERLAP_ENV, raising=False)
    else:
        monkeypatch.setenv(_distributed.OVERLAP_ENV, value)
    assert _distributed.overlap_requested() is expected


def test_a_bad_overlap_setting_is_refused(monkeypatch):
    monkeypatch.setenv(_distributed.OVERLAP_ENV, "yes")
    expected = "KERAS_STEPS_OVERLAP_GRADIENTS is 'yes'"
    with pytest.raises(keras_steps.DistributedError, match=expected):
        _distributed.overlap_requested()


def test_a_bad_timeout_is_refused(monkeypatch):
    monkeypatch.setenv(_distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(keras_steps.DistributedError, match="KERAS_STEPS_DIST_TIMEOUT"):
        _distributed._group._timeout_s()
