"""A MobileOne ``torch.nn.Module`` whose ``state_dict`` keys are exactly Apple's.

Train blocks and deploy blocks are two classes with static forwards, so both forms script and trace
(no deleted attributes, unlike Apple's in-place re-parameterization).  Switching to deploy uses the
same pure state-dict fusion as the command line; fused parameters stay trainable.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from ..arch.specs import ArchSpec, BlockSpec, get_arch
from ..fuse.fusion import DEFAULT_EPS, fuse_state_dict
from ..rules.limits import MAX_STAGES

__all__ = ["MobileOne", "TrainBlock", "DeployBlock", "SqueezeExcite", "MeanPoolHead",
           "build_model", "deploy_copy", "MAX_STAGES"]


class SqueezeExcite(nn.Module):
    """Global average pool -> 1x1 reduce -> ReLU -> 1x1 expand -> sigmoid -> rescale."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = torch.sigmoid(self.expand(torch.relu(self.reduce(s))))
        return x * s


def _conv_bn(spec: BlockSpec, kernel_size: int, eps: float) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(spec.in_channels, spec.out_channels, kernel_size,
                                     spec.stride, kernel_size // 2, groups=spec.groups,
                                     bias=False))
    seq.add_module("bn", nn.BatchNorm2d(spec.out_channels, eps=eps))
    return seq


def _se(spec: BlockSpec) -> nn.Module:
    return SqueezeExcite(spec.out_channels, spec.se_channels) if spec.has_se else nn.Identity()


class TrainBlock(nn.Module):
    """Multi-branch MobileOne block: k conv+BN, a 1x1 scale conv+BN, an identity BN."""

    def __init__(self, spec: BlockSpec, eps: float = DEFAULT_EPS) -> None:
        super().__init__()
        self.spec = spec
        self.se = _se(spec)
        self.rbr_skip: Optional[nn.BatchNorm2d] = (
            nn.BatchNorm2d(spec.in_channels, eps=eps) if spec.has_identity else None)
        self.rbr_conv = nn.ModuleList(_conv_bn(spec, spec.kernel_size, eps)
                                      for _ in range(spec.conv_branches))
        self.rbr_scale: Optional[nn.Sequential] = (
            _conv_bn(spec, 1, eps) if spec.has_scale else None)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(1, dtype=x.dtype, device=x.device)
        if self.rbr_skip is not None:
            out = out + self.rbr_skip(x)
        if self.rbr_scale is not None:
            out = out + self.rbr_scale(x)
        for branch in self.rbr_conv:
            out = out + branch(x)
        return self.activation(self.se(out))


class DeployBlock(nn.Module):
    """The same block after fusion: one conv with bias (then SE and ReLU, never fused)."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.spec = spec
        self.se = _se(spec)
        self.reparam_conv = nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel_size,
                                      spec.stride, spec.padding, groups=spec.groups, bias=True)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.se(self.reparam_conv(x)))


class MobileOne(nn.Module):
    """MobileOne in train or deploy form.  ``forward`` returns logits, or the last feature map
    when the architecture has no head (``num_classes == 0``)."""

    def __init__(self, arch: ArchSpec, deploy: bool = False,
                 bn_eps: Optional[float] = None) -> None:
        super().__init__()
        self.arch = arch
        self.deploy = deploy
        self.bn_eps = bn_eps if bn_eps is not None else arch.eps
        if arch.num_stages > MAX_STAGES:
            raise ValueError(f"at most {MAX_STAGES} stages are supported, not {arch.num_stages}")
        self._build_blocks()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear: Optional[nn.Linear] = (
            nn.Linear(arch.head_channels, arch.num_classes) if arch.has_head else None)

    def _block(self, spec: BlockSpec) -> nn.Module:
        return DeployBlock(spec) if self.deploy else TrainBlock(spec, self.bn_eps)

    def _build_blocks(self) -> None:
        specs = self.arch.block_specs()
        self.stage0 = self._block(specs[0])
        for s in range(1, MAX_STAGES + 1):
            # Unused stage slots are parameter-free identities, so forward stays scriptable.
            stage = (nn.Sequential(*[self._block(b) for b in specs if b.stage == s])
                     if s <= self.arch.num_stages else nn.Identity())
            self.add_module(f"stage{s}", stage)

    def stages(self):
        """(name, module) of the stem and every real stage, in order."""
        return [(f"stage{s}", getattr(self, f"stage{s}"))
                for s in range(0, self.arch.num_stages + 1)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage0(x)
        x = self.stage1(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        x = self.stage5(x)
        x = self.stage6(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        if self.linear is None:
            return x
        return self.linear(torch.flatten(self.gap(x), 1))

    @torch.no_grad()
    def switch_to_deploy(self, eps: Optional[float] = None) -> "MobileOne":
        """Fuse every block in place (the model object stays the same) and return ``self``."""
        if self.deploy:
            return self
        ref = next(self.parameters())
        fused = fuse_state_dict(self.state_dict(), self.arch,
                                eps=self.bn_eps if eps is None else eps)
        self.deploy = True
        self._build_blocks()
        self.to(device=ref.device, dtype=ref.dtype)
        self.load_state_dict(fused, strict=True)
        return self


def build_model(arch, form: str = "train", num_classes: Optional[int] = None,
                bn_eps: Optional[float] = None) -> MobileOne:
    """``arch`` is an :class:`ArchSpec` or a built-in name ('s0'..'s4')."""
    spec = get_arch(arch, num_classes) if isinstance(arch, str) else (
        arch if num_classes is None else arch.with_classes(num_classes))
    if form not in ("train", "deploy"):
        raise ValueError(f"form must be 'train' or 'deploy', not {form!r}")
    return MobileOne(spec, deploy=(form == "deploy"), bn_eps=bn_eps)


def deploy_copy(model: MobileOne, eps: Optional[float] = None) -> MobileOne:
    """A fused copy of ``model``; the original is left untouched."""
    clone = copy.deepcopy(model)
    clone.switch_to_deploy(eps)
    clone.train(model.training)
    return clone


class MeanPoolHead(nn.Module):
    """``model``'s function with the head written as ``linear(x.mean((2, 3)))``.

    The same computation as ``linear(flatten(AdaptiveAvgPool2d(1)(x), 1))``, in a form every
    mobile lowering accepts: litert-torch cannot lower the flatten with a dynamic batch.  The
    children are ``model``'s own (shared, not copied), registered under the same names, so
    ``state_dict`` keys are exactly the model's and exporters name constants after them.
    """

    def __init__(self, model: MobileOne) -> None:
        super().__init__()
        self.arch = model.arch
        for name, child in model.named_children():
            if name != "gap":
                self.add_module(name, child)
        if model.linear is None:  # headless: not a registered child
            self.linear: Optional[nn.Linear] = None
        self.train(model.training)

    forward_features = MobileOne.forward_features  # the same stages, the same order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        if self.linear is None:
            return x
        return self.linear(x.mean((2, 3)))
