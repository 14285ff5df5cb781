"""The documentation covers every hook and every step, and its code runs.

The site itself is built by ``mkdocs build --strict`` in scripts/test.sh
(and by test_site_builds_with_a_third_party_step_installed below); these
tests fail fast, with a message saying which page to write or fix.
"""

from __future__ import annotations

import ast
import concurrent.futures
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest
from plugin_factory import GOOD_STEP, write_distribution
from pydantic import Field
from run_doc_page import SKIP, page_document

import keras_steps
from keras_steps import hookimpl, hookspecs

ROOT = pathlib.Path(__file__).parents[1]
DOCS = ROOT / "docs"
RUNNER = ROOT / "tests" / "run_doc_page.py"
OPTIONS_MARKER = "<!-- options-table -->"


def _hooks_module():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks(page: pathlib.Path) -> list[tuple[str, object]]:
    """("code", source) for each python block, ("skip", (action, reason)) per marker."""
    return [
        ("skip", e.parsed) if e.region.evaluator is SKIP.skipper else ("code", str(e.parsed))
        for e in page_document(page)
    ]


def _code(page: pathlib.Path) -> list[str]:
    return [value for kind, value in _blocks(page) if kind == "code"]


def _pages_with_code() -> list[str]:
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    return [str(p.relative_to(ROOT)) for p in pages if _code(p)]


PAGES = _pages_with_code()


@pytest.mark.parametrize("hook", sorted(hookspecs.hook_versions()))
def test_every_hook_has_a_reference_entry(hook):
    reference = (DOCS / "reference" / "hooks.md").read_text()
    assert f"::: keras_steps.hookspecs.{hook}\n" in reference, (
        f"Hook {hook!r} is missing from docs/reference/hooks.md: add a line "
        f"'::: keras_steps.hookspecs.{hook}' under the right heading."
    )


def _shipped_steps() -> list[str]:
    ships_here = _hooks_module().ships_here
    return [s.name for s in keras_steps.list_steps() if ships_here(s)]


@pytest.mark.parametrize("name", _shipped_steps())
def test_every_step_has_a_page_with_its_options_table(name):
    page = DOCS / "steps" / f"{name}.md"
    assert page.exists(), f"Step {name!r} has no page: write docs/steps/{name}.md."
    assert OPTIONS_MARKER in page.read_text(), (
        f"docs/steps/{name}.md lacks the line {OPTIONS_MARKER}, where the "
        "options table generated from the step's schema goes."
    )


def test_only_a_shipped_step_without_a_page_stops_the_build(tmp_path, caplog):
    hooks = _hooks_module()
    keras_steps.register_step(TableStep, name="table-step")
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "gan.md").write_text("# gan\n")
    config = {"docs_dir": str(tmp_path), "nav": [{"Steps": "steps/index.md"}]}
    with caplog.at_level("INFO", logger="mkdocs.hooks.keras_steps"):
        hooks.on_config(config)
    assert config["nav"] == [{"Steps": [{"All steps": "steps/index.md"}, "steps/gan.md"]}]
    warned = {r.args[0] for r in caplog.records if r.levelname == "WARNING"}
    assert warned == set(_shipped_steps()) - {"gan"}
    (listed,) = [r for r in caplog.records if r.args[0] == "table-step"]
    assert listed.levelname == "INFO"
    assert "| table-step | local | A step whose options the table shows. |" in (
        hooks.steps_table({"gan"}).splitlines()
    )


