"""Networks of the tests written with plain nn.Conv2d / nn.BatchNorm2d under Apple, timm and
mmpretrain names (typed in here, not taken from the package): a configurable multi-branch block,
stacked FastViT-style with RepMixer-like token mixers, and randomize() for weights and BatchNorm
statistics.  Used by test_generic (the --generic fusion), test_cli and test_width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NAMES = {
    "apple": dict(conv="rbr_conv", bn="bn", scale="rbr_scale", skip="rbr_skip",
                  reparam="reparam_conv"),
    "timm": dict(conv="conv_kxk", bn="bn", scale="conv_scale", skip="identity",
                 reparam="reparam_conv"),
    "mmpretrain": dict(conv="branch_conv_list", bn="norm", scale="branch_scale",
                       skip="branch_norm", reparam="branch_reparam"),
}


def _pair(k):
    return (k, k) if isinstance(k, int) else tuple(k)


class ConvBN(nn.Module):
    """conv (padding K // 2 per axis) then a BatchNorm stored under the naming's name."""

    def __init__(self, cin, cout, kernel, stride, groups, bn_name, bias=False):
        super().__init__()
        kh, kw = _pair(kernel)
        self.conv = nn.Conv2d(cin, cout, (kh, kw), stride, (kh // 2, kw // 2), groups=groups,
                              bias=bias)
        self.bn_name = bn_name
        self.add_module(bn_name, nn.BatchNorm2d(cout))

    def forward(self, x):
        return getattr(self, self.bn_name)(self.conv(x))


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.reduce = nn.Conv2d(c, max(1, c // 4), 1)
        self.expand = nn.Conv2d(max(1, c // 4), c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(s))))


class RefBlock(nn.Module):
    """k conv+BN branches, an optional 1x1 scale conv+BN, an optional identity BN; summed."""

    def __init__(self, naming, cin, cout, kernel=3, stride=1, groups=1, k=1, scale=True,
                 identity=None, se=False, act=True, conv_bias=False):
        super().__init__()
        self.n = NAMES[naming]
        identity = (cin == cout and stride == 1) if identity is None else identity
        self.se = SE(cout) if se else nn.Identity()
        self.has = dict(conv=k > 0, scale=scale, skip=identity)
        if identity:
            self.add_module(self.n["skip"], nn.BatchNorm2d(cin))
        if k:
            self.add_module(self.n["conv"], nn.ModuleList(
                ConvBN(cin, cout, kernel, stride, groups, self.n["bn"], conv_bias)
                for _ in range(k)))
        if scale:
            self.add_module(self.n["scale"], ConvBN(cin, cout, 1, stride, groups, self.n["bn"],
                                                    conv_bias))
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x):
        out = 0
        if self.has["skip"]:
            out = out + getattr(self, self.n["skip"])(x)
        if self.has["conv"]:
            for branch in getattr(self, self.n["conv"]):
                out = out + branch(x)
        if self.has["scale"]:
            out = out + getattr(self, self.n["scale"])(x)
        return self.act(self.se(out))


class DeployBlock(nn.Module):
    """The same block as ONE conv with bias, stored under the naming's deploy name."""

    def __init__(self, naming, cin, cout, kernel=3, stride=1, groups=1, se=False, act=True,
                 **_ignored):
        super().__init__()
        kh, kw = _pair(kernel)
        self.name = NAMES[naming]["reparam"]
        self.se = SE(cout) if se else nn.Identity()
        self.add_module(self.name, nn.Conv2d(cin, cout, (kh, kw), stride, (kh // 2, kw // 2),
                                             groups=groups, bias=True))
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.se(getattr(self, self.name)(x)))


def block(deploy, *args, **kw):
    return DeployBlock(*args, **kw) if deploy else RefBlock(*args, **kw)


class LayerScale2d(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1))


class RepMixerLike(nn.Module):
    """FastViT/MobileCLIP token mixer: x + layer_scale * (mixer(x) - norm(x)); ``norm`` is a
    block with NO conv branch and no scale branch (an identity BatchNorm only).  Apple keeps the
    layer scale as a bare parameter, timm as ``layer_scale.gamma``; the deploy form is ONE conv
    (``reparam_conv``), as both libraries' reparameterize() leave it."""

    def __init__(self, deploy, naming, dim, kernel, norm_groups=None):
        super().__init__()
        self.deploy = deploy
        if deploy:
            kh, kw = _pair(kernel)
            self.reparam_conv = nn.Conv2d(dim, dim, (kh, kw), 1, (kh // 2, kw // 2), groups=dim)
            return
        self.norm = block(deploy, naming, dim, dim, kernel, groups=norm_groups or dim, k=0,
                          scale=False, act=False)
        self.mixer = block(deploy, naming, dim, dim, kernel, groups=dim, k=1, act=False)
        if naming == "timm":
            self.layer_scale = LayerScale2d(dim)
        else:
            self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1))

    def forward(self, x):
        if self.deploy:
            return self.reparam_conv(x)
        gamma = getattr(self.layer_scale, "gamma", self.layer_scale)
        return x + gamma * (self.mixer(x) - self.norm(x))


class ConvFFN(nn.Module):
    """Plain layers (a conv+BN that is NOT a MobileOne block, two 1x1 convs): pass through."""

    def __init__(self, dim):
        super().__init__()
        self.conv = nn.Sequential()
        self.conv.add_module("conv", nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False))
        self.conv.add_module("bn", nn.BatchNorm2d(dim))
        self.fc1 = nn.Conv2d(dim, 2 * dim, 1)
        self.fc2 = nn.Conv2d(2 * dim, dim, 1)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.conv(x))))


