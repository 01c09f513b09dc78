"""Paste the generated results table into README.md (between two marker comments).

    python -m mssdf.reports.readme [--readme README.md] [--table reports/paper/results.md] [--check]

The figures stage writes the headline table (:func:`mssdf.reports.paper.results_markdown`)
to ``reports/paper/results.md``; this replaces what lies between :data:`BEGIN` and
:data:`END` in the README with it, so the README's numbers are generated, never typed.
``make repro`` runs it after ``dvc repro``; ``--check`` exits 1 when the README is stale
(``tests/test_paper_figures.py`` does the same check).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mssdf.atomic import atomic_write_text
from mssdf.config import ConfigError

BEGIN = "<!-- results:begin (generated from reports/paper/results.md by `python -m mssdf.reports.readme`; do not edit) -->"
END = "<!-- results:end -->"


def replace_block(text: str, block: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` with everything between the ``begin`` and ``end`` lines replaced by ``block``.

    Raises:
        ConfigError: the markers are missing, repeated or out of order.
    """
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ConfigError(f"expected one '{begin}' line followed by one '{end}' line")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{block.strip()}\n{end}{tail}"


def current_block(text: str, begin: str = BEGIN, end: str = END) -> str:
    """What lies between the markers (stripped)."""
    replace_block(text, "", begin, end)  # validates the markers
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mssdf.reports.readme", description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--table", default="reports/paper/results.md", help="the figures stage's generated table")
    ap.add_argument("--check", action="store_true", help="exit 1 if the README's table differs from --table")
    args = ap.parse_args(argv)
    readme, table = Path(args.readme), Path(args.table)
    try:
        if not table.is_file():
            raise ConfigError(f"{table}: not found (run the figures stage: dvc repro figures)")
        text = readme.read_text()
        block = table.read_text()
        if args.check:
            stale = current_block(text) != block.strip()
            print(f"{readme}: results table {'STALE' if stale else 'up to date'} against {table}")
            return int(stale)
        new = replace_block(text, block)
        if new != text:
            atomic_write_text(readme, new)
        print(f"{readme}: results table {'updated' if new != text else 'unchanged'} from {table}")
        return 0
    except (ConfigError, OSError) as exc:
        print(f"error: {readme}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
