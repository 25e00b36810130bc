"""CondenseNet, in its training form (learned group convolutions) and its condensed deploy form.

Huang, Liu, van der Maaten and Weinberger, "CondenseNet: An Efficient DenseNet using Learned Group
Convolutions", CVPR 2018 (arXiv:1711.09224). Layer layout, initialisation, the L1 group-selection
rule and the conversion follow the authors' code (ShichenLiu/CondenseNet: ``layers.py``,
``models/condensenet.py``, ``models/condensenet_converted.py``, ``utils.convert_model``).

Training form: each dense layer's 1×1 conv is a :class:`LearnedGroupConv`, a dense conv whose
weight is multiplied by a 0/1 mask. Output channel ``o`` belongs to group ``o % G`` (interleaved,
which is a contiguous group conv followed by a channel shuffle); at each of the ``C - 1``
condensation stages every group drops the ``in / C`` input channels of least L1 weight, so after
the last stage each group reads ``in / C`` inputs. The classifier likewise loses half its input
features at the final stage.

Deploy form (:func:`condense`): each learned group conv becomes gather-of-kept-inputs → BN → ReLU
→ standard group conv → channel shuffle, and the classifier a gather → smaller Linear; the outputs
equal the training form's at its final stage.

Deviations from the authors' code, all output-neutral for a model trained to the final stage:
the classifier's feature pruning is a mask applied at the final stage (the authors drop the
features only at conversion, so their converted model's logits differ from the trained one's);
a jump over several stages drops once per stage (theirs drops once); the global pool is adaptive
(same as their 7×7 pool at 224×224); no dropout inside the learned conv (their default is 0).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from edgecompile.zoo.layers import ChannelShuffle
from edgecompile.zoo.registry import register_model

__all__ = [
    "CONDENSENET74_STAGES",
    "BnReluConv",
    "CondenseNet",
    "CondenseNetConfig",
    "CondenseStageSpec",
    "CondensedGroupConv",
    "CondensedLinear",
    "LearnedGroupConv",
    "MaskedConv2d",
    "MaskedLinear",
    "condense",
    "condensenet74",
]


@dataclass(frozen=True)
class CondenseStageSpec:
    """One dense block: ``layers`` dense layers, each adding ``growth`` channels."""

    layers: int
    growth: int


@dataclass(frozen=True)
class CondenseNetConfig:
    """A CondenseNet: its dense blocks and the learned-group-convolution hyper-parameters."""

    stages: tuple[CondenseStageSpec, ...]
    groups: int  # G: groups of the learned 1×1 conv and of the 3×3 group conv
    condense_factor: int  # C: each group of a 1×1 conv keeps 1/C of its inputs
    bottleneck: int = 4  # the 1×1 conv widens to bottleneck × growth channels
    classifier_keep: float = 0.5  # fraction of the classifier's input features kept

    @property
    def stem_channels(self) -> int:
        return 2 * self.stages[0].growth


# Paper Table 1, ImageNet: "increasing growth rate" (doubling per block) with exponentially growing
# block depth, 74 layers counting every conv: 2 × 36 dense-layer convs + stem + classifier.
CONDENSENET74_STAGES: tuple[CondenseStageSpec, ...] = (
    CondenseStageSpec(layers=4, growth=8),
    CondenseStageSpec(layers=6, growth=16),
    CondenseStageSpec(layers=8, growth=32),
    CondenseStageSpec(layers=10, growth=64),
    CondenseStageSpec(layers=8, growth=128),
)


class BnReluConv(nn.Sequential):
    """Pre-activation BN → ReLU → conv (DenseNet order), unlike the shared post-activation
    ``ConvBnAct``: dense layers normalise the concatenated features they read."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        groups: int = 1,
        stride: int = 1,
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )


