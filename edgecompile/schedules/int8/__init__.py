"""int8: a QDQ model's ``dequantize → conv2d (+ bias) (+ ReLU/Clip) → quantize`` folded into
integer convs (u8/s8 × s8 products, int32 accumulation, requantized like ONNX Runtime).

TVM's ONNX frontend imports a QDQ model (``edgecompile quantize``) as ``R.quantize`` /
``R.dequantize`` around fp32 ``conv2d``: the weights are dequantized at run time and every conv
runs in fp32, slower than the fp32 model. :func:`fold_int8_convs` (a pass before the layout
pass) replaces each foldable chain, ending at its ``quantize``, with one integer conv.

- ``glue.py`` (a pass before the folding one): reshapes, transposes, slices, concats and max
  pools moved from fp32 between ``dequantize``/``quantize`` onto the integers;
- ``graph.py``: which chains fold, with what integers and scales, and why the others do not;
  each output's quantization step (an int8 build is verified in those steps);
- ``compute.py``: the integer conv as a TE compute (NCHW; channel-blocked for VNNI and
  AVX2, its weights packed at fold time);
- ``layouts.py``: which folded kernels (and the integer concats and max pools between them)
  hand each other the blocked uint8 activation ``[N, C/16, H, W, 16]`` (no unpack/repack
  between them) instead of NCHW;
- ``folding.py``: the Relax pass;
- ``schedule.py``: the conv's schedules (a register tile of output channels × pixels; on
  AVX-512 VNNI, of output blocks × pixels on ``vpdpbusd``, and for a depthwise conv of one
  16-channel block × pixels, widened to int32);
- ``neon.py``: the blocked conv on ARM (``sdot`` with ``+dotprod``, else ``smull``/``vmull``), its
  compute, weights and rules, and the rules of the blocked depthwise conv on ARM (``smlal``,
  ``vmlal.s16``); ``neon_intrinsics.py``: their tensor intrinsics;
- ``intrinsics.py``: the ``vpdpbusd`` tensor intrinsic (TVM's own passes an older LLVM's
  operand types); ``avx2_intrinsics.py``: AVX2's exact one (``vpmaddwd`` on int16 pairs).

The classifier's ``matmul`` (ONNX Gemm) folds too, as a 1×1 conv on ``[N, K, 1, 1]``.
"""

from edgecompile.schedules.int8.folding import KERNEL_NAME, fold_int8_convs
from edgecompile.schedules.int8.graph import VERIFY_STEPS, Int8Log, output_steps
from edgecompile.schedules.int8.neon import (
    INT8_NEON_DEPTHWISE_SCHEDULE,
    INT8_SDOT_SCHEDULE,
    INT8_SMULL_SCHEDULE,
    INT8_VMLAL_DEPTHWISE_SCHEDULE,
    INT8_VMULL_SCHEDULE,
    Int8ConvSdot,
    Int8ConvSmull,
    Int8ConvVmull,
    Int8DepthwiseNeon,
    Int8DepthwiseVmlal,
)
from edgecompile.schedules.int8.schedule import (
    INT8_AVX2_SCHEDULE,
    INT8_DEPTHWISE_SCHEDULE,
    INT8_SCHEDULE,
    INT8_UNSCHEDULED,
    INT8_VNNI_SCHEDULE,
    Int8ConvAvx2,
    Int8ConvBlocked,
    Int8ConvNCHW,
    Int8DepthwiseBlocked,
)

__all__ = [
    "INT8_AVX2_SCHEDULE",
    "INT8_DEPTHWISE_SCHEDULE",
    "INT8_NEON_DEPTHWISE_SCHEDULE",
    "INT8_SCHEDULE",
    "INT8_SDOT_SCHEDULE",
    "INT8_SMULL_SCHEDULE",
    "INT8_UNSCHEDULED",
    "INT8_VMLAL_DEPTHWISE_SCHEDULE",
    "INT8_VMULL_SCHEDULE",
    "INT8_VNNI_SCHEDULE",
    "KERNEL_NAME",
    "VERIFY_STEPS",
    "Int8ConvAvx2",
    "Int8ConvBlocked",
    "Int8ConvNCHW",
    "Int8ConvSdot",
    "Int8ConvSmull",
    "Int8ConvVmull",
    "Int8DepthwiseBlocked",
    "Int8DepthwiseNeon",
    "Int8DepthwiseVmlal",
    "Int8Log",
    "fold_int8_convs",
    "output_steps",
]
