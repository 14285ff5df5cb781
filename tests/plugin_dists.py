"""Write small installed distributions for tests: modules plus a dist-info.

What pip leaves in site-packages, minus the RECORD: a folder with the modules
and ``NAME-VERSION.dist-info/{METADATA,entry_points.txt}``. Put the folder on
``sys.path`` (``monkeypatch.syspath_prepend``) or ``PYTHONPATH`` and
``importlib.metadata`` finds the distribution and its entry points.
"""

from __future__ import annotations

import pathlib
import textwrap


def make_distribution(
    root: pathlib.Path,
    name: str,
    entry_points: dict[str, str],
    modules: dict[str, str],
    version: str = "1.0",
) -> pathlib.Path:
    """Write distribution ``name`` under ``root``.

    Args:
        root: the folder standing for site-packages.
        name: the distribution name.
        entry_points: ``keras_steps`` entry points, step name to
            ``"module:object"``.
        modules: module file path relative to ``root`` (``"pkg/mod.py"``) to
            source, dedented.
        version: the distribution version.

    Returns:
        ``root``.
    """
    for rel, source in modules.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    )
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[keras_steps]\n{lines}")
    return root
