"""``mobileone quant CKPT``."""
from __future__ import annotations

from typing import Optional, Tuple

import click

from ._options import (
    MobileOneCommand,
    input_size_option,
    json_option,
    load_options,
    preprocessing_options,
    reading_options,
    seed_option,
)
from ._plot import check_plot, plot_option, write_plot
from ._sources import fetch_options

__all__ = ["quant"]


@click.command("quant", cls=MobileOneCommand,
               help="What int8 post-training quantization does to CKPT's deploy form (fused in "
                    "memory when CKPT is a train checkpoint): per block, the weight range "
                    "spread across output channels and the SQNR of the block output with only "
                    "that block int8 and with every block int8; the blocks that dominate the "
                    "error are flagged; end to end, the output's SQNR and top-1/top-5 "
                    "agreement with fp32 (accuracy when DIR has labels). Weights: symmetric "
                    "int8; activations: affine int8 per tensor, calibrated on the images in DIR "
                    "(eval's preprocessing) or on N seeded random images. --export writes a "
                    "real int8 ExecuTorch program (PT2E, XNNPACK) and runs it.")
@click.argument("ckpt", type=click.Path(dir_okay=True))
@click.option("--calib", "calib", type=click.Path(), default=None, metavar="DIR",
              help="Calibrate and measure on these images: a folder of class folders or of "
                   "images, read as eval reads them. Needs Pillow.")
@click.option("--calib-synthetic", "synthetic", type=int, default=None, metavar="N",
              help="Calibrate and measure on N seeded random images [32 without --calib].")
@click.option("--scheme", type=click.Choice(["per-channel", "per-tensor"]),
              default="per-channel", show_default=True, help="Scales of the int8 weights.")
@click.option("--export", "export", type=click.Path(dir_okay=False), default=None,
              metavar="OUT.pte", help="Also write an int8 ExecuTorch program (PT2E with the "
                                      "XNNPACK quantizer, calibrated on the same images), run "
                                      "it and report its agreement. Needs the executorch "
                                      "extra.")
@click.option("--force", is_flag=True, help="Overwrite OUT.pte and the --plot file if they exist.")
@click.option("--compare-train", is_flag=True,
              help="Also quantize the unfused train model (each branch's conv+BN folded and "
                   "quantized on its own), to show what fusion costs under int8.")
@click.option("--equalize", is_flag=True,
              help="Also measure int8 after data-free quantization (Nagel et al. 2019): "
                   "cross-layer equalization of the fused weights and, from a train "
                   "checkpoint's BatchNorm statistics, bias correction; per-tensor and "
                   "per-channel, before and after, side by side. With --export the program is "
                   "the equalized one. See docs/quant.md.")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="Use N of DIR's images, spread evenly over it.")
@click.option("--batch", type=int, default=8, show_default=True, help="Images per pass.")
@click.option("--workers", type=int, default=None, metavar="N",
              help="Image-decoding threads (default: the cores, at most 8; 0: none).")
@seed_option("Seed of the synthetic images (image i uses seed + i).")
@input_size_option(help_extra=" Synthetic images; with --calib, the centre crop.")
@preprocessing_options(crop="--input-size")
@reading_options()
@click.option("--all-blocks", is_flag=True,
              help="Show every block's SQNR and the noise picture (as -v does).")
@plot_option("the per-block int8 noise picture")
@json_option("the report, every block and every number")
@fetch_options("ckpt")
def quant(ckpt: str, calib: Optional[str], synthetic: Optional[int], scheme: str,
          export: Optional[str], force: bool, compare_train: bool, equalize: bool,
          limit: Optional[int],
          batch: int, workers: Optional[int], seed: int, input_size: Tuple[int, int],
          resize: Optional[int], interpolation: Optional[str], mean: Optional[str],
          std: Optional[str], arch_name: Optional[str], config_path: Optional[str],
          bn_eps: Optional[float], prefix: Optional[str], ema: bool, trust_file: bool,
          all_blocks: bool,
          plot_path: Optional[str], as_json: bool) -> int:
    from ..jobs.quant import QuantOptions, quantize_file
    from ..render.console import emit
    from ..render.quant import quant_plot, quant_to_dict, render_quant
    from ._options import settle_heap

    check_plot(plot_path, force)
    preprocessing = None
    if any(v is not None for v in (resize, interpolation, mean, std)):
        from ..data.pipeline import make_preprocessing

        preprocessing = make_preprocessing(resize, "x".join(map(str, input_size)),
                                           interpolation, mean, std)
    options = load_options(arch_name, config_path, bn_eps, prefix, ema, trust_file,
                           cls=QuantOptions, calib=calib, synthetic=synthetic, scheme=scheme,
                           export=export, force=force, compare_train=compare_train,
                           equalize=equalize,
                           limit=limit, batch=batch, workers=workers, seed=seed,
                           input_size=tuple(input_size), preprocessing=preprocessing)
    settle_heap()
    report = quantize_file(ckpt, options)
    emit(report, as_json, quant_to_dict, render_quant, all_blocks=all_blocks)
    write_plot(plot_path, quant_plot(report), force, as_json)
    return 0
