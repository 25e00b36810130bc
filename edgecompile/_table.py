"""Plain-text tables and number formats shared by every command that prints one."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-align text columns, right-align numeric ones; widths from the widest cell."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(_looks_numeric(row[i]) for row in cells[1:]) and len(cells) > 1
        for i in range(len(headers))
    ]
    lines = []
    for index, row in enumerate(cells):
        parts = [
            cell.rjust(width) if is_num else cell.ljust(width)
            for cell, width, is_num in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
