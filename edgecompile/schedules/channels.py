"""The lane-order model of the channel-blocked NCHW[x]c layout: which lane of a blocked tensor
holds which channel (:class:`ChannelOrder`), how a grouped conv maps its groups onto blocks
(:func:`grouped_layout`), and the orders ShuffleNet's channel split and shuffle call for
(:func:`split_order`, :func:`unshuffled`). Plain numpy: no IR here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from edgecompile.schedules.compute import ceil_div


@dataclass(frozen=True, eq=False)
class ChannelOrder:
    """Which lane of a blocked tensor holds each logical channel: ``lanes[c]`` is the flat lane
    ``block * x + lane`` of channel ``c``, out of ``total`` lanes (the rest are padding).

    The identity (channel ``c`` in lane ``c``, padding at the end) is what a pack makes. A
    grouped conv may pad each group to whole blocks, and a channel shuffle only permutes
    ``lanes``: the data stays where it is and every consumer reads through the order (weights
    packed by lane, a grouped conv's channel table), so the shuffle moves no memory.
    """

    lanes: np.ndarray
    total: int

    @staticmethod
    def identity(channels: int, block: int) -> ChannelOrder:
        return ChannelOrder(np.arange(channels), ceil_div(channels, block) * block)

    def is_identity(self, block: int) -> bool:
        identity = ChannelOrder.identity(len(self.lanes), block)
        return self.same(identity)

    def same(self, other: ChannelOrder) -> bool:
        return self.total == other.total and np.array_equal(self.lanes, other.lanes)

    def channel_of_lane(self) -> np.ndarray:
        """Inverse: the logical channel in each lane, -1 for padding lanes."""
        inverse = np.full(self.total, -1, dtype=np.int64)
        inverse[self.lanes] = np.arange(len(self.lanes))
        return inverse

    def block_span(self, block: int) -> tuple[int, int]:
        """``(first, end)``: the range of blocks holding this order's channels. Narrower than
        all ``total // block`` blocks for a channel slice of a wider tensor."""
        if len(self.lanes) == 0:
            return 0, 0
        return int(self.lanes.min()) // block, int(self.lanes.max()) // block + 1

    def within(self, first: int, end: int, block: int) -> ChannelOrder:
        """The same channels seen from a view of blocks ``[first, end)`` only."""
        return ChannelOrder(self.lanes - first * block, (end - first) * block)

    def sliced(self, begin: int, end: int) -> ChannelOrder:
        """Channels ``begin:end``: the same lanes of the same tensor, so slicing moves no data
        (the lanes left out still hold other channels; every consumer reads through the
        order, and convs give them zero weights)."""
        return ChannelOrder(self.lanes[begin:end], self.total)

    def shuffled(self, groups: int) -> ChannelOrder:
        """The order after ShuffleNet's channel shuffle (reshape to ``(g, C/g)``, transpose,
        flatten): shuffled channel ``k`` is channel ``(k % g) * (C/g) + k // g``."""
        channels = len(self.lanes)
        per_group = channels // groups
        shuffled = np.arange(channels)
        return ChannelOrder(
            self.lanes[(shuffled % groups) * per_group + shuffled // groups], self.total
        )


@dataclass(frozen=True, eq=False)
class GroupedLayout:
    """How a grouped conv maps onto blocks: where its output channels go, which input channels
    each row of its channel table reads (-1: none; the weight is zero there), how many
    consecutive output blocks share a row, and the lane multiply-adds computed per useful one."""

    out_order: ChannelOrder
    rows: np.ndarray
    blocks_per_row: int
    waste: float


def grouped_layout(
    out_channels: int,
    groups: int,
    in_per_group: int,
    block: int,
    *,
    plain_order: bool = False,
    taps: int = 1,
) -> GroupedLayout:
    """The cheaper of two ways to give every output block one set of broadcast inputs.

    Output lanes must share their input channels (one broadcast feeds a whole vector of output
    channels). When a group's output channels are a whole number of blocks that is free. Else
    either (a) keep the channels in order and let a block read the union of the groups it
    straddles (zero weights for the other groups' lanes), or (b) pad every group to whole
    blocks, so the output carries padding lanes in the middle. Cost = output blocks × table
    width; ties keep the plain order, which every consumer reads without help.

    ``plain_order``: the output meets another tensor lane by lane (a residual add, a concat;
    :func:`~edgecompile.schedules.grouped_uses.grouped_output_uses`), where (b)'s order costs a
    pass of glue, about one step per channel and pixel (the other operand permuted into (b)'s
    lanes, or a concat gathering lanes instead of running in place). Then (a) is kept unless
    its extra vector multiply-adds per pixel (over the window's ``taps``) outnumber the
    channels: ShuffleNet v1 g8 ×0.25's 24 → 96 convs (12 extra) and g4 ×0.5's 68 → 272 (238)
    keep the plain order; g4 ×1.5's 104 → 416 (624) pads, 3% faster for the model.
    """
    per_group = out_channels // groups
    group_inputs = np.arange(groups * in_per_group).reshape(groups, in_per_group)
    if per_group % block == 0:
        return GroupedLayout(
            ChannelOrder.identity(out_channels, block), group_inputs, per_group // block, 1.0
        )
    out_blocks = ceil_div(out_channels, block)
    windows = []
    for index in range(out_blocks):
        first = index * block // per_group
        last = (min(out_channels, index * block + block) - 1) // per_group
        windows.append(np.arange(first * in_per_group, (last + 1) * in_per_group))
    width = max(len(window) for window in windows)
    rows = np.full((out_blocks, width), -1, dtype=np.int64)
    for index, window in enumerate(windows):
        rows[index, : len(window)] = window
    in_order = GroupedLayout(ChannelOrder.identity(out_channels, block), rows, 1, 0.0)
    useful = out_channels * in_per_group
    blocks_per_group = ceil_div(per_group, block)
    lanes = (np.arange(out_channels) // per_group) * blocks_per_group * block + np.arange(
        out_channels
    ) % per_group
    padded = GroupedLayout(
        ChannelOrder(lanes, groups * blocks_per_group * block), group_inputs, blocks_per_group, 0.0
    )

    def cost(layout: GroupedLayout) -> int:  # vector multiply-adds per output pixel and tap
        return layout.out_order.total // block * layout.rows.shape[1]

    keep_plain = plain_order and (cost(in_order) - cost(padded)) * taps <= out_channels
    best = in_order if keep_plain else min((in_order, padded), key=cost)
    return GroupedLayout(
        best.out_order,
        best.rows,
        best.blocks_per_row,
        best.out_order.total * best.rows.shape[1] / useful,
    )


def channel_table(layout: GroupedLayout, in_order: ChannelOrder) -> np.ndarray:
    """The grouped conv's int32 table: the input lane of each row's reduction steps (lane 0
    for an empty step, whose weights are zero)."""
    lanes = np.where(layout.rows >= 0, in_order.lanes[np.maximum(layout.rows, 0)], 0)
    return lanes.astype("int32")


def split_order(channels: int, ranges: list[tuple[int, int]], block: int) -> ChannelOrder | None:
    """Lanes for a tensor that is only read in the channel ``ranges`` (disjoint slices): every
    range, and every stretch between them, starts on a block of its own, so each slice is a run
    of whole blocks that a conv reads alone. None for overlapping ranges."""
    cuts = sorted({0, channels, *(b for r in ranges for b in r)})
    ordered = sorted(ranges)
    if any(a[1] > b[0] for a, b in itertools.pairwise(ordered)):
        return None
    lanes = np.zeros(channels, dtype=np.int64)
    base = 0
    for first, end in itertools.pairwise(cuts):
        lanes[first:end] = base + np.arange(end - first)
        base += ceil_div(end - first, block) * block
    return ChannelOrder(lanes, base)


def unshuffled(order: ChannelOrder, groups: int) -> ChannelOrder:
    """The order a tensor needs so that after ShuffleNet's channel shuffle its channels sit in
    ``order`` (the inverse of :meth:`ChannelOrder.shuffled`): channel ``j`` becomes shuffled
    channel ``(j % (C/g)) * g + j // (C/g)``: the shuffle over ``C/g`` groups."""
    return order.shuffled(len(order.lanes) // groups)
