"""The ``keras-steps`` command: list, show, check and demo steps.

``--help`` and ``--version`` must answer at once: nothing here imports torch
or Keras at module level, and ``keras_steps`` itself imports them lazily.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

from keras_steps import _extras
from keras_steps._version import __version__

__all__ = ["build_parser", "main"]


def _source_dict(step) -> dict[str, Any]:
    src = step.source
    return {
        "kind": src.kind,
        "distribution": src.distribution,
        "version": src.version,
        "entry_point": src.entry_point,
        "label": str(src),
    }


def _options_rows(step) -> list[dict[str, Any]]:
    schema = step.options_class.model_json_schema()
    props = schema.get("properties", {})
    rows = []
    for name, field in step.options_class.model_fields.items():
        prop = props.get(name, {})
        rows.append(
            {
                "name": name,
                "type": _type_label(prop),
                "default": field.get_default(call_default_factory=True),
                "description": field.description or "",
                "constraints": {
                    k: v
                    for k, v in prop.items()
                    if k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum")
                },
            }
        )
    return rows


def _type_label(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " | ".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    if "anyOf" in prop:
        return " | ".join(_type_label(p) for p in prop["anyOf"])
    return str(prop.get("type", "any"))


def _cmd_list(args) -> int:
    import keras_steps

    steps = keras_steps.list_steps()
    problems = keras_steps.list_problems()
    if args.json:
        data = [
            {"name": s.name, "source": _source_dict(s), "summary": s.summary}
            for s in steps
        ]
        out = {"steps": data, "problems": {k: str(v) for k, v in problems.items()}}
        print(json.dumps(out, indent=2))
        return 0
    width = max([len(s.name) for s in steps] + [4])
    swidth = max([len(str(s.source)) for s in steps] + [6])
    print(f"{'name':<{width}}  {'source':<{swidth}}  summary")
    for s in steps:
        print(f"{s.name:<{width}}  {s.source!s:<{swidth}}  {s.summary}")
    for name, exc in problems.items():
        print(f"\nunusable: {name}: {exc}", file=sys.stderr)
    return 0


def _cmd_show(args) -> int:
    import keras_steps

    step = keras_steps.get_step(args.name)
    rows = _options_rows(step)
    if args.json:
        out = {
            "name": step.name,
            "source": _source_dict(step),
            "summary": step.summary,
            "model_roles": list(step.model_roles),
            "optimizer_roles": list(step.optimizer_roles),
            "options": rows,
            "options_schema": step.options_class.model_json_schema(),
            "hooks": sorted(step.hooks),
        }
        print(json.dumps(out, indent=2, default=repr))
        return 0
    print(f"{step.name} ({step.source})")
    if step.summary:
        print(f"  {step.summary}")
    print(f"model roles:     {', '.join(step.model_roles)}")
    print(f"optimizer roles: {', '.join(step.optimizer_roles)}")
    if not rows:
        print("options:         none")
        return 0
    print("options:")
    for row in rows:
        print(f"  {row['name']}: {row['type']} = {row['default']!r}")
        if row["constraints"]:
            cons = ", ".join(f"{k}={v}" for k, v in row["constraints"].items() if k != "enum")
            if cons:
                print(f"      constraints: {cons}")
        if row["description"]:
            print(f"      {row['description']}")
    return 0


def _cmd_demo(args) -> int:
    import keras_steps

    step = keras_steps.get_step(args.name)
    demo = step.hooks.get("step_demo")
    if demo is None:
        with_demo = [s.name for s in keras_steps.list_steps() if "step_demo" in s.hooks]
        print(
            f"keras-steps: step {step.name!r} ({step.source}) has no demo. "
            f"Steps with one: {', '.join(with_demo) or 'none'}.",
            file=sys.stderr,
        )
        return 2
    out_dir = pathlib.Path(args.output) / step.name
    out_dir.mkdir(parents=True, exist_ok=True)
    files = demo(out_dir, args.epochs, args.steps) or {}
    if files:
        print("wrote " + ", ".join(f"{label}: {path}" for label, path in files.items()))
    return 0


def _cmd_check(args) -> int:
    from keras_steps._check import check_plugins, format_report

    result = check_plugins()
    if args.json:
        print(json.dumps(result, indent=2, default=repr))
    else:
        print(format_report(result))
    return 0 if result["ok"] else 1


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return n


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: one subcommand per action, each with its help."""
    parser = argparse.ArgumentParser(
        prog="keras-steps",
        description="Named Keras training steps (PyTorch backend): list the installed "
        "steps, show one's options, check the plugins, or run a step's demo.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}",
        help="print the version of keras-steps and exit",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
        p.set_defaults(func=func)
        return p

    p = command("list", "list the installed steps and where each comes from", _cmd_list)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command("show", "show a step's options, model roles and optimizer roles", _cmd_show)
    p.add_argument("name", help="the step's name, as `keras-steps list` shows it")
    p.add_argument("--json", action="store_true", help="print JSON (with the options' schema)")
    p = command(
        "check", "import and validate every installed step plugin; exit 1 on problems", _cmd_check
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command(
        "demo",
        "train a step on embedded data and draw the result (needs the demo extra)",
        _cmd_demo,
    )
    p.add_argument("name", help="the step's name (steps with a demo: keras-steps list)")
    p.add_argument("--epochs", type=_positive, default=None, help="epochs (default: the demo's)")
    p.add_argument(
        "--steps", type=_positive, default=None, help="batches per epoch (default: the demo's)"
    )
    p.add_argument(
        "--output", default="demo-output",
        help="folder for the pictures; each step writes into OUTPUT/STEP (default: demo-output)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: the arguments, without the program name; None reads ``sys.argv``.

    Returns:
        The exit status: 0 on success, 1 when ``check`` finds problems or an
        extra the command needs is missing, 2 on a bad step or argument.
    """
    args = build_parser().parse_args(argv)
    from keras_steps import StepError

    try:
        return args.func(args)
    except StepError as exc:
        print(f"keras-steps: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        missing = _extras.missing_extra(exc)
        if missing is None:
            raise
        package, hint = missing
        print(
            f"keras-steps {args.command}: needs {package}, which is not installed: {hint}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
