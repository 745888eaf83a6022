"""``mobileone inspect FILE``: what a checkpoint (or ONNX file) holds, and how healthy it is.

Torch-free for .safetensors files, except for the eps sensitivity of a train-form MobileOne (the
tool's fusion runs in torch); ``--no-health`` reads the header alone."""
from __future__ import annotations

from typing import Optional

import click

from ._options import (
    config_option,
    ema_option,
    json_option,
    prefix_option,
    resolve_arch,
    trust_file_option,
)
from ._sources import fetch_options


@click.command(help="Show what a checkpoint holds: file format, wrapper, layout (apple, "
                    "mmpretrain, timm), form (train/deploy), variant, classes, prefix, dtype, "
                    "key and parameter counts, unknown keys; any other checkpoint is described "
                    "(top-level structure, tensors, what was not recognised), and an .onnx file "
                    "by its opsets, inputs, outputs and initializers (needs the onnx extra). "
                    "The health section examines the numbers: NaN/Inf, BatchNorm variances, the "
                    "eps sensitivity of the fusion, dead channels and branches, fp16/bf16 range, "
                    "mixed dtypes. Exit 0 for any readable file, faults included, unless "
                    "--strict.")
@click.argument("ckpt", type=click.Path(dir_okay=True))
@json_option()
@prefix_option("Look at the MobileOne under this key prefix (when there are several).")
@ema_option("Look at the EMA weights instead of the state_dict.")
@click.option("--strict", is_flag=True,
              help="Exit 1 when the health check finds faults (NaN/Inf, negative variances) "
                   "or the file is a damaged MobileOne that convert would refuse.")
@click.option("--no-health", is_flag=True,
              help="Skip the health check: a .safetensors file is then read from its header "
                   "alone, without reading the weights or importing torch.")
@click.option("--blocks", "blocks_file", default=None, metavar="FILE.yaml",
              type=click.Path(dir_okay=False),
              help="Also look for the block patterns of this file (convert --generic --blocks).")
@trust_file_option()
@config_option()
@fetch_options("ckpt")
def inspect(ckpt: str, as_json: bool, prefix: Optional[str], ema: bool, strict: bool,
            no_health: bool, blocks_file: Optional[str], trust_file: bool,
            config_path: Optional[str]) -> int:
    from ..errors import BadInput, VerificationFailed
    from ..jobs.inspect import inspect_file
    from ..render.console import emit
    from ..render.inspect import render_inspect
    from ..render.verdict import finite_json

    if strict and no_health:
        raise BadInput("--strict judges the health check, which --no-health skips: give one")
    report = inspect_file(ckpt, ema=ema, trust=trust_file, prefix=prefix,
                          arch=resolve_arch(None, config=config_path),
                          arch_source=f"--config {config_path}" if config_path else None,
                          health=not no_health, blocks_file=blocks_file)
    emit(report, as_json, finite_json, render_inspect)
    health = report.get("health")
    if strict and report.get("kind") == "damaged":
        raise VerificationFailed(f"{ckpt}: damaged MobileOne, convert would refuse it "
                                 f"(--strict)")
    if strict and health and health["faults"]:
        raise VerificationFailed(f"{ckpt}: {len(health['faults'])} fault(s) found (--strict)")
    return 0