class FastVitLike(nn.Module):
    """A small FastViT/MobileCLIP-flavoured stack; ``deploy`` builds the one-conv-per-block twin."""

    def __init__(self, deploy=False):
        super().__init__()
        d = deploy
        self.stem = nn.Sequential(
            block(d, "apple", 3, 16, 3, stride=2, k=1),  # full conv, no identity
            block(d, "apple", 16, 16, 3, groups=16, k=2),  # depthwise, identity, k = 2
            block(d, "apple", 16, 16, 1, k=1, scale=False),  # 1x1 with identity
        )
        self.mixer = RepMixerLike(d, "apple", 16, 3)  # norm-only block + mixer
        self.ffn = ConvFFN(16)
        self.down = block(d, "timm", 16, 32, 5, stride=2, groups=2, k=1)  # grouped 5x5, no id
        self.grouped = block(d, "timm", 32, 32, 1, groups=4, k=2, scale=False, se=True)
        self.noscale = block(d, "mmpretrain", 32, 32, 3, groups=32, k=3, scale=False)
        self.biased = block(d, "mmpretrain", 32, 32, 3, groups=8, k=1, conv_bias=True)
        self.text = RepMixerLike(d, "timm", 32, (1, 3))  # MobileCLIP-style (1, k) mixer
        self.wide = block(d, "timm", 32, 32, (1, 3), groups=32, k=2)  # (1, 3) + scale + id
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.ffn(self.mixer(self.stem(x)))
        x = self.wide(self.text(self.biased(self.noscale(self.grouped(self.down(x))))))
        return self.head(x.mean((2, 3)))


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights AND random BatchNorm statistics (defaults would hide a forgotten mean)."""
    g = torch.Generator().manual_seed(seed)

    def u(shape, lo, hi):
        return torch.rand(shape, generator=g) * (hi - lo) + lo

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(u(m.running_mean.shape, -1, 1))
            m.running_var.copy_(u(m.running_var.shape, 0.5, 2))
            m.weight.copy_(u(m.weight.shape, 0.5, 1.5))
            m.bias.copy_(u(m.bias.shape, -0.5, 0.5))
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in ** 0.5)
            if m.bias is not None:
                m.bias.copy_(u(m.bias.shape, -0.2, 0.2))
    for name, p in model.named_parameters():
        if name.endswith(("layer_scale", "layer_scale.gamma")):
            p.copy_(u(p.shape, 0.5, 1.5))
    return model.eval()
