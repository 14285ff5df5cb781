"""Metrics and logs over all ranks: what History and the progress bar show."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import keras
import torch

from keras_steps._distributed import _group
from keras_steps._distributed._sync import assign, unique


@contextlib.contextmanager
def global_metric_state(metrics: Sequence[Any]):
    """Temporarily hold the metrics' state aggregated over all ranks.

    Metric variables say how to aggregate: ``"sum"`` (Keras's default for
    metrics: totals, counts, confusion matrices) is summed, ``"mean"``
    averaged, ``"only_first_replica"`` taken from rank 0, ``"none"`` left
    local. The local state comes back on exit, so reading results twice
    never counts other ranks twice.
    """
    variables = unique(v for m in metrics for v in m.variables)
    kinds = {"sum": [], "mean": [], "only_first_replica": []}
    for v in variables:
        if v.aggregation in kinds:
            kinds[v.aggregation].append(v)
    local = [v.value.detach().clone() for v in variables]
    try:
        reduce = kinds["sum"] + kinds["mean"]
        if reduce:
            summed = _group.all_reduce_sum("all-reduce of metric state", [v.value for v in reduce])
            n_sum = len(kinds["sum"])
            n = _group.world_size()
            assign(reduce, summed[:n_sum] + [s / n for s in summed[n_sum:]])
        if kinds["only_first_replica"]:
            first = kinds["only_first_replica"]
            assign(first, _group.broadcast("broadcast of metric state", [v.value for v in first]))
        yield
    finally:
        assign(variables, local)


def global_logs(model: Any, logs: Any) -> Any:
    """The epoch's logs over all ranks (what History and the progress bar get).

    Like Keras, the model's metric results when the step's logs name exactly
    those metrics; otherwise the step's last logs, each value replaced by the
    same-named metric's global result or, for other numbers, its mean over
    ranks.
    """
    with global_metric_state(model.metrics):
        results = {k: _detached(v) for k, v in model.get_metrics_result().items()}
    if not isinstance(logs, dict) or set(logs) == set(results):
        return results
    out = dict(logs)
    others = sorted(k for k, v in logs.items() if k not in results and _is_number(v))
    for k in logs:
        if k in results:
            out[k] = results[k]
    if others:
        values = torch.tensor(
            [float(keras.ops.convert_to_numpy(logs[k])) for k in others], dtype=torch.float64
        )
        (summed,) = _group.all_reduce_sum("all-reduce of logs", [values])
        out.update(zip(others, (summed / _group.world_size()).tolist()))
    return out


def _detached(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _is_number(value: Any) -> bool:
    if isinstance(value, (int, float)):
        return True
    shape = getattr(value, "shape", None)
    return shape is not None and tuple(shape) == ()
