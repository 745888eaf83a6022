"""``mobileone eval CKPT DATA``."""
from __future__ import annotations

from typing import Optional, Tuple

import click

from ._options import MobileOneCommand, json_option, load_options, reading_options
from ._sources import fetch_options

__all__ = ["eval"]


@click.command("eval", cls=MobileOneCommand,
               help="Top-1/top-5 accuracy of CKPT on the labelled images in DATA, and of its "
                    "deploy form (fused in memory, or --deploy FILE) and exported files "
                    "(--deploy x.onnx), all in one pass: their top-1 agreement, largest output "
                    "difference and the images where they disagree. DATA is a folder of class "
                    "folders (classes in sorted order) or, with --labels, a folder of images. "
                    "Preprocessing: mmpretrain's MobileOne test pipeline unless overridden. "
                    "Unreadable images are counted and skipped. Needs Pillow.")
@click.argument("ckpt", type=click.Path(dir_okay=True))
@click.argument("data", type=click.Path())
@click.option("--deploy", "deploy", multiple=True, type=click.Path(dir_okay=True),
              metavar="FILE", help="A deploy checkpoint, or an exported .onnx (and any format "
                                   "`mobileone export` writes) to evaluate beside CKPT; "
                                   "repeatable. Without a deploy checkpoint, a train-form CKPT "
                                   "is fused in memory.")
@click.option("--labels", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="'file label' per line (file relative to DATA; label a class index, or a "
                   "class id with --classes), as ImageNet validation lists are distributed.")
@click.option("--classes", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Class i is the first word of line i (e.g. ImageNet's synsets.txt); names "
                   "the class folders or the labels of --labels.")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="Evaluate N images spread evenly over DATA (a quick look).")
@click.option("--batch", type=int, default=32, show_default=True, help="Images per pass.")
@click.option("--workers", type=int, default=None, metavar="N",
              help="Image-decoding threads (default: the cores, at most 8; 0: none).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N] for the "
                                                                   "PyTorch models.")
@click.option("--resize", type=click.IntRange(min=1), default=None, metavar="N",
              help="Resize the short edge to N [256; with only --crop: crop x 256/224].")
@click.option("--crop", default=None, metavar="H[xW]", help="Centre crop [224].")
@click.option("--interpolation", default=None,
              type=click.Choice(["nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"],
                                case_sensitive=False), help="Pillow resize filter [bilinear].")
@click.option("--mean", default=None, metavar="R,G,B",
              help="Mean on 0..255 [123.675,116.28,103.53]; values <= 1 are fractions of 255.")
@click.option("--std", default=None, metavar="R,G,B",
              help="Std on 0..255 [58.395,57.12,57.375]; values <= 1 are fractions of 255.")
@reading_options(ema_help="Use the checkpoints' EMA weights.")
@json_option("the report, with per-class accuracy and every disagreeing image")
@fetch_options("ckpt", "deploy")
def eval(ckpt: str, data: str, deploy: Tuple[str, ...], labels: Optional[str],  # noqa: A001
         classes: Optional[str], limit: Optional[int], batch: int, workers: Optional[int],
         device: str, resize: Optional[int], crop: Optional[str], interpolation: Optional[str],
         mean: Optional[str], std: Optional[str], arch_name: Optional[str],
         config_path: Optional[str], bn_eps: Optional[float], prefix: Optional[str], ema: bool,
         trust_file: bool, as_json: bool) -> int:
    from ..data.pipeline import make_preprocessing
    from ..jobs.eval import evaluate_files
    from ..render.console import emit, quiet
    from ..render.eval import eval_to_dict, progress_bar, render_eval
    from ._options import settle_heap

    preprocessing = make_preprocessing(resize, crop, interpolation, mean, std)
    options = load_options(arch_name, config_path, bn_eps, prefix, ema, trust_file)
    settle_heap()
    with progress_bar(enabled=not quiet() and not as_json) as progress:
        report = evaluate_files(ckpt, data, deploy=deploy, labels=labels, classes=classes,
                                options=options, preprocessing=preprocessing, limit=limit,
                                batch=batch, workers=workers, device=device, progress=progress)
    emit(report, as_json, eval_to_dict, render_eval)
    return 0
