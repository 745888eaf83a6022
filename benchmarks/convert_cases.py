"""Convert and start-up: `mobileone convert` against the load+save floor and the model route, and
the torch-free commands against `import torch`.

  floor        a process that imports torch, loads the checkpoint (weights_only) and saves it;
  model route  build our train model, load, deep-copy, fuse module by module, save: the way
               Apple's and timm's helpers work (it verifies nothing).
"""
from __future__ import annotations

import os

from common import MOBILEONE, PY, Report, make_checkpoints, measure

FLOOR = """
import sys, torch
sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
torch.save(sd, sys.argv[2])
"""

# The usual route, written out module by module as the reference helpers do it: build the train
# model, load, deep-copy, replace every block by a conv whose kernel is computed from its modules.
MODEL_ROUTE = """
import copy, sys, torch
from torch import nn
from mobileone_cli.arch.specs import get_arch
from mobileone_cli.models.mobileone import DeployBlock, MobileOne, TrainBlock

def branch_kernel(seq_or_bn, spec):
    if isinstance(seq_or_bn, nn.BatchNorm2d):
        bn = seq_or_bn
        k = torch.zeros(spec.in_channels, spec.in_channels // spec.groups, spec.kernel_size,
                        spec.kernel_size)
        for i in range(spec.in_channels):
            k[i, i % (spec.in_channels // spec.groups), spec.kernel_size // 2,
              spec.kernel_size // 2] = 1
    else:
        bn, k = seq_or_bn.bn, seq_or_bn.conv.weight
        pad = (spec.kernel_size - k.shape[-1]) // 2
        k = nn.functional.pad(k, [pad] * 4)
    t = bn.weight / (bn.running_var + bn.eps).sqrt()
    return k * t.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * t

def reparameterize(block):
    parts = list(block.rbr_conv) + [m for m in (block.rbr_scale, block.rbr_skip) if m is not None]
    ks, bs = zip(*(branch_kernel(p, block.spec) for p in parts))
    new = DeployBlock(block.spec)
    new.se = block.se
    new.reparam_conv.weight.data = sum(ks)
    new.reparam_conv.bias.data = sum(bs)
    return new

model = MobileOne(get_arch(sys.argv[3]))
model.load_state_dict(torch.load(sys.argv[1], map_location="cpu", weights_only=True))
model.eval()
fused = copy.deepcopy(model)
with torch.no_grad():
    fused.stage0 = reparameterize(fused.stage0)
    for s in range(1, 5):
        stage = getattr(fused, f"stage{s}")
        for i, blk in enumerate(stage):
            stage[i] = reparameterize(blk)
torch.save(fused.state_dict(), sys.argv[2])
"""


def run(report: Report, folder: str, runs: int, quick: bool = False) -> None:
    ck = make_checkpoints(folder, {"s0.pth.tar": "s0:train", "s4.pth.tar": "s4:train",
                                   "s4.safetensors": "s4:train",
                                   "s4_deploy.safetensors": "s4:deploy"})
    out = os.path.join(folder, "out.pth")
    torch_import = report.case("python -c 'import torch'", measure([PY, "-c", "import torch"],
                                                                  runs))
    for arch in ("s0", "s4"):
        src = ck[f"{arch}.pth.tar"]
        floor = report.case(f"{arch} floor: load+save",
                            measure([PY, "-c", FLOOR, src, out], runs, [out]))
        model = report.case(f"{arch} model route",
                            measure([PY, "-c", MODEL_ROUTE, src, out, arch], runs, [out]))
        fast = report.case(f"{arch} mobileone convert --no-verify",
                           measure(MOBILEONE + ["convert", "--no-verify", src, out], runs, [out]))
        full = report.case(f"{arch} mobileone convert (verified)",
                           measure(MOBILEONE + ["convert", src, out], runs, [out]))
        if arch == "s4":
            report.target("convert --no-verify s4 wall <= 1.10x floor",
                          fast["wall"] / floor["wall"], 1.10)
            report.target("convert --no-verify s4 peak RSS <= floor + 32 MiB",
                          fast["rss"] - floor["rss"], 32.0, "MiB")
            report.target("convert (verified) s4 wall <= model route",
                          full["wall"] / model["wall"], 1.0)
            report.target("convert (verified) s4 peak RSS <= model route",
                          full["rss"] / model["rss"], 1.0)
    for label, cmd in (("mobileone --help", MOBILEONE + ["--help"]),
                       ("mobileone stats --arch s4", MOBILEONE + ["stats", "--arch", "s4"]),
                       ("mobileone inspect --no-health s4.safetensors",
                        MOBILEONE + ["inspect", "--no-health", ck["s4.safetensors"]]),
                       ("mobileone inspect s4_deploy.safetensors (health)",
                        MOBILEONE + ["inspect", ck["s4_deploy.safetensors"]])):
        m = report.case(label, measure(cmd, runs))
        report.target(f"{label} wall <= 0.25x import torch", m["wall"] / torch_import["wall"],
                      0.25)
    # The health of a train-form file measures the eps sensitivity with the torch fusion (two
    # float64 fusions): reported, no target.
    for label, src in (("mobileone inspect s4.safetensors (train, health)", ck["s4.safetensors"]),
                       ("mobileone inspect s4.pth.tar (train, health)", ck["s4.pth.tar"])):
        report.case(label, measure(MOBILEONE + ["inspect", src], runs))
