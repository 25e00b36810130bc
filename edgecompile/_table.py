"""Plain-text tables and number formats shared by every command that prints one.

A table fits the width it is given (:func:`output_width`: the terminal's): text columns shrink
and wrap their cells onto continuation lines, widest first; numbers are never cut. A table
still too wide is split into blocks of columns, each repeating the first (the row's name), one
under the other.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Sequence

GAP = "  "
#: Before splitting a table, a text column shrinks no narrower than this (or its header):
#: kernel and model names mostly fit whole, and a long reason wraps into readable lines.
MIN_TEXT_WIDTH = 20


def output_width() -> int | None:
    """The width tables printed now must fit: ``$COLUMNS``, else the terminal's; no limit in
    a pipe or file, where a wrapped row would break ``grep`` and ``cut`` on it."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size().columns


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], width: int | None = -1
) -> str:
    """Left-align text columns, right-align numeric ones, fitted to ``width`` columns.

    ``width``: -1 (default) for :func:`output_width`, None for no limit. A table too wide
    first narrows its text columns, wrapping their cells, widest first and none below
    :data:`MIN_TEXT_WIDTH`; if that is not enough, it is split into blocks of whole columns
    (each repeating the first), and only a block still too wide narrows its text columns
    further, down to their headers.
    """
    limit = output_width() if width == -1 else width
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    count = len(headers)
    widths = [max(len(row[i]) for row in cells) for i in range(count)]
    numeric = [
        all(_looks_numeric(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(count)
    ]
    if limit is None or _total(widths) <= limit:
        return _render(cells, widths, numeric, range(count))
    floors = [
        w if numeric[i] else min(w, max(len(headers[i]), MIN_TEXT_WIDTH))
        for i, w in enumerate(widths)
    ]
    if _total(floors) <= limit:
        _shrink(widths, floors, range(count), limit)
        return _render(cells, widths, numeric, range(count))
    blocks = []
    for columns in _column_blocks(widths, floors, limit):
        narrowed = list(widths)
        headers_only = [w if numeric[i] else len(headers[i]) for i, w in enumerate(widths)]
        _shrink(narrowed, headers_only, columns, limit)
        blocks.append(_render(cells, narrowed, numeric, columns))
    return "\n\n".join(blocks)


def _total(widths: Sequence[int]) -> int:
    return sum(widths) + len(GAP) * (len(widths) - 1)


def _shrink(widths: list[int], floors: Sequence[int], columns: Sequence[int], limit: int) -> None:
    """Narrow the widest of ``columns`` still above its floor by one, again and again, until
    they fit ``limit`` or all are at their floors (a numeric column's floor is its width)."""
    while _total([widths[i] for i in columns]) > limit:
        shrinkable = [i for i in columns if widths[i] > floors[i]]
        if not shrinkable:
            return
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1


def _column_blocks(widths: Sequence[int], floors: Sequence[int], limit: int) -> list[list[int]]:
    """Column indices per block: the first column, then as many of the next as fit whole; a
    text column that fits only narrowed (to its floor) ends its block, narrowed."""
    blocks: list[list[int]] = []
    block = [0]
    for index in range(1, len(widths)):
        if len(block) == 1 or _total([widths[i] for i in [*block, index]]) <= limit:
            block.append(index)
        elif _total([*(widths[i] for i in block), floors[index]]) <= limit:
            blocks.append([*block, index])
            block = [0]
        else:
            blocks.append(block)
            block = [0, index]
    if len(block) > 1 or not blocks:
        blocks.append(block)
    return blocks


def _render(
    cells: Sequence[Sequence[str]],
    widths: Sequence[int],
    numeric: Sequence[bool],
    columns: Sequence[int],
) -> str:
    lines = []
    for index, row in enumerate(cells):
        # A cell wider than its column wraps; the row takes as many lines as its tallest cell.
        wrapped = [_wrap(row[i], widths[i]) for i in columns]
        for line in range(max(len(parts) for parts in wrapped)):
            parts = []
            for column, pieces in zip(columns, wrapped, strict=True):
                piece = pieces[line] if line < len(pieces) else ""
                width = widths[column]
                parts.append(piece.rjust(width) if numeric[column] else piece.ljust(width))
            lines.append(GAP.join(parts).rstrip())
        if index == 0:
            lines.append(GAP.join("-" * widths[i] for i in columns))
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    if len(text) <= width:
        return [text]
    return textwrap.wrap(text, width, break_on_hyphens=False) or [text]


def _looks_numeric(text: str) -> bool:
    stripped = text.replace(",", "").replace(".", "").rstrip("MGk%×x").lstrip("-")
    return stripped.isdigit() or text == "-"


def human_count(value: float) -> str:
    """1_865_728 → '1.87M'; 140_000_000 → '140.0M'; 8.4e9 → '8.40G'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            digits = 2 if abs(value) < 10 * scale else 1
            return f"{value / scale:.{digits}f}{unit}"
    return f"{value:.0f}"
