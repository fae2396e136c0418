"""Plain-text tables whose columns are as wide as their contents (core: imports nothing of convtune).

    >>> print(table(["layer", "ms"], [["resnet18.conv1", "1.25"], ["x", "10.5"]]))
    layer             ms
    resnet18.conv1  1.25
    x               10.5

Cells are strings (or anything `str()` turns into one); a column whose cells all read as numbers
(`12`, `1.5`, `37.0%`, `x4`, `-`) is right-aligned, any other left-aligned, unless `align` says
otherwise (one `<` or `>` per column). Columns are two spaces apart; no line ends in spaces.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_NUMBER = re.compile(r"x?[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?%?|-")


def _numeric(cell: str) -> bool:
    return bool(_NUMBER.fullmatch(cell.strip()))


def safe_text(text) -> str:
    """`text` with each unprintable character (ANSI escapes, newlines, terminal-title sequences,
    bidi overrides) written as its Python escape (`\\x1b`): names read from a model file are
    printed only through this, so a file cannot draw on the user's terminal or forge a line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def table(header: Sequence[str], rows: Iterable[Sequence], align: str | None = None, indent: str = "",
          gap: int = 2) -> str:
    """`header` and `rows` as aligned lines (joined with newlines), each line prefixed by `indent`."""
    header = [str(h) for h in header]
    body = [[str(c) for c in row] for row in rows]
    for row in body:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells for {len(header)} columns: {row}")
    if align is None:
        align = "".join(">" if body and all(_numeric(r[i]) for r in body) and any(r[i].strip() != "-" for r in body)
                        else "<" for i in range(len(header)))
    if len(align) != len(header) or set(align) - {"<", ">"}:
        raise ValueError(f"align needs one '<' or '>' per column, got {align!r}")
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    sep = " " * gap
    lines = [indent + sep.join(cell.rjust(w) if a == ">" else cell.ljust(w)
                               for cell, w, a in zip(row, widths, align)).rstrip()
             for row in [header] + body]
    return "\n".join(lines)
