"""How far a quantized model's outputs are from the fp32 model's on the same images.

Three numbers per image set: top-1 agreement (the share of samples — of pixels, for a
segmentation output — whose arg-max class is the same; ties shared, see
:func:`top1_agreement`), the mean cosine similarity of the logits per sample, and the SQNR in dB
(fp32 output energy over the energy of the difference, over the whole set). With a user's
trained weights they are the accuracy users expect; with the zoo's seeded random weights they
still check the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Agreement:
    """The quantized vs the fp32 outputs on one image set."""

    images: int
    top1_agreement: float
    cosine_similarity: float
    #: ``inf`` when the outputs are identical
    sqnr_db: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "top1_agreement": self.top1_agreement,
            "cosine_similarity": self.cosine_similarity,
            # JSON has no infinity: identical outputs are ``null`` (and say so in "exact")
            "sqnr_db": self.sqnr_db if math.isfinite(self.sqnr_db) else None,
            "exact": not math.isfinite(self.sqnr_db),
        }


@dataclass(frozen=True)
class AccuracyReport:
    """The quantized model vs fp32 on the calibration and on the held-out images."""

    calibration: Agreement
    held_out: Agreement
    calibration_images: tuple[str, ...]
    held_out_images: tuple[str, ...]
    images_from: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": "fp32 model in ONNX Runtime",
            "images_from": self.images_from,
            "calibration": {**self.calibration.to_dict(), "files": list(self.calibration_images)},
            "held_out": {**self.held_out.to_dict(), "files": list(self.held_out_images)},
        }


def compare_outputs(reference: np.ndarray, quantized: np.ndarray) -> Agreement:
    """``quantized`` vs ``reference``, both shaped (samples, classes, ...)."""
    if reference.shape != quantized.shape:
        raise ValueError(f"output shapes differ: {reference.shape} vs {quantized.shape}")
    reference = reference.astype(np.float64)
    quantized = quantized.astype(np.float64)
    top1 = top1_agreement(reference, quantized)
    flat_ref = reference.reshape(len(reference), -1)
    flat_q = quantized.reshape(len(quantized), -1)
    norms = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_q, axis=1)
    # An all-zero output on both sides agrees; on one side only it does not.
    same = np.all(flat_ref == flat_q, axis=1)
    dots = np.sum(flat_ref * flat_q, axis=1)
    cosine = np.where(same, 1.0, dots / np.where(norms > 0, norms, 1.0))
    noise = float(np.sum((reference - quantized) ** 2))
    signal = float(np.sum(reference**2))
    sqnr = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-300) / noise)
    return Agreement(len(reference), top1, float(np.mean(cosine)), sqnr)


def top1_agreement(reference: np.ndarray, quantized: np.ndarray) -> float:
    """The share of samples (pixels) whose fp32 top-1 class is also the quantized top-1.

    A quantized output is a multiple of its scale, so classes whose fp32 logits differ by less
    than a step tie at the top (the zoo's random-weight classifiers, whose logits hardly depend
    on the image, tie by the handful). A tie of k classes that holds the fp32 class counts 1/k:
    the agreement a random pick among them would have, where arg-max's pick of the lowest index
    would count 0 or 1 by the classes' numbering.
    """
    classes = reference.shape[1]
    ref = np.moveaxis(reference, 1, -1).reshape(-1, classes)
    quant = np.moveaxis(quantized, 1, -1).reshape(-1, classes)
    at_top = quant == quant.max(axis=1, keepdims=True)
    picked = at_top[np.arange(len(ref)), ref.argmax(axis=1)]
    return float(np.mean(picked / at_top.sum(axis=1)))


def format_accuracy(report: AccuracyReport) -> str:
    """The report as a text table: one row per image set."""
    from edgecompile._table import format_table

    rows = [
        (
            label,
            str(agreement.images),
            f"{agreement.top1_agreement:.1%}",
            f"{agreement.cosine_similarity:.4f}",
            f"{agreement.sqnr_db:.1f}" if math.isfinite(agreement.sqnr_db) else "exact",
        )
        for label, agreement in (
            ("calibration", report.calibration),
            ("held-out", report.held_out),
        )
    ]
    headers = ("int8 vs fp32", "images", "top-1 agreement", "cosine", "SQNR dB")
    return format_table(headers, rows)
