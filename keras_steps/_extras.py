"""The optional extras of keras-steps, and the one-line hint for a missing one.

Imported by the command line before torch or Keras: keep it standard library.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["install_hint", "missing_extra", "require"]

# Top-level import name -> (the package a user installs, the extra that has it).
# Mirrors [project.optional-dependencies] in pyproject.toml (tests/test_cli.py
# checks that every extra's packages are here).
MODULE_EXTRAS: dict[str, tuple[str, str]] = {
    "sklearn": ("scikit-learn", "demo"),
    "matplotlib": ("matplotlib", "demo"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "pytest": ("pytest", "dev"),
    "ruff": ("ruff", "dev"),
    "setuptools": ("setuptools", "dev"),
    "build": ("build", "dev"),
    "twine": ("twine", "dev"),
    "sybil": ("sybil", "dev"),
    "mkdocs": ("mkdocs", "docs"),
    "material": ("mkdocs-material", "docs"),
    "mkdocstrings": ("mkdocstrings", "docs"),
    "mkdocs_static_i18n": ("mkdocs-static-i18n", "docs"),
    "lightning": ("lightning", "bench"),
}


def install_hint(module: str) -> str | None:
    """``pip install 'keras-steps[EXTRA]'`` for a module an extra provides, else None."""
    entry = MODULE_EXTRAS.get(module.split(".")[0])
    if entry is None:
        return None
    return f"pip install 'keras-steps[{entry[1]}]'"


def missing_extra(exc: BaseException) -> tuple[str, str] | None:
    """``(package, hint)`` when ``exc`` (or what caused it) is a missing extra's import.

    Args:
        exc: an exception, typically an ``ImportError`` raised while running
            a command, possibly re-raised with its cause chained.

    Returns:
        The package to install and the ``pip install`` line, or None when no
        missing module of an extra is behind ``exc``.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = getattr(exc, "name", None)
        if isinstance(exc, ImportError) and name:
            hint = install_hint(name)
            if hint is not None:
                return MODULE_EXTRAS[name.split(".")[0]][0], hint
        exc = exc.__cause__ or exc.__context__
    return None


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``, which one of the extras provides.

    Args:
        module: the module to import, e.g. ``"torch.utils.tensorboard"``'s
            dependency ``"tensorboard"``.
        purpose: what needs it, for the message (``"keras_steps.callbacks.TensorBoard"``).

    Returns:
        The module.

    Raises:
        ModuleNotFoundError: it is not installed; the message names the extra.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is None or exc.name.split(".")[0] != top or top not in MODULE_EXTRAS:
            raise
        package = MODULE_EXTRAS[top][0]
        raise ModuleNotFoundError(
            f"{purpose} needs {package}, which is not installed: {install_hint(module)}",
            name=exc.name,
        ) from exc
