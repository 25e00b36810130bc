"""What predicts latency over the zoo (Spearman rank correlations of costs with latency), and
the ratios of one engine's latency to another's (an int8 build's to ORT's int8 and to fp32)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgecompile.reporting.results import FP32_OF, Correlation, ModelResult

# Below this many models a rank correlation says nothing (two points always give ±1).
MIN_MODELS_FOR_CORRELATION = 3
# A ρ below this is too weak to call the cost a predictor of latency.
WEAK_CORRELATION = 0.3


def _average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    array = np.asarray(values, dtype=np.float64)
    order = np.argsort(array, kind="stable")
    ranked = array[order]
    # Runs of equal values in the sorted array: start index and length of each.
    starts = np.flatnonzero(np.concatenate(([True], ranked[1:] != ranked[:-1])))
    lengths = np.diff(np.concatenate((starts, [len(ranked)])))
    mean_rank = starts + (lengths + 1) / 2.0
    ranks = np.empty(len(array), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, lengths)
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation ρ (ties get average ranks), or None when it is undefined.

    Undefined: fewer than two pairs, or one side all ties (no ranking to correlate).
    """
    if len(x) != len(y):
        raise ValueError(f"spearman needs pairs: {len(x)} x values, {len(y)} y values")
    if len(x) < 2:
        return None
    rank_x = _average_ranks(x) - (len(x) + 1) / 2.0
    rank_y = _average_ranks(y) - (len(y) + 1) / 2.0
    scale = math.sqrt(float(rank_x @ rank_x) * float(rank_y @ rank_y))
    if scale == 0.0:
        return None
    return float(rank_x @ rank_y) / scale


def correlations(
    results: Sequence[ModelResult], engines: Sequence[str], threads: Sequence[int]
) -> list[Correlation]:
    """Per engine and thread count: ρ(multiply-adds, median) and ρ(MAC, median) over the zoo."""
    found = []
    for engine in engines:
        for count in threads:
            points = [
                (result.multiply_adds, result.memory_access, timing.median_ms)
                for result in results
                if (timing := result.timing(engine, count)) is not None
                and result.multiply_adds is not None
                and result.memory_access is not None
            ]
            if not points:
                continue
            madds, mac, latency = zip(*points, strict=True)
            found.append(
                Correlation(
                    engine=engine,
                    threads=count,
                    models=len(points),
                    multiply_adds_rho=spearman(madds, latency),
                    mac_rho=spearman(mac, latency),
                )
            )
    return found


def correlation_sentences(found: Sequence[Correlation]) -> list[str]:
    """Each correlation as plain sentences: one for multiply-adds (FLOPs), one for MAC."""

    def rho(value: float | None) -> str:
        return "undefined (every value ties)" if value is None else f"ρ = {value:+.2f}"

    sentences = []
    for item in found:
        where = f"{item.engine}, {item.threads} thread{'s' if item.threads > 1 else ''}"
        if item.models < MIN_MODELS_FOR_CORRELATION:
            sentences.append(
                f"**{where}**: only {item.models} model(s) measured, too few for a rank "
                "correlation."
            )
            continue
        text = (
            f"**{where}** ({item.models} models): multiply-adds (FLOPs) rank-correlate with "
            f"latency at Spearman {rho(item.multiply_adds_rho)}. "
            f"Memory access cost (MAC) rank-correlates with latency at {rho(item.mac_rho)}."
        )
        if item.multiply_adds_rho is not None and item.mac_rho is not None:
            best = max(item.multiply_adds_rho, item.mac_rho)
            gap = item.mac_rho - item.multiply_adds_rho
            if best < WEAK_CORRELATION:
                text += " Neither orders the models the way their latency does."
            elif abs(gap) < 0.05:
                text += " Both order the models about equally well."
            else:
                better = "MAC" if gap > 0 else "Multiply-adds"
                text += f" {better} predicts the latency ranking better here."
        sentences.append(text)
    return sentences


#: The int8 ratios a report shows when it timed both engines of one: (label, engine, over).
#: The issue's bars: our int8 build at most ORT's on the same QDQ model, and half our fp32.
INT8_RATIOS = (
    ("int8 vs ORT int8", "tvm-int8", "ort-int8"),
    ("int8 vs fp32", "tvm-int8", FP32_OF["tvm-int8"]),
)


def int8_ratios(engines: Sequence[str]) -> list[tuple[str, str, str]]:
    """The :data:`INT8_RATIOS` whose two engines were both timed."""
    return [item for item in INT8_RATIOS if item[1] in engines and item[2] in engines]


def engine_ratio(result: ModelResult, engine: str, over: str, threads: int) -> float | None:
    """``engine``'s median latency over ``over``'s, at the same thread count (same runs); None
    when either was not timed (or ``over``'s median is 0)."""
    timing, other = result.timing(engine, threads), result.timing(over, threads)
    if timing is None or other is None or not other.median_ms:
        return None
    return timing.median_ms / other.median_ms


def geomean(values: Sequence[float | None]) -> float | None:
    """The geometric mean of the ratios there are (None entries skipped); None without any."""
    present = [value for value in values if value is not None and value > 0]
    if not present:
        return None
    return math.exp(sum(math.log(value) for value in present) / len(present))
