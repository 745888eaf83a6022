"""``mobileone verify TRAIN_CKPT [DEPLOY_CKPT]``."""
from __future__ import annotations

import os
from typing import Optional

import click

from ..errors import BadInput, VerificationFailed
from ..tolerances import DEFAULT_ATOL, DEFAULT_RTOL
from ._common import arch_source, config_option, resolve_arch
from ._common import bn_eps_option, warn_trusted


@click.command(help="Prove DEPLOY_CKPT computes the same function as TRAIN_CKPT: both models in "
                    "eval mode, strict loading, outputs and every block compared. With only "
                    "TRAIN_CKPT, it is fused in memory and checked against itself. Any layout "
                    "(Apple, mmpretrain, timm) on either side. Exit 0 equal, 1 not equal, "
                    "2 bad input.")
@click.argument("train_ckpt", type=click.Path(dir_okay=True))
@click.argument("deploy_ckpt", type=click.Path(dir_okay=True), required=False)
@bn_eps_option()
@config_option()
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--batch", type=int, default=4, show_default=True, help="Number of random inputs.")
@click.option("--input-size", default="224", show_default=True, metavar="H[xW]",
              help="Input height and width: 224, 224x192 or '224 192'.")
@click.option("--images", "images_dir", type=click.Path(), default=None, metavar="DIR",
              help="Use the PNG/JPEG files in DIR (ImageNet preprocessing: short edge 256, "
                   "centre crop 224, mean/std) instead of random inputs. Needs Pillow.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--rtol", type=float, default=DEFAULT_RTOL, show_default=True,
              help="Tolerance relative to max |train output| (output and each block).")
@click.option("--atol", type=float, default=DEFAULT_ATOL, show_default=True,
              help="Absolute tolerance added to rtol * scale.")
@click.option("--reference", type=click.Choice(["fp64"]), default=None,
              help="Also run the train model in float64: fusion error vs fp32 rounding.")
@click.option("--ema", is_flag=True, help="Use the EMA weights of both files.")
@click.option("--trust-file", is_flag=True,
              help="Unpickle both files with weights_only=False, which can RUN CODE stored in "
                   "them. Only for files you trust.")
@click.option("--all-blocks", is_flag=True, help="Show the error of every block.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for CI).")
def verify(train_ckpt: str, deploy_ckpt: Optional[str], config_path: Optional[str],
           bn_eps: float, seed: int, batch: int,
           input_size: str, images_dir: Optional[str], device: str, rtol: float, atol: float,
           reference: Optional[str], ema: bool, trust_file: bool, all_blocks: bool,
           as_json: bool) -> int:
    from ..render import print_json
    from ..render_verify import render_verify
    from ..verify import verify_files
    from ._common import settle_heap

    settle_heap()

    if deploy_ckpt is not None and deploy_ckpt.strip().isdigit() and not os.path.exists(deploy_ckpt):
        raise BadInput(f"{deploy_ckpt!r} is not a checkpoint file",
                       hint="--input-size takes one value: 224, or 224x192 for H and W")
    if trust_file:
        for path in (train_ckpt, deploy_ckpt):
            if path is not None:
                warn_trusted(path)
    report = verify_files(train_ckpt, deploy_ckpt, arch=resolve_arch(None, config=config_path),
                          arch_source=config_path and arch_source(config_path),
                          bn_eps=bn_eps, seed=seed, batch=batch,
                          input_size=input_size, images_dir=images_dir, device=device,
                          rtol=rtol, atol=atol, reference=reference, ema=ema,
                          trust=trust_file)
    if as_json:
        print_json(report.to_dict())
    else:
        render_verify(report, all_blocks=all_blocks)
    if not report.passed:
        raise VerificationFailed(report.summary())
    return 0
