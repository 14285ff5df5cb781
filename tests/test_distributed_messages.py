"""What torchrun's ranks are told when they differ: which array, which rank, who left.

The fast tests build the tables every rank exchanges from real arrays and a
real rendezvous store in one process; the slow ones run 2 gloo ranks under
torchrun (tests/ddp_worker.py ``messages`` and ``exit``).
"""

from __future__ import annotations

import datetime
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from keras_steps._distributed import _data, _presence

WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]


def _describe(*per_rank, here=0):
    tables = [_data.array_table(data) for data in per_rank]
    labels = tables[0][0]
    assert all(t[0] == labels for t in tables)
    return _data.describe_differences(labels, np.stack([t[1] for t in tables]), here)


rng = np.random.default_rng(0)
X, Y = rng.normal(size=(320, 3)).astype("float32"), rng.normal(size=(320, 1)).astype("float32")


def test_equal_arrays_raise_nothing():
    assert _describe((X, Y, None), (X.copy(), Y.copy(), None)) == []


def test_rows_are_counted_per_array_not_added_up():
    (sentence,) = _describe((X, Y, None), (X[:300], Y, None), here=1)
    # Was "rows 300 here, 320 on rank 0", with x and y added together.
    assert sentence == "rank 1 (this one): x has 300 rows, 320 rows on rank 0"


def test_equal_rows_with_other_values_name_the_array_and_the_checksums():
    (sentence,) = _describe((X, Y, None), (X, Y + 1, None))
    # Was "320 here, 320 on rank 0".
    assert sentence.startswith("rank 1: y has the same 320 rows, dtype and row shape, but other")
    assert "checksums of 64 evenly spaced rows differ" in sentence
    assert "x " not in sentence


def test_a_changed_row_between_the_sampled_ones_is_not_seen():
    # The documented limit: 64 evenly spaced rows are compared, not all.
    other = X.copy()
    other[1] += 1.0  # rows 0 and 5 are sampled, row 1 is not
    assert _describe((X, Y, None), (other, Y, None)) == []


def test_dtype_argument_and_nested_names():
    x = {"image": X, "label": Y}
    (sentence,) = _describe(
        (x, Y, None), ({"image": X.astype("float64"), "label": Y}, Y, np.ones(320))
    )
    assert "x['image'] has the same 320 rows but another dtype or row shape" in sentence
    assert "sample_weight has 320 rows, None on rank 0" in sentence


def test_torch_tensors_of_any_dtype_are_compared():
    a = torch.arange(12, dtype=torch.bfloat16).reshape(6, 2)
    assert _describe((a, None, None), (a.clone(), None, None)) == []
    (sentence,) = _describe((a, None, None), (a + 1, None, None))
    assert sentence.startswith("rank 1: x has the same 6 rows") and "all 6 rows" in sentence


def test_many_ranks_are_counted_after_the_first_few():
    tables = [_data.array_table((X, Y, None))[1]] + [
        _data.array_table((X[: 300 - r], Y, None))[1] for r in range(6)
    ]
    sentences = _data.describe_differences(["x", "y", "sample_weight"], np.stack(tables), 0)
    assert len(sentences) == 6
    named = _data._named(sentences)
    assert "Rank 4:" in named and "Rank 5:" not in named and "And 2 more rank(s)" in named


@pytest.fixture
def store(monkeypatch):
    """A real rendezvous store, as torchrun's agent holds one, and a fake 3-rank group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    master = dist.TCPStore(
        "127.0.0.1",
        port,
        is_master=True,
        timeout=datetime.timedelta(seconds=10),
        wait_for_workers=False,
    )
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setattr(_presence, "_state", {**_presence._state, "connected": False})
    monkeypatch.setattr(_presence, "GRACE_S", 0.3)
    monkeypatch.setattr(_presence.atexit, "register", lambda fn: None)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 3)

    def as_rank(r):
        monkeypatch.setattr(dist, "get_rank", lambda group=None: r)
        _presence._state["rank"] = r  # as entered() keeps it, for the exit record

    yield master, as_rank


def test_a_failed_collective_names_the_rank_that_exited_and_the_one_that_hangs(store):
    master, as_rank = store
    for r in (0, 1, 2):
        as_rank(r)
        _presence.entered("fit")
    as_rank(1)
    _presence.at(epoch=0)
    _presence.at(batches=2)
    _presence._exiting()  # what atexit runs when rank 1 quits with status 0
    as_rank(0)
    message = _presence.after_failure("all-reduce of gradients")
    assert message == (
        " Rank 1 left: its process exited during fit() in epoch 1, after 2 batch(es) of it; "
        "Rank 2 left no word of leaving: it hangs, was killed, or ended without Python's "
        "cleanup (os._exit)."
    )
    # This rank's own failure is recorded for the others.
    record = json.loads(dist.PrefixStore("keras_steps/test/0", master).get("rank0"))
    assert record["state"] == "failed" and record["what"] == "all-reduce of gradients"


def test_a_rank_that_returned_from_fit_early_is_named(store):
    _, as_rank = store
    as_rank(2)
    _presence.entered("fit")
    _presence.at(epoch=1)
    _presence.left("fit")
    as_rank(1)
    _presence.entered("fit")
    _presence.after_failure("all-reduce of gradients")  # rank 1 failed first
    as_rank(0)
    message = _presence.after_failure("all-reduce of metrics")
    assert "Rank 2 left: it returned from fit() in epoch 2, after 0 batch(es)" in message
    assert message.endswith("Rank 1 failed too, in all-reduce of gradients.")


def test_without_a_store_the_message_says_nothing_more(monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setattr(_presence, "_state", {**_presence._state, "connected": False})
    assert _presence.after_failure("all-reduce of gradients") == ""


# -- slow: under torchrun ---------------------------------------------------------------
def _torchrun(scenario, out, timeout=240):
    env = {
        k: v
        for k, v in __import__("os").environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        KERAS_BACKEND="torch",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        KERAS_STEPS_DIST_TIMEOUT="30",
    )
    done = subprocess.run(
        [*TORCHRUN, str(WORKER), scenario, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.slow
def test_ranks_name_the_array_and_the_rank_that_differ(tmp_path):
    code, out = _torchrun("messages", tmp_path)
    assert code == 0, out[-4000:]
    expected = {
        "rows": "x has 30 rows, 32 rows on rank 0",
        "values": "y has the same 32 rows, dtype and row shape, but other values "
        "(the checksums of all 32 rows differ)",
        "dtype": "y has the same 32 rows but another dtype or row shape",
        "arguments": "sample_weight has 32 rows, None on rank 0",
        "evaluate": "y has the same 32 rows, dtype and row shape, but other values",
    }
    for case, text in expected.items():
        for rank in (0, 1):
            message = (tmp_path / f"message_{case}_rank{rank}.txt").read_text()
            what = "evaluation" if case == "evaluate" else "training"
            assert f"rank {rank} of 2: the {what} arrays differ between ranks" in message
            named = "Rank 1 (this one): " if rank == 1 else "Rank 1: "
            assert named + text in message, (case, rank, message)


@pytest.mark.slow
def test_a_rank_that_exits_with_status_0_mid_fit_is_named_by_the_others(tmp_path):
    code, out = _torchrun("exit", tmp_path, timeout=150)
    assert code != 0
    assert "DistributedError: keras_steps, rank 0 of 2: all-reduce of gradients failed" in out
    # Batch 3 of epoch 1 began when rank 1 called sys.exit(0).
    assert "Rank 1 left: its process exited during fit() in epoch 1, after 2 batch(es)" in out
    assert "finished training" not in out
