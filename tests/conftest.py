import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import pytest  # noqa: E402

import keras_steps  # noqa: E402, F401
from keras_steps import _registry  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_clean():
    """Seed every test and undo registry and dtype-policy changes after it."""
    keras.utils.set_random_seed(1337)
    yield
    keras.config.set_dtype_policy("float32")
    _registry.reset()
