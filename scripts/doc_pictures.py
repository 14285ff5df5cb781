"""Regenerate the demo pictures shown on the step pages (docs/steps/pictures/).

Usage: ``.venv/bin/python scripts/doc_pictures.py [NAME ...]`` (default: every
step below). Each step's demo runs once, through the CLI a user would type,
``keras-steps demo NAME --epochs E --output DIR``, with the budget in
``BUDGETS``; its PNGs are copied to ``docs/steps/pictures/NAME-FILE.png`` and
reduced to a 128-colour palette, which keeps each well under 100 KB. The step
page writes the same command under its pictures (tests/test_docs.py checks
that it does, and that the pictures exist).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).parents[1]
PICTURES = ROOT / "docs" / "steps" / "pictures"

# Epochs per demo: the GANs' defaults, fewer than the classifiers' defaults
# (20-40), so that all seven take minutes, not an hour, on a shared CPU;
# enough for the curves to separate and the samples to look like digits.
# `--epochs` is the only option given.
BUDGETS = {
    "adversarial": 10,
    "distillation": 10,
    "gan": 8,
    "mixup": 10,
    "sam": 10,
    "vae": 10,
    "wgan-gp": 6,
}

# Steps whose demo draws nothing, with why.
NO_PICTURES = {"supervised": "its demo prints the training history"}


def command(name: str) -> str:
    """The command line that draws step ``name``'s pictures, as the page shows it."""
    return f"keras-steps demo {name} --epochs {BUDGETS[name]} --output pictures"


def crush(path: pathlib.Path) -> None:
    """Rewrite the PNG at ``path`` with a 128-colour palette, optimised."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=128, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def draw(name: str) -> list[pathlib.Path]:
    """Run step ``name``'s demo and store its pictures; returns their paths."""
    keras_steps_cli = pathlib.Path(sys.executable).with_name("keras-steps")
    with tempfile.TemporaryDirectory() as out:
        args = command(name).split()[1:]
        args[args.index("pictures")] = out
        # One thread: these small networks gain nothing from more, and on a
        # shared CPU extra threads only wait for each other.
        env = {**os.environ, "KERAS_BACKEND": "torch", "OMP_NUM_THREADS": "1"}
        subprocess.run([str(keras_steps_cli), *args], check=True, env=env)
        written = []
        for png in sorted(pathlib.Path(out, name).glob("*.png")):
            target = PICTURES / f"{name}-{png.name}"
            shutil.copyfile(png, target)
            crush(target)
            written.append(target)
    if not written:
        raise SystemExit(f"keras-steps demo {name} wrote no PNG")
    return written


def main(names: list[str]) -> int:
    PICTURES.mkdir(parents=True, exist_ok=True)
    for name in names or BUDGETS:
        if name not in BUDGETS:
            raise SystemExit(f"no budget for step {name!r}; add it to BUDGETS")
        for path in draw(name):
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
