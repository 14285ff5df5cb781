"""MkDocs hooks: documentation generated from the installed steps.

- The line ``<!-- options-table -->`` in ``docs/steps/NAME.md`` becomes a
  table of step NAME's options, generated from its pydantic options model, so
  the page cannot drift from the code.
- The line ``<!-- steps-table -->`` becomes the list of installed steps.
- The ``Steps`` entry of the navigation lists ``steps/index.md`` and then
  every other page of ``docs/steps/``, so a new step page needs no nav edit.
- A step that ships with keras-steps (core or the catalog) without a page is
  a warning, which fails ``mkdocs build --strict``. A step from any other
  installed distribution needs no page here: the list of steps shows it, and
  the build says so at INFO level, so the site builds whatever is installed.
- Sphinx roles in docstrings (``:class:`~keras_steps.StepModel```) render as
  code, and a paragraph's closing ``::`` as ``:``, so docstrings written for
  ``help()`` read well on the site too.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re

os.environ.setdefault("KERAS_BACKEND", "torch")

from mkdocs.exceptions import PluginError

import keras_steps
from keras_steps._cli import _options_rows

log = logging.getLogger("mkdocs.hooks.keras_steps")

PROJECT = "keras-steps"
OPTIONS_MARKER = "<!-- options-table -->"
STEPS_MARKER = "<!-- steps-table -->"
STEPS_DIR = "steps"

_ROLE = re.compile(
    r":(?:func|class|data|mod|meth|attr|exc|obj):<code>(~?)([^<]+)</code>"
)
_LITERAL_INTRO = re.compile(r"::</p>")

_BOUNDS = {
    "minimum": "≥ {}",
    "exclusiveMinimum": "> {}",
    "maximum": "≤ {}",
    "exclusiveMaximum": "< {}",
    "minLength": "length ≥ {}",
    "maxLength": "length ≤ {}",
}


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _constraints(prop: dict) -> str:
    found = []
    for part in [prop, *prop.get("anyOf", [])]:
        found.extend(
            fmt.format(part[key]) for key, fmt in _BOUNDS.items() if key in part
        )
    return ", ".join(found)


def options_table(step: keras_steps.Step) -> str:
    """A Markdown table of ``step``'s options: name, type, default, constraints."""
    rows = _options_rows(step)
    if not rows:
        return "This step takes no options."
    props = step.options_class.model_json_schema().get("properties", {})
    lines = [
        "| Option | Type | Default | Constraints | Description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        default = repr(row["default"])  # as written in step_options={...}
        lines.append(
            f"| `{row['name']}` | {_cell(row['type'])} | `{_cell(default)}` | "
            f"{_cell(_constraints(props.get(row['name'], {})))} | "
            f"{_cell(row['description'])} |"
        )
    return "\n".join(lines)


def steps_table(pages: set[str]) -> str:
    """A Markdown table of every installed step, linking to its page."""
    lines = ["| Step | Source | What it does |", "| --- | --- | --- |"]
    for step in keras_steps.list_steps():
        name = f"[`{step.name}`]({step.name}.md)" if step.name in pages else step.name
        lines.append(f"| {name} | {_cell(step.source)} | {_cell(step.summary)} |")
    return "\n".join(lines)


def ships_here(step: keras_steps.Step) -> bool:
    """Whether ``step`` comes with keras-steps itself, so docs/steps/ must document it."""
    source = step.source
    if source.kind == "core":
        return True
    name = (source.distribution or "").replace("_", "-").replace(".", "-").lower()
    return source.kind == "plugin" and name == PROJECT


def _step_pages(docs_dir: str) -> list[str]:
    folder = pathlib.Path(docs_dir) / STEPS_DIR
    return sorted(p.stem for p in folder.glob("*.md") if p.stem != "index")


def on_config(config):
    pages = _step_pages(config["docs_dir"])
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and entry.get("Steps") == f"{STEPS_DIR}/index.md":
            entry["Steps"] = [
                {"All steps": f"{STEPS_DIR}/index.md"},
                *(f"{STEPS_DIR}/{name}.md" for name in pages),
            ]
    for step in keras_steps.list_steps():
        if step.name in pages:
            continue
        if ships_here(step):
            log.warning(
                "Step %r ships with %s but has no page docs/%s/%s.md (with a line %s).",
                step.name,
                PROJECT,
                STEPS_DIR,
                step.name,
                OPTIONS_MARKER,
            )
        else:
            log.info(
                "Step %r (%s) is installed; the list of steps shows it, without a page.",
                step.name,
                step.source,
            )
    return config


def on_page_markdown(markdown, page, config, files):
    if STEPS_MARKER in markdown:
        markdown = markdown.replace(
            STEPS_MARKER, steps_table(set(_step_pages(config["docs_dir"])))
        )
    if OPTIONS_MARKER not in markdown:
        return markdown
    path = pathlib.PurePosixPath(page.file.src_uri)
    if path.parent.name != STEPS_DIR:
        raise PluginError(
            f"{page.file.src_uri}: {OPTIONS_MARKER} belongs on a step page, "
            f"docs/{STEPS_DIR}/NAME.md."
        )
    try:
        step = keras_steps.get_step(path.stem)
    except keras_steps.StepError as exc:
        raise PluginError(f"{page.file.src_uri}: {exc}") from None
    return markdown.replace(OPTIONS_MARKER, options_table(step))


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html, page, config, files):
    return _LITERAL_INTRO.sub(":</p>", _ROLE.sub(_role, html))