class MaskedConv2d(nn.Conv2d):
    """A Conv2d whose weight is multiplied by a fixed 0/1 ``mask`` buffer of the same shape.

    A Conv2d subclass, so hook-based counters see it (as the dense conv it computes).
    """

    mask: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias=False)
        self.register_buffer("mask", torch.ones_like(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class MaskedLinear(nn.Linear):
    """A Linear whose input features can be switched off by a 0/1 per-feature ``mask`` buffer."""

    mask: torch.Tensor

    def __init__(self, in_features: int, out_features: int, *, keep: float = 0.5) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mask", torch.ones(in_features))
        self.kept_features = int(in_features * keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)

    @property
    def pruned(self) -> bool:
        return int(self.mask.sum().item()) != self.in_features

    @torch.no_grad()
    def prune(self) -> None:
        """Keep the ``kept_features`` inputs of largest column L1 norm (``CondensingLinear``)."""
        if self.pruned:
            return
        scores = self.weight.abs().sum(0)
        # Stable sort so equal scores (say, a zero-initialised weight) still select the same set.
        order = torch.sort(scores, descending=True, stable=True).indices
        self.mask.zero_()
        self.mask[order[: self.kept_features]] = 1.0

    def kept_index(self) -> torch.Tensor:
        """The kept input features in ascending order; checks the mask is a valid pruning."""
        _check_binary(self.mask, "classifier")
        index = torch.nonzero(self.mask).flatten()
        if len(index) not in (self.kept_features, self.in_features):
            raise ValueError(
                f"the classifier mask keeps {len(index)} of {self.in_features} features, "
                f"expected {self.kept_features}; was it edited by hand?"
            )
        return index


class LearnedGroupConv(nn.Module):
    """BN → ReLU → masked 1×1 conv whose connectivity is learned in ``condense_factor - 1`` stages.

    Paper §3.1. The mask is shared by all output channels of a group; ``stage`` counts the
    condensation stages done so far (``condense_factor - 1`` is the last).
    """

    stage: torch.Tensor

    def __init__(
        self, in_channels: int, out_channels: int, *, groups: int, condense_factor: int
    ) -> None:
        super().__init__()
        if in_channels % condense_factor:
            raise ValueError(
                f"{in_channels} inputs do not split by condense factor {condense_factor}"
            )
        if out_channels % groups:
            raise ValueError(f"{out_channels} outputs do not split into {groups} groups")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.groups = groups
        self.condense_factor = condense_factor
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = MaskedConv2d(in_channels, out_channels, 1)
        self.register_buffer("stage", torch.zeros((), dtype=torch.long))

    @property
    def final_stage(self) -> int:
        return self.condense_factor - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.relu(self.norm(x)))

    @torch.no_grad()
    def advance_to(self, stage: int) -> None:
        """Run the condensation stages up to ``stage``: each drops, in every group, the
        ``in / C`` still-kept inputs of least L1 weight magnitude (paper Eq. (1))."""
        stage = min(stage, self.final_stage)
        if int(self.stage) >= stage:
            return
        group_mask = self._group_mask()
        # Rows o = k * G + g, so this view puts group g's outputs at [:, g, :]. A group's outputs
        # share one mask, so the masked L1 norm is the unmasked one wherever the mask is 1.
        weight = self.conv.weight[:, :, 0, 0].abs().reshape(-1, self.groups, self.in_channels)
        importance = weight.sum(0)
        drop = self.in_channels // self.condense_factor
        while int(self.stage) < stage:
            # Dropped inputs score inf so they are never picked again; the stable sort breaks
            # ties (say, equal zero weights) by channel order, so the selection is deterministic.
            scores = importance.masked_fill(group_mask == 0, math.inf)
            dropped = torch.sort(scores, dim=1, stable=True).indices[:, :drop]
            group_mask = group_mask.scatter(1, dropped, 0.0)
            self.stage += 1
        self.conv.mask.view(-1, self.groups, self.in_channels)[:] = group_mask

    def _group_mask(self) -> torch.Tensor:
        """The (groups, inputs) 0/1 mask; checks all outputs of a group share one input set."""
        per_output = self.conv.mask[:, :, 0, 0].reshape(-1, self.groups, self.in_channels)
        group_mask = per_output[0].clone()
        if not bool((per_output == group_mask).all()):
            raise ValueError(
                "learned group conv mask differs between outputs of one group; "
                "a group's outputs must share one input set"
            )
        _check_binary(group_mask, "learned group conv")
        return group_mask

    def group_lasso_loss(self) -> torch.Tensor:
        """Paper §3.1 group-lasso regulariser: sum over (group, input) of the weight column's L2."""
        weight = (self.conv.weight * self.conv.mask)[:, :, 0, 0].pow(2)
        per_group = weight.reshape(self.out_channels // self.groups, self.groups, self.in_channels)
        return per_group.sum(0).clamp(min=1e-6).sqrt().sum()

    def kept_inputs(self) -> torch.Tensor:
        """(groups, inputs per group): each group's kept inputs in ascending order, final stage."""
        group_mask = self._group_mask()
        per_group = self.in_channels // self.condense_factor
        counts = group_mask.sum(1).long().tolist()
        if any(count != per_group for count in counts):
            raise ValueError(
                f"learned group conv groups keep {counts} inputs, expected {per_group} each "
                "(the final condensation stage)"
            )
        # nonzero() lists row by row, ascending within a row.
        return torch.nonzero(group_mask)[:, 1].reshape(self.groups, per_group)


class CondensedGroupConv(nn.Module):
    """Deploy form of :class:`LearnedGroupConv`: gather kept inputs → BN → ReLU → group conv →
    shuffle (the authors' ``CondenseConv``).

    ``index`` is a constant int64 buffer, so the gather exports as an ONNX Gather with a constant
    index. An input kept by several groups appears once per group.
    """

    index: torch.Tensor

    def __init__(
        self, in_channels: int, out_channels: int, *, groups: int, condense_factor: int
    ) -> None:
        super().__init__()
        self.source_channels = in_channels
        self.in_channels = in_channels * groups // condense_factor
        self.out_channels = out_channels
        self.groups = groups
        self.register_buffer("index", torch.zeros(self.in_channels, dtype=torch.long))
        self.norm = nn.BatchNorm2d(self.in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(self.in_channels, out_channels, 1, groups=groups, bias=False)
        # The group conv emits group-contiguous channels; the shuffle interleaves them back to the
        # training form's order (output o of group o % G).
        self.shuffle = ChannelShuffle(groups, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.index_select(x, 1, self.index)
        return self.shuffle(self.conv(self.relu(self.norm(x))))

    @torch.no_grad()
    def load_from(self, learned: LearnedGroupConv) -> None:
        """Copy a final-stage :class:`LearnedGroupConv`'s kept weights and BN statistics."""
        kept = learned.kept_inputs()  # (groups, inputs per group)
        per_out = self.out_channels // self.groups
        weight = learned.conv.weight[:, :, 0, 0].reshape(per_out, self.groups, -1)
        # Training-form output k * G + g becomes group-contiguous output g * per_out + k here;
        # the shuffle in forward() undoes that reordering.
        gathered = torch.gather(weight, 2, kept.expand(per_out, -1, -1))
        self.conv.weight.copy_(gathered.transpose(0, 1).reshape(self.conv.weight.shape))
        index = kept.flatten()
        self.index.copy_(index)
        _copy_batch_norm(learned.norm, self.norm, index)


class CondensedLinear(nn.Module):
    """Deploy form of :class:`MaskedLinear`: gather the kept features, then a smaller Linear."""

    index: torch.Tensor

    def __init__(self, in_features: int, out_features: int, *, keep: float = 0.5) -> None:
        super().__init__()
        kept = int(in_features * keep)
        self.register_buffer("index", torch.zeros(kept, dtype=torch.long))
        self.linear = nn.Linear(kept, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.index_select(x, 1, self.index))

    @torch.no_grad()
    def load_from(self, masked: MaskedLinear) -> None:
        index = masked.kept_index()
        if len(index) != len(self.index):
            raise ValueError("the classifier is not pruned; run finish_condensation() first")
        self.index.copy_(index)
        self.linear.weight.copy_(masked.weight[:, index])
        self.linear.bias.copy_(masked.bias)


class DenseLayer(nn.Module):
    """Learned 1×1 group conv to ``bottleneck × growth`` channels, 3×3 group conv to ``growth``,
    concatenated onto the input (dense connectivity)."""

    def __init__(
        self, in_channels: int, growth: int, config: CondenseNetConfig, *, condensed: bool
    ) -> None:
        super().__init__()
        width = config.bottleneck * growth
        layer = CondensedGroupConv if condensed else LearnedGroupConv
        self.conv_1 = layer(
            in_channels, width, groups=config.groups, condense_factor=config.condense_factor
        )
        # The 3×3 conv is a plain group conv; its groups are fixed, not learned (paper §3.1).
        self.conv_2 = BnReluConv(width, growth, 3, groups=config.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv_2(self.conv_1(x))], 1)


class CondenseNet(nn.Module):
    """CondenseNet for ImageNet: 3×3/2 stem, dense blocks joined by 2×2 average pools, BN-ReLU,
    global pool, classifier.

    ``condensed=False`` builds the training form, ``condensed=True`` the deploy form's skeleton
    (indices and weights are filled by :func:`condense`, or by loading a condensed checkpoint).
    """

    def __init__(
        self, config: CondenseNetConfig, *, num_classes: int = 1000, condensed: bool = False
    ) -> None:
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.condensed = condensed
        self.features = nn.Sequential()
        channels = config.stem_channels
        # No BN after the stem: the first dense layer's pre-activation normalises it.
        self.features.add_module(
            "init_conv", nn.Conv2d(3, channels, 3, stride=2, padding=1, bias=False)
        )
        last = len(config.stages) - 1
        for index, stage in enumerate(config.stages):
            block = nn.Sequential()
            for layer in range(stage.layers):
                block.add_module(
                    f"denselayer_{layer + 1}",
                    DenseLayer(channels, stage.growth, config, condensed=condensed),
                )
                channels += stage.growth
            self.features.add_module(f"denseblock_{index + 1}", block)
            if index != last:
                # Transitions only pool: unlike DenseNet there is no 1×1 compression (paper §4).
                self.features.add_module(f"transition_{index + 1}", nn.AvgPool2d(2, stride=2))
        self.features.add_module("norm_last", nn.BatchNorm2d(channels))
        self.features.add_module("relu_last", nn.ReLU())
        self.features.add_module("pool_last", nn.AdaptiveAvgPool2d(1))
        self.num_features = channels
        linear = CondensedLinear if condensed else MaskedLinear
        self.classifier = linear(channels, num_classes, keep=config.classifier_keep)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He init over fan-out, as the authors' code.
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))

    def learned_convs(self) -> list[LearnedGroupConv]:
        return [m for m in self.modules() if isinstance(m, LearnedGroupConv)]

    @property
    def condensation_stage(self) -> int:
        """The stage every learned conv has reached (``condense_factor - 1`` is final)."""
        self._require_training_form("condensation_stage")
        return min(int(m.stage) for m in self.learned_convs())

    def update_condensation(self, progress: float) -> None:
        """Advance the condensation schedule to training ``progress`` in [0, 1].

        The paper spends the first half of training in ``C - 1`` equal condensation stages and the
        second half optimising the final sparse structure; call this every iteration.
        """
        self._require_training_form("update_condensation")
        factor = self.config.condense_factor
        stage = min(factor - 1, math.floor(2.0 * progress * (factor - 1)))
        for module in self.learned_convs():
            module.advance_to(stage)
        if stage == factor - 1:
            self.classifier.prune()

    def finish_condensation(self) -> None:
        """Jump to the final stage (in place), as :func:`condense` does before converting."""
        self.update_condensation(1.0)

    def group_lasso_loss(self) -> torch.Tensor:
        self._require_training_form("group_lasso_loss")
        return torch.stack([m.group_lasso_loss() for m in self.learned_convs()]).sum()

    def _require_training_form(self, what: str) -> None:
        if self.condensed:
            raise ValueError(f"{what} needs the training form; this CondenseNet is condensed")


def condense(model: nn.Module) -> CondenseNet:
    """The deploy form of a training-form :class:`CondenseNet`, at any condensation stage.

    The input is not modified: a copy is brought to the final stage (L1 group selection for the
    stages still to run, then the classifier's feature pruning) and converted. The result's
    outputs equal those of ``model`` after :meth:`CondenseNet.finish_condensation` (in eval mode,
    to float rounding); it keeps ``model``'s train/eval mode.
    """
    if not isinstance(model, CondenseNet):
        raise TypeError(f"condense() needs a training-form CondenseNet, got {type(model).__name__}")
    if model.condensed:
        raise ValueError("condense() got a CondenseNet that is already condensed")
    source = copy.deepcopy(model)
    source.finish_condensation()
    target = CondenseNet(model.config, num_classes=model.num_classes, condensed=True)
    converted: list[str] = []
    for name, module in target.named_modules():
        if isinstance(module, CondensedGroupConv | CondensedLinear):
            module.load_from(source.get_submodule(name))
            converted.append(f"{name}.")
    # Everything else (stem, 3×3 convs and their BNs, final BN) is unchanged, name for name.
    rest = {
        key: value
        for key, value in source.state_dict().items()
        if not key.startswith(tuple(converted))
    }
    result = target.load_state_dict(rest, strict=False)
    unfilled = [key for key in result.missing_keys if not key.startswith(tuple(converted))]
    if unfilled or result.unexpected_keys:
        raise RuntimeError(f"condense() left {unfilled} unfilled, {result.unexpected_keys} extra")
    return target.train(model.training)


def condensenet74(
    *,
    groups: int = 4,
    condense_factor: int | None = None,
    num_classes: int = 1000,
    condensed: bool = True,
) -> CondenseNet:
    """CondenseNet-74 (paper Table 1, ImageNet) with G = ``groups`` and C = ``condense_factor``
    (default C = G, the paper's setting); ``condensed`` picks the deploy or the training form.

    The deploy form is made the way a user makes it: a (seeded) training-form model condensed by
    :func:`condense`.
    """
    config = CondenseNetConfig(
        stages=CONDENSENET74_STAGES,
        groups=groups,
        condense_factor=groups if condense_factor is None else condense_factor,
    )
    model = CondenseNet(config, num_classes=num_classes)
    return condense(model) if condensed else model


def _check_binary(mask: torch.Tensor, what: str) -> None:
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"the {what} mask holds values other than 0 and 1")


def _copy_batch_norm(source: nn.BatchNorm2d, target: nn.BatchNorm2d, index: torch.Tensor) -> None:
    target.eps = source.eps
    target.momentum = source.momentum
    target.weight.copy_(source.weight[index])
    target.bias.copy_(source.bias[index])
    target.running_mean.copy_(source.running_mean[index])
    target.running_var.copy_(source.running_var[index])
    target.num_batches_tracked.copy_(source.num_batches_tracked)


for _groups in (4, 8):
    register_model(
        f"condensenet74_c{_groups}_g{_groups}",
        condensenet74,
        family="condensenet",
        input_size=(224, 224),
        description=f"CondenseNet-74 (Huang et al. 2018), C=G={_groups}, condensed for deployment",
        groups=_groups,
        condense_factor=_groups,
        condensed=True,
    )
    register_model(
        f"condensenet74_c{_groups}_g{_groups}_train",
        condensenet74,
        family="condensenet",
        input_size=(224, 224),
        description=f"CondenseNet-74, C=G={_groups}, training form (learned group convolutions)",
        groups=_groups,
        condense_factor=_groups,
        condensed=False,
    )
