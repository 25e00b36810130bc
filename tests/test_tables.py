"""Text tables fit the terminal: text wraps, numbers stay whole, too many columns split."""

from __future__ import annotations

import sys

from edgecompile._table import format_table, output_width

REASON = "the layout pass kept this conv out of the blocked layout: groups do not divide lanes"
ROWS = [
    ("fused_conv2d3_add2_relu1", 12, "1.234", REASON),
    ("fused_pool", 3, "0.100", "-"),
]
HEADERS = ("kernel", "calls", "ms", "fallback")


def _lines(text: str) -> list[str]:
    return text.splitlines()


def test_a_table_that_fits_is_unchanged_by_the_limit():
    assert format_table(HEADERS, ROWS, width=500) == format_table(HEADERS, ROWS, width=None)
    assert len(_lines(format_table(HEADERS, ROWS, width=None))) == 4


def test_text_columns_wrap_to_the_width_and_keep_every_word():
    text = format_table(HEADERS, ROWS, width=60)
    assert max(len(line) for line in _lines(text)) <= 60
    assert " ".join(text.split()).count("groups do not divide lanes") == 1
    # the numbers of the first row sit whole on its first line
    first = _lines(text)[2]
    assert "12" in first.split() and "1.234" in first.split()


def test_numbers_are_never_cut():
    rows = [("m", 123456789.125, 987654321.5)]
    text = format_table(("model", "a", "b"), rows, width=10)
    assert "123456789.125" in text and "987654321.5" in text


def test_too_many_numeric_columns_split_into_blocks_that_repeat_the_name():
    headers = ["model"] + [f"engine{i}@4 ms" for i in range(12)]
    row = ["mobilenet_v2"] + [f"{i + 0.5:.3f}" for i in range(12)]
    text = format_table(headers, [row], width=80)
    blocks = text.split("\n\n")
    assert len(blocks) > 1
    assert all(block.startswith("model") for block in blocks)
    assert all(len(line) <= 80 for line in _lines(text))
    words = text.split()
    for i in range(12):  # every column appears once, with its value
        assert words.count(f"engine{i}@4") == 1 and words.count(f"{i + 0.5:.3f}") == 1


def test_output_width_is_unlimited_in_a_pipe_and_follows_columns(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert output_width() is None
    monkeypatch.setenv("COLUMNS", "72")
    assert output_width() == 72
    text = format_table(HEADERS, ROWS)  # the default width is output_width()
    assert max(len(line) for line in _lines(text)) <= 72


def test_a_split_table_keeps_names_whole_and_wraps_only_the_long_text() -> None:
    headers = ("layer", "kernel", "input", "weight", "groups", "by", "schedule", "fallback")
    rows = [
        (i, f"fused_depthwise_nchwc{i}_add_relu", "1x32x112x112", "32x8x1x1", 4, "ours",
         "depthwise_nchwc", REASON if i % 2 else "")
        for i in range(5)
    ]  # fmt: skip
    text = format_table(headers, rows, width=100)
    words = text.split()
    assert all(f"fused_depthwise_nchwc{i}_add_relu" in words for i in range(5))
    assert all(len(line) <= 100 for line in _lines(text))
    blocks = text.split("\n\n")
    assert len(blocks) == 2 and all(block.startswith("layer") for block in blocks)
    assert " ".join(blocks[1].split()).count("groups do not divide lanes") == 2
