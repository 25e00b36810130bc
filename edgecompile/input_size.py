"""``--input-size`` and ``--batch``: parsed and bounded without torch, so a mistake is found
before anything heavy loads (the command line checks them while parsing its options)."""

from __future__ import annotations

from collections.abc import Sequence

from edgecompile.errors import EdgecompileError

#: The most input pixels (batch x height x width) a model is exported at: 4096x4096. Beyond
#: it the seeded input and torch's activations would not fit in memory (a typo like
#: --input-size 100000 asked for 120 GB before this check).
MAX_INPUT_PIXELS = 4096 * 4096


def parse_input_size(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"224"`` → (224, 224); ``"160x320"`` → (160, 320); None stays None."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = text.lower().replace("×", "x").split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
    else:
        values = [int(v) for v in text]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise EdgecompileError(
            f"bad input size {text!r}",
            "give HEIGHT or HEIGHTxWIDTH in pixels, e.g. 224 or 512x1024",
        )
    check_input_pixels(1, values[0], values[1])
    return values[0], values[1]


def check_input_pixels(batch: int, height: int, width: int) -> None:
    """Refuse inputs above :data:`MAX_INPUT_PIXELS` before anything is allocated for them."""
    if batch * height * width > MAX_INPUT_PIXELS:
        raise EdgecompileError(
            f"input {batch}x3x{height}x{width} is too large ({batch * height * width:,} pixels; "
            f"the most is {MAX_INPUT_PIXELS:,}, e.g. 4096x4096 at batch 1)",
            "use a smaller --input-size or --batch",
        )
