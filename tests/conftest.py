import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import pytest
import torch

import keras_steps  # noqa: F401
from keras_steps import _registry

# The test models are tiny: a second intra-op thread only adds synchronisation,
# and on a loaded machine it makes them many times slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_clean():
    """Seed every test and undo registry, dtype-policy and torch.compile state after it."""
    keras.utils.set_random_seed(1337)
    yield
    keras.config.set_dtype_policy("float32")
    _registry.reset()
    # Dynamo keeps what it learnt about code objects across models: after one
    # step failed to compile, the same Keras frames run eagerly in the next.
    torch.compiler.reset()
