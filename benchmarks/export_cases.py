"""`mobileone export` per target against the exporter alone: target <= 1.5x its wall time.

  exporter alone  a process that imports torch and the target's toolchain, loads a deploy
                  checkpoint into our module (already fused) and makes the same exporter call
                  `export` makes (runtimes/<target>.export: torch.onnx.export (dynamo) with
                  a dynamic batch and size for .onnx; torch.export + XNNPACK lowering for
                  .pte; litert_torch.convert for .tflite; coremltools.convert for .mlpackage);
  export          `mobileone export` of a train checkpoint (load, fuse, judge the fusion,
                  export, run the artifact in its runtime against our model, write) and,
                  for .onnx, of a deploy one (no fusion to judge).

s0 on every target whose toolchain is installed (a missing one is skipped and said so), and s4
on .onnx (not with --quick).  224x224, fp32.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Dict, Tuple

from common import MOBILEONE, PY, Report, make_checkpoints, measure

# extension -> (runtime module, packages its export needs)
TARGETS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    ".onnx": ("onnx", ("onnx", "onnxruntime", "onnxscript")),
    ".pte": ("executorch", ("executorch",)),
    ".tflite": ("litert", ("litert_torch", "ai_edge_litert")),
    ".mlpackage": ("coreml", ("coremltools",)),
}

ALONE = """
import sys, torch
from mobileone_cli.check.harness import load_model
from mobileone_cli.models.mobileone import MeanPoolHead
from mobileone_cli.runtimes import runtime_module
from mobileone_cli.arch.specs import get_arch
src, dst, arch, module = sys.argv[1:5]
mod = runtime_module(module)
spec = get_arch(arch)
net = load_model(torch.load(src, map_location="cpu", weights_only=True), spec, "deploy",
                 dtype=torch.float32)
if module == "onnx":  # what `export` asks for: a dynamic batch and size, traced on batch 2
    mod.export(net, dst, sample=torch.zeros(2, 3, 224, 224), dynamic_batch=True,
               dynamic_size=True, opset=None, exporter="dynamo", output_name="logits")
else:  # a fixed batch of 1, mean-pool head as `export` builds it
    mod.export(MeanPoolHead(net), dst, sample=torch.zeros(1, 3, 224, 224), max_batch=None)
"""


def missing(ext: str) -> Tuple[str, ...]:
    return tuple(p for p in TARGETS[ext][1] if importlib.util.find_spec(p) is None)


def run(report: Report, folder: str, runs: int, quick: bool = False) -> None:
    archs = ("s0",) if quick else ("s0", "s4")
    specs = {}
    for arch in archs:
        specs.update({f"{arch}.pth": f"{arch}:train", f"{arch}_deploy.pth": f"{arch}:deploy"})
    ck = make_checkpoints(folder, specs)
    for ext, (module, _) in TARGETS.items():
        lack = missing(ext)
        if lack:
            report.notes.append(f"export {ext}: skipped, {', '.join(lack)} not installed "
                                f"(pip install 'mobileone-cli[{_extra(module)}]')")
            continue
        for arch in archs:
            if arch == "s4" and ext != ".onnx":
                continue
            out = os.path.join(folder, f"out_{arch}{ext}")
            alone = report.case(f"{arch} {ext} exporter alone (deploy module)",
                                measure([PY, "-c", ALONE, ck[f"{arch}_deploy.pth"], out, arch,
                                         module], runs, [out]))
            for form in ("train", "deploy") if ext == ".onnx" else ("train",):
                src = ck[f"{arch}.pth" if form == "train" else f"{arch}_deploy.pth"]
                m = report.case(f"{arch} {ext} mobileone export, {form} file",
                                measure(MOBILEONE + ["export", src, out, "--json"], runs, [out],
                                        parse=True))
                report.target(f"export {arch} {ext} {form} file wall <= 1.5x exporter alone",
                              m["wall"] / alone["wall"], 1.5)
                if form == "train":
                    _levels(report, f"{arch} {ext}", m["json"][-1])


def _extra(module: str) -> str:
    return {"onnx": "onnx"}.get(module, module)


def _levels(report: Report, label: str, doc: Dict) -> None:
    """What the runtime check measured (one line in the notes, for the export doc)."""
    checks = doc.get("runtime_checks") or []
    if not checks:
        w = doc.get("weights_check") or {}
        report.notes.append(f"{label}: not executed here; {w.get('compared', 0)} weights read "
                            f"back equal: {w.get('passed')}")
        return
    worst = max(checks, key=lambda c: c["metrics"]["max_rel"])
    refs = sorted({c.get("reference", "float64") for c in checks})
    report.notes.append(f"{label}: runtime check at {len(checks)} shape(s), max rel diff "
                        f"{worst['metrics']['max_rel']:.1e} (bound {worst['tolerance']:.1e}), "
                        f"reference {'/'.join(refs)}")
