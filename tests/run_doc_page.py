"""Run the ``python`` blocks of one Markdown page, in order, as one script.

Usage: ``python tests/run_doc_page.py PAGE.md``. tests/test_docs.py runs it
in a fresh process per page, so each page starts as a reader's script would:
nothing imported, no backend chosen.

Sybil parses the page and evaluates its blocks in one namespace, so a block
uses what the blocks above it defined. A block after the comment
``<!-- skip: next "why" -->`` is skipped, and the reason is printed. Exit
status 0 when every other block ran, 1 at the first that raised.
"""

from __future__ import annotations

import pathlib
import sys
import time
import traceback
import unittest

from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

SKIP = SkipParser()
PARSERS = (PythonCodeBlockParser(), SKIP)


def page_document(page: pathlib.Path):
    """The Sybil document of ``page``: its python blocks and skip markers, in order."""
    return Sybil(parsers=PARSERS).parse(page)


def run(page: pathlib.Path) -> int:
    document = page_document(page)
    # Classes defined on the page belong to the script, as with `python page.py`.
    document.namespace["__name__"] = "__main__"
    for example in document:
        if example.region.evaluator is SKIP.skipper:  # a marker, not code
            example.evaluate()
            continue
        start = time.perf_counter()
        try:
            example.evaluate()
        except unittest.SkipTest as skip:
            print(f"{page}:{example.line}: skipped: {skip}", file=sys.stderr)
            continue
        except BaseException:
            traceback.print_exc()
            print(f"{page}:{example.line}: this block raised", file=sys.stderr)
            return 1
        took = time.perf_counter() - start
        print(f"{page}:{example.line}: ran in {took:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run(pathlib.Path(sys.argv[1]).resolve()))
