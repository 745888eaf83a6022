"""``mobileone verify TRAIN_CKPT [DEPLOY_CKPT]``."""
from __future__ import annotations

import os
from typing import Optional, Tuple

import click

from ..errors import BadInput, VerificationFailed
from ..rules.tolerances import DEFAULT_ATOL, checkpoint_rule_text
from ._options import (
    MobileOneCommand,
    bn_eps_option,
    config_option,
    ema_option,
    input_size_option,
    json_option,
    load_options,
    seed_option,
    trust_file_option,
)
from ._plot import check_plot, plot_force_option, plot_option, write_plot
from ._sources import fetch_options


@click.command(cls=MobileOneCommand,
               help="Prove DEPLOY_CKPT computes the same function as TRAIN_CKPT: both models in "
                    "eval mode, strict loading, outputs and every block compared, a float64 "
                    "referee where fp32 cannot decide. With only TRAIN_CKPT, it is fused in "
                    "memory and checked against itself. Any layout (Apple, mmpretrain, timm) on "
                    "either side. The second file may also be an exported artifact (.onnx, .pte, "
                    ".tflite, .mlpackage): it is run in its runtime (a Core ML package off macOS: "
                    "its weights are read back) and compared with the checkpoint's deploy "
                    "model. Exit 0 equal, 1 not equal, 2 bad input.")
@click.argument("train_ckpt", type=click.Path(dir_okay=True))
@click.argument("deploy_ckpt", type=click.Path(dir_okay=True), required=False)
@bn_eps_option()
@config_option()
@seed_option("Seed of the random inputs.")
@click.option("--batch", type=int, default=4, show_default=True, help="Number of random inputs.")
@input_size_option()
@click.option("--images", "images_dir", type=click.Path(), default=None, metavar="DIR",
              help="Use the PNG/JPEG files in DIR (mmpretrain's MobileOne test pipeline, as "
                   "in eval: short edge 256, centre crop --input-size, mean/std) instead of "
                   "random inputs. Needs Pillow.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--rtol", type=click.FloatRange(min=0), default=None,
              help="Fixed tolerance relative to max |train output| (output and each block). "
                   f"Default: {checkpoint_rule_text()} the measured effect of rounding the "
                   "deploy weights (so it follows the deploy file's dtype).")
@click.option("--atol", type=click.FloatRange(min=0), default=DEFAULT_ATOL, show_default=True,
              help="Absolute tolerance added to the relative one.")
@click.option("--reference", type=click.Choice(["fp64"]), default=None,
              help="Always run the float64 referee (by default it runs where fp32 cannot "
                   "decide).")
@ema_option("Use the EMA weights of both files.")
@trust_file_option()
@click.option("--all-blocks", is_flag=True, help="Show the error of every block (as -v does).")
@plot_option("the error profile")
@plot_force_option()
@json_option("the report (for CI)")
@fetch_options("train_ckpt", "deploy_ckpt")
def verify(train_ckpt: str, deploy_ckpt: Optional[str], config_path: Optional[str],
           bn_eps: Optional[float], seed: int, batch: int, input_size: Tuple[int, int],
           images_dir: Optional[str], device: str, rtol: Optional[float], atol: float,
           reference: Optional[str], ema: bool, trust_file: bool, all_blocks: bool,
           plot_path: Optional[str], force: bool, as_json: bool) -> int:
    from ..jobs.verify import verify_files
    from ..render.console import emit
    from ..render.verify import render_verify, verify_plot, verify_to_dict
    from ._options import settle_heap

    settle_heap()
    check_plot(plot_path, force)
    if (deploy_ckpt is not None and deploy_ckpt.strip().isdigit()
            and not os.path.exists(deploy_ckpt)):
        raise BadInput(f"{deploy_ckpt!r} is not a checkpoint file",
                       hint="--input-size takes 224, 224x192 or two numbers: 224 192")
    from ..runtimes import target_for

    if deploy_ckpt is not None and target_for(deploy_ckpt) is not None:
        return _verify_artifact(train_ckpt, deploy_ckpt, config_path, bn_eps, ema, trust_file,
                                seed, batch, input_size, images_dir, rtol, as_json)
    report = verify_files(train_ckpt, deploy_ckpt,
                          options=load_options(None, config_path, bn_eps, None, ema, trust_file),
                          seed=seed, batch=batch, input_size=input_size, images_dir=images_dir,
                          device=device, rtol=rtol, atol=atol, reference=reference)
    emit(report, as_json, verify_to_dict, render_verify, all_blocks=all_blocks)
    write_plot(plot_path, verify_plot(report), force, as_json)
    if not report.passed:
        raise _shown(VerificationFailed(report.summary()))
    return 0


def _verify_artifact(ckpt: str, artifact: str, config_path: Optional[str],
                     bn_eps: Optional[float], ema: bool, trust_file: bool, seed: int, batch: int,
                     input_size: Tuple[int, int], images_dir: Optional[str],
                     rtol: Optional[float], as_json: bool) -> int:
    from ..jobs.verify_artifact import verify_artifact
    from ..render.console import emit
    from ..render.verify_artifact import artifact_report_to_dict, render_artifact_report

    if images_dir is not None:
        raise BadInput("--images applies to checkpoint pairs; an artifact is checked on seeded "
                       "images")
    report = verify_artifact(ckpt, artifact,
                             options=load_options(None, config_path, bn_eps, None, ema,
                                                  trust_file),
                             seed=seed, batch=batch, input_size=input_size, rtol=rtol)
    emit(report, as_json, artifact_report_to_dict, render_artifact_report)
    if not report.passed:
        raise _shown(VerificationFailed(report.summary()))
    return 0


def _shown(exc: VerificationFailed) -> VerificationFailed:
    """The report (its FAIL line, or its JSON) already says the verdict: printed once."""
    exc.shown = True
    return exc