def _pictures_script():
    path = ROOT / "scripts" / "doc_pictures.py"
    spec = importlib.util.spec_from_file_location("doc_pictures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_demo_is_drawn_on_its_page_or_said_to_draw_nothing():
    script = _pictures_script()
    demos = {n for n in _shipped_steps() if keras_steps.get_step(n).hooks.get("step_demo")}
    assert set(script.BUDGETS) | set(script.NO_PICTURES) == demos
    assert not set(script.BUDGETS) & set(script.NO_PICTURES)


@pytest.mark.parametrize("name", sorted(_pictures_script().BUDGETS))
def test_every_step_page_shows_its_demo_pictures_and_the_command(name):
    script = _pictures_script()
    text = (DOCS / "steps" / f"{name}.md").read_text()
    shown = set(re.findall(rf"\]\((pictures/{re.escape(name)}-[\w.-]+\.png)\)", text))
    stored = {f"pictures/{p.name}" for p in (DOCS / "steps" / "pictures").glob(f"{name}-*.png")}
    assert shown and shown == stored, (
        f"docs/steps/{name}.md shows {sorted(shown)}; the demo drew {sorted(stored)} "
        f"(python scripts/doc_pictures.py {name})"
    )
    assert f"`{script.command(name)}`" in text, "the page must say what drew its pictures"
    for picture in stored:
        size = (DOCS / "steps" / picture).stat().st_size
        assert size < 100_000, f"{picture} is {size} bytes; keep pictures small"


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


KOREAN = sorted(p.name for p in (DOCS / "ko").glob("*.md"))


@pytest.mark.parametrize("page", KOREAN)
def test_korean_pages_have_the_english_code(page):
    english, korean = _blocks(DOCS / page), _blocks(DOCS / "ko" / page)
    assert [kind for kind, _ in english] == [kind for kind, _ in korean], (
        f"docs/ko/{page} must have the python blocks and skip markers of docs/{page}, "
        "in the same order."
    )
    for (kind, en), (_, ko) in zip(english, korean, strict=True):
        if kind == "code":
            # Comments and docstrings are translated; the code is the same.
            assert _without_docstrings(en) == _without_docstrings(ko), (page, en)


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


@pytest.mark.parametrize("page", PAGES)
def test_every_skipped_block_says_why(page):
    for kind, value in _blocks(ROOT / page):
        if kind == "skip":
            action, reason = value
            assert action == "next" and reason and isinstance(ast.literal_eval(reason), str), (
                f"{page}: write a skip marker as <!-- skip: next \"why it cannot run\" -->, "
                f"not {action} {reason}"
            )


def _clean_env(home: pathlib.Path) -> dict[str, str]:
    """A reader's environment: no backend chosen, an empty HOME."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KERAS", "PYTHON", "TORCH", "MASTER_", "RANK", "WORLD_"))
    }
    # Pages run side by side; one thread each keeps them from fighting over cores.
    return {**env, "HOME": str(home), "OMP_NUM_THREADS": "1"}


def _run_page(page: str, folder: pathlib.Path) -> subprocess.CompletedProcess:
    folder.mkdir(parents=True)
    # The page's own folder is the working directory, so the files it writes
    # (checkpoints, pictures) land there.
    return subprocess.run(
        [sys.executable, str(RUNNER), str(ROOT / page)],
        cwd=folder,
        env=_clean_env(folder),
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="session")
def page_runs(request, tmp_path_factory):
    """Every selected page's run, started at once, a few processes at a time."""
    pages = [
        item.callspec.params["page"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_code_on_the_page_runs"
    ]
    root = tmp_path_factory.mktemp("pages")
    jobs = min(len(pages), max(1, len(os.sched_getaffinity(0))))
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        yield {
            page: pool.submit(_run_page, page, root / page.replace("/", "_"))
            for page in pages
        }
        pool.shutdown(cancel_futures=True)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_code_on_the_page_runs(page, page_runs):
    done = page_runs[page].result()
    assert done.returncode == 0, (
        f"A python block of {page} fails in a fresh process (KERAS_BACKEND unset, "
        f"empty HOME):\n{done.stderr[-6000:]}"
    )


@pytest.mark.slow
def test_the_page_runner_runs_blocks_in_order_and_skips_only_marked_ones(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nvalue = 1\n```\n\n"
        '<!-- skip: next "needs a GPU" -->\n```python\nraise RuntimeError\n```\n\n'
        "```python\nassert value == 1\nclass A: pass\nprint(A.__module__)\n```\n\n"
        "```bash\nexit 1\n```\n"
    )
    done = subprocess.run(
        [sys.executable, str(RUNNER), str(page)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert f"{page}:6: skipped: needs a GPU" in done.stderr
    assert done.stdout == "__main__\n"
    page.write_text("```python\nvalue = 1\n```\n\n```python\nvalue.missing\n```\n")
    done = subprocess.run(
        [sys.executable, str(RUNNER), str(page)], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert f"{page}:5: this block raised" in done.stderr
    assert "AttributeError" in done.stderr


def test_the_options_error_shown_in_the_guide_is_the_real_one(capsys):
    namespace: dict = {}
    blocks = _code(DOCS / "customizing.md")
    (setup,) = [b for b in blocks if "import keras_steps" in b]
    (huber,) = [b for b in blocks if "class Huber" in b]
    exec(setup, namespace)
    exec(
        "inputs = keras.Input(shape=(32,))\noutputs = keras.layers.Dense(1)(inputs)",
        namespace,
    )
    fit = next(line for line in huber.splitlines() if line.startswith("model.fit("))
    exec(huber.replace(fit, ""), namespace)
    printed = capsys.readouterr().out.strip()
    shown = (DOCS / "customizing.md").read_text()
    assert f"```text\n{printed}\n```" in shown, printed


@pytest.mark.slow
def test_site_builds_with_a_third_party_step_installed(tmp_path):
    # An installed distribution, as pip leaves it: its step has no page here.
    site = write_distribution(
        tmp_path,
        "keras-steps-scaled",
        {"keras_steps_scaled": GOOD_STEP},
        {"scaled-mse": "keras_steps_scaled"},
    )
    env = {**os.environ, "PYTHONPATH": str(site), "NO_MKDOCS_2_WARNING": "1"}
    env.pop("KERAS_STEPS_DISABLE_PLUGIN_AUTOLOAD", None)
    env.pop("KERAS_STEPS_LOAD_PLUGINS", None)
    out = tmp_path / "html"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    steps = (out / "steps" / "index.html").read_text()
    assert "scaled-mse" in steps and "keras-steps-scaled 1.0" in steps
    # Each step page's pictures are in the site, where the page points.
    pictures = [
        (page, src)
        for page in (out / "steps").glob("*/index.html")
        for src in re.findall(r'<img alt="[^"]*" src="([^"]+)"', page.read_text())
    ]
    assert len(pictures) == len(list((DOCS / "steps" / "pictures").glob("*.png")))
    for page, src in pictures:
        assert (page.parent / src).resolve().is_file(), (page, src)
    # The Korean pages are served as Korean, the English ones as English,
    # each with a switcher to the other language.
    for page, lang in [("quickstart", "en"), ("ko/quickstart", "ko"), ("ko/customizing", "ko")]:
        html = (out / page / "index.html").read_text()
        assert f'<html lang="{lang}"' in html, page
        assert 'hreflang="en"' in html and 'hreflang="ko"' in html, page
    korean = (out / "ko" / "quickstart" / "index.html").read_text()
    assert 'placeholder="검색"' in korean  # Material's Korean search box
    assert "빠른 시작" in korean
