"""Keras's private API is used only through keras_steps/_keras_private.py."""

from __future__ import annotations

import ast
from pathlib import Path

import keras
import pytest

from keras_steps import _keras_private

ROOT = Path(__file__).resolve().parent.parent
PRIVATE_MODULE = ROOT / "keras_steps" / "_keras_private.py"

# Underscored attributes of Keras objects that keras-steps needs: reading
# them anywhere but _keras_private.py is a private-API use it must not have.
KERAS_PRIVATE_ATTRIBUTES = {
    "_compile_config",
    "_flatten_layers",
    "_initial_epoch",
    "_loss_tracker",
    "_seed_generators",
    "_should_torch_compile",
    "_trainable_variables",
    "_training_metadata_path",
    "_use_torch_compile",
    "_batches_seen_since_last_saving",
    "_current_epoch",
    "_last_batch_seen",
    "ddp_model",
}


def _private_uses(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line what`` for each keras.src import or Keras private attribute in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    call_arguments = {
        id(arg) for call in ast.walk(tree) if isinstance(call, ast.Call) for arg in call.args
    }

    def note(node, what):
        found.append(f"{path.relative_to(root)}:{node.lineno} {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "keras.src" or alias.name.startswith("keras.src."):
                    note(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "keras.src" or node.module.startswith("keras.src."):
                note(node, f"from {node.module} import ...")
            elif node.module == "keras" and any(a.name == "src" for a in node.names):
                note(node, "from keras import src")
        elif isinstance(node, ast.Attribute):
            if node.attr == "src" and isinstance(node.value, ast.Name) and node.value.id == "keras":
                note(node, "keras.src")
            elif node.attr in KERAS_PRIVATE_ATTRIBUTES:
                note(node, f".{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # getattr(obj, "_loss_tracker"), importlib.import_module("keras.src...")
            # (only as a call's argument: docstrings and messages name them too)
            named = node.value in KERAS_PRIVATE_ATTRIBUTES or node.value.startswith("keras.src.")
            if named and id(node) in call_arguments:
                note(node, repr(node.value))
    return found


def _library_files() -> list[Path]:
    files = sorted((ROOT / "keras_steps").rglob("*.py")) + sorted(
        (ROOT / "plugins").rglob("*.py")
    )
    return [f for f in files if f != PRIVATE_MODULE]


def test_only_keras_private_uses_keras_private_api():
    files = _library_files()
    assert len(files) > 20  # the scan sees the package and the catalog
    uses = [use for f in files for use in _private_uses(f)]
    assert uses == [], (
        "Keras private API used outside keras_steps/_keras_private.py; add a "
        "function there (with its reason and version gate) and call it:\n" + "\n".join(uses)
    )


@pytest.mark.parametrize(
    "source",
    [
        "from keras.src.models.functional import Functional\n",
        "import keras.src.tree\n",
        "from keras import src\n",
        "import keras\nx = keras.src.backend\n",
        "def f(model):\n    return model._loss_tracker\n",
        "def f(model):\n    return getattr(model, '_compile_config', None)\n",
        "import importlib\nimportlib.import_module('keras.src.saving')\n",
    ],
)
def test_the_scan_finds_each_kind_of_use(tmp_path, source):
    path = tmp_path / "module.py"
    path.write_text(f'"""Mentions keras.src.tree and _loss_tracker in prose."""\n{source}')
    uses = _private_uses(path, root=tmp_path)
    assert len(uses) == 1, uses
    assert uses[0].startswith("module.py:")


def test_public_api_the_library_uses_instead_exists():
    # The public replacements named in _keras_private's docstring.
    assert callable(keras.tree.map_structure)
    assert callable(keras.utils.unpack_x_y_sample_weight)
    assert hasattr(keras.Model, "jit_compile")
    assert callable(keras.Model.get_compile_config)


def test_keras_version_is_parsed_for_nightly_and_releases():
    assert _keras_private._parse_version("3.16.0.dev2026102704") == (3, 16)
    assert _keras_private._parse_version("3.10.0") == (3, 10)
    assert _keras_private._parse_version(keras.__version__) == _keras_private.KERAS_VERSION
