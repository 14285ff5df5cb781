"""The documentation covers every hook and every step, and its code runs.

The site itself is built by ``mkdocs build --strict`` in scripts/test.sh;
these tests fail fast, with a message saying which page to write.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import re

import pytest
from pydantic import Field

import keras_steps
from keras_steps import hookimpl, hookspecs

ROOT = pathlib.Path(__file__).parents[1]
DOCS = ROOT / "docs"
OPTIONS_MARKER = "<!-- options-table -->"
_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.M | re.S)


def _hooks_module():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _python_blocks(page: pathlib.Path) -> list[tuple[bool, str]]:
    """(runnable, code) for each Python block; ``<!-- no-test ...`` skips one."""
    text = page.read_text()
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        runnable = not (before and before[-1].startswith("<!-- no-test"))
        blocks.append((runnable, match.group(1)))
    return blocks


@pytest.mark.parametrize("hook", sorted(hookspecs.hook_versions()))
def test_every_hook_has_a_reference_entry(hook):
    reference = (DOCS / "reference" / "hooks.md").read_text()
    assert f"::: keras_steps.hookspecs.{hook}\n" in reference, (
        f"Hook {hook!r} is missing from docs/reference/hooks.md: add a line "
        f"'::: keras_steps.hookspecs.{hook}' under the right heading."
    )


@pytest.mark.parametrize("name", [s.name for s in keras_steps.list_steps()])
def test_every_step_has_a_page_with_its_options_table(name):
    page = DOCS / "steps" / f"{name}.md"
    assert page.exists(), f"Step {name!r} has no page: write docs/steps/{name}.md."
    assert OPTIONS_MARKER in page.read_text(), (
        f"docs/steps/{name}.md lacks the line {OPTIONS_MARKER}, where the "
        "options table generated from the step's schema goes."
    )


def test_every_step_page_documents_an_installed_step():
    installed = {s.name for s in keras_steps.list_steps()}
    pages = {p.stem for p in (DOCS / "steps").glob("*.md")} - {"index"}
    assert pages <= installed, (
        f"pages for steps that are not installed: {pages - installed}"
    )


class TableOptions(keras_steps.StepOptions):
    """Options shown in a generated table."""

    rate: float = Field(0.05, gt=0, le=1, description="A rate | with a pipe.")
    mode: str = Field("a", description="A mode.")
    seed: int | None = Field(None, ge=0, description="A seed, or None.")


class TableStep:
    """A step whose options the table shows."""

    @hookimpl
    def step_options():
        return TableOptions

    @hookimpl
    def train_step(model, data):
        return {}

    @hookimpl
    def test_step(model, data):
        return {}


def test_options_table_is_generated_from_the_schema():
    hooks = _hooks_module()
    step = keras_steps.register_step(TableStep, name="table-step")
    table = hooks.options_table(step).splitlines()
    assert table[0] == "| Option | Type | Default | Constraints | Description |"
    assert (
        table[2] == "| `rate` | number | `0.05` | > 0, ≤ 1 | A rate \\| with a pipe. |"
    )
    assert table[3] == "| `mode` | string | `'a'` |  | A mode. |"
    assert table[4] == "| `seed` | integer \\| null | `None` | ≥ 0 | A seed, or None. |"
    assert hooks.options_table(keras_steps.get_step("supervised")) == (
        "This step takes no options."
    )
    assert "[`supervised`](supervised.md)" in hooks.steps_table({"supervised"})


@pytest.mark.parametrize("page", ["quickstart.md", "customizing.md"])
def test_korean_pages_have_the_english_code(page):
    english, korean = _python_blocks(DOCS / page), _python_blocks(DOCS / "ko" / page)
    assert [r for r, _ in english] == [r for r, _ in korean]
    for (_, en), (_, ko) in zip(english, korean, strict=True):
        # Comments and docstrings are translated; the code is the same.
        assert _without_docstrings(en) == _without_docstrings(ko)


def _without_docstrings(code: str) -> str:
    tree = ast.parse(code)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


@pytest.mark.slow
@pytest.mark.parametrize("page", ["quickstart.md", "customizing.md"])
def test_code_on_the_page_runs(page):
    namespace: dict = {"__name__": f"docs_{page[:-3]}"}
    blocks = [code for runnable, code in _python_blocks(DOCS / page) if runnable]
    assert blocks
    for code in blocks:
        exec(compile(code, str(DOCS / page), "exec"), namespace)


def test_the_options_error_shown_in_the_guide_is_the_real_one(capsys):
    namespace: dict = {}
    blocks = [code for _, code in _python_blocks(DOCS / "customizing.md")]
    (setup,) = [b for b in blocks if "os.environ" in b]
    (huber,) = [b for b in blocks if "class Huber" in b]
    exec(setup, namespace)
    exec(
        "inputs = keras.Input(shape=(32,))\noutputs = keras.layers.Dense(1)(inputs)",
        namespace,
    )
    exec(huber.replace("model.fit(x, y, epochs=2)", ""), namespace)
    printed = capsys.readouterr().out.strip()
    shown = (DOCS / "customizing.md").read_text()
    assert f"```text\n{printed}\n```" in shown, printed
