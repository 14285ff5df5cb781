"""Data-parallel ``fit()`` under ``torchrun``: the process group (``_group``),
ranks kept equal (``_sync``), metrics over ranks (``_metrics``), each rank's
data (``_data``), fit and evaluate per rank (``_run``), per-rank noise
(``_random``), and the all-reduce overlapped with the backward pass (``_overlap``).

Nothing here runs unless a ``torch.distributed`` process group is initialised:
:class:`~keras_steps.StepModel` initialises one when ``torchrun`` started the
process with ``WORLD_SIZE > 1`` (or uses the one the script made itself).
See the docs' "Distributed training" page for the design and what was tested.

Why not the ``torch.nn.parallel.DistributedDataParallel`` wrapper: it averages
gradients only for a forward pass that goes through the wrapper, and steps
call their networks directly (``model.models["generator"](z)``; Keras's own
``train_step`` calls ``self(x)``), so their gradients would never be
synchronised. DDP's algorithm is kept: weights broadcast from rank 0 at the
start, then every gradient averaged over ranks (sum / world size) in flat
buckets before the optimizer uses it. Here the averaging happens in
``optimizer.apply``, which every update goes through whatever the step did
to get its gradients (``keras_steps.backprop``, Keras's ``train_step``,
``torch.autograd.grad`` with a double backward, several phases per batch).
With ``KERAS_STEPS_OVERLAP_GRADIENTS=1`` it starts earlier, bucket by bucket,
from hooks on the variables during ``backward()``, as DDP's reducer does
(``_overlap``), with the same results; off by default, since it measured no
faster on CPU with gloo.
"""

from keras_steps._distributed._group import (
    TIMEOUT_ENV,
    is_active,
    rank,
    select_device,
    setup,
    world_size,
)
from keras_steps._distributed._metrics import global_logs
from keras_steps._distributed._overlap import during_training
from keras_steps._distributed._random import batch_random
from keras_steps._distributed._run import evaluate_arguments, fit_arguments
from keras_steps._distributed._sync import (
    OVERLAP_ENV,
    TrainedState,
    average_gradients_in,
    overlap_requested,
    rank_zero_value,
)

__all__ = [
    "OVERLAP_ENV",
    "TIMEOUT_ENV",
    "TrainedState",
    "average_gradients_in",
    "batch_random",
    "during_training",
    "evaluate_arguments",
    "fit_arguments",
    "global_logs",
    "is_active",
    "overlap_requested",
    "rank",
    "rank_zero_value",
    "select_device",
    "setup",
    "world_size",
]
