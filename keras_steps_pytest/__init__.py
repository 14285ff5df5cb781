"""pytest plugin of keras-steps: the ``check_step`` fixture.

Registered through the ``pytest11`` entry point, so any test suite in an
environment with keras-steps can write::

    def test_my_step_conforms(check_step):
        check_step("my-step")

The fixture is :func:`keras_steps.testing.check_step` with ``tmp_path`` set to
the test's own temporary folder. This module lives outside the
``keras_steps`` package on purpose: pytest loads it in every session of the
environment, and importing ``keras_steps`` (hence Keras and torch, with the
torch backend) there would slow down or break unrelated projects. It imports
``keras_steps`` only when a test asks for the fixture. Disable it with
``pytest -p no:keras_steps``.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def check_step(tmp_path):
    """Return :func:`keras_steps.testing.check_step`, saving into ``tmp_path``."""
    from keras_steps import testing

    def check(name, *args, **kwargs):
        kwargs.setdefault("tmp_path", tmp_path)
        return testing.check_step(name, *args, **kwargs)

    check.__doc__ = testing.check_step.__doc__
    return check
