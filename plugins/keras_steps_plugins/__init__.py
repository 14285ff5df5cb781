"""The step plugins shipped with keras-steps.

Each module here is a step plugin written exactly as a third-party package
would write one: it imports only the public ``keras_steps`` API and is
registered through the ``keras_steps`` entry-point group in ``pyproject.toml``.
"""
