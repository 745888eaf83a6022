"""The README's Python API tour, runnable: python examples/python_api.py [FOLDER]

It synthesizes its own Apple-layout train checkpoint (random weights and BN statistics), so it
needs no download; tests/test_examples.py runs it.
"""
import os
import sys
import tempfile

import torch

import mobileone_cli as mo
from mobileone_cli.io.detect import tensor_info


def main(folder: str) -> None:
    arch = mo.get_arch("s1")
    src = os.path.join(folder, "mobileone_s1_unfused.pth.tar")
    mo.save_checkpoint(src, mo.random_state_dict(arch, seed=0), force=True)

    # A whole file, as the CLI does it.
    dst = os.path.join(folder, "mobileone_s1_timm.safetensors")
    result = mo.convert_file(src, dst, layout_out="timm", force=True)
    print("convert:", result.detection.arch.name, result.detection.layout, "->",
          result.layout_out, f"max rel diff {result.metrics.max_rel:.2e}")

    # Fusion as a pure function on a state dict.
    train_sd = torch.load(src, weights_only=True)
    deploy_sd = mo.fuse_state_dict(train_sd, arch, eps=1e-5)
    det = mo.detect_layout(tensor_info(train_sd))
    print("detect:", det.layout, det.form, det.arch.name, len(deploy_sd), "deploy keys")

    # The model: fused copy, original untouched; both agree in eval mode.
    model = mo.build_model(arch).eval()
    model.load_state_dict(train_sd)
    fused = mo.deploy_copy(model).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref, out = model(x), fused(x)
    print("model:", f"max rel diff {float((ref - out).abs().max() / ref.abs().max()):.2e}")

    report = mo.verify_files(src, dst, input_size=(128, 128))
    print("verify:", "equal" if report.passed else "NOT equal")
    counts = mo.stats_for_arch(arch).stats
    for form in ("train", "deploy"):
        total = counts.form(form).total
        print(f"stats: {form:6} {total.params:>10,} params {total.macs:>14,} MACs")
    info = mo.inspect_file(dst)
    print("inspect:", info["file_format"], info["layout"], info["form"], info["variant"])


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(tmp)
