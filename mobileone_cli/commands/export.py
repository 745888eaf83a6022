"""``mobileone export CKPT OUT.onnx``."""
from __future__ import annotations

from typing import Optional, Tuple

import click

from ..errors import BadInput
from ..spec.limits import MAX_SEED
from ._options import (MobileOneCommand, arch_option, bn_eps_option, config_option,
                       input_size_option, json_option, load_options, trust_file_option)


def parse_batch(value: str) -> Optional[int]:
    """'dynamic' -> None (a dynamic batch axis); 'N' -> N."""
    if value.strip().lower() == "dynamic":
        return None
    try:
        return int(value)
    except ValueError:
        raise BadInput(f"--batch {value!r}: give a number or 'dynamic'") from None


@click.command(cls=MobileOneCommand,
               help="Export a MobileOne checkpoint (train form is fused first) to ONNX, then run "
                    "the file in onnxruntime on seeded images and compare it with the PyTorch "
                    "deploy model; OUT is written only if it matches. Needs the 'onnx' extra.")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@input_size_option(help_extra=" Traced and checked.")
@click.option("--batch", "batch_text", default="dynamic", show_default=True, metavar="N|dynamic",
              help="Batch size fixed in the graph, or 'dynamic'.")
@click.option("--fixed-size", is_flag=True,
              help="Fix height and width to --input-size (default: dynamic height and width).")
@click.option("--opset", type=click.IntRange(min=7), default=None,
              help="ONNX opset (default: the exporter's; the dynamo exporter needs >= 18).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Precision of weights, input and output in the ONNX graph.")
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "torchscript"]), default="auto",
              show_default=True, help="torch.onnx exporter; auto = dynamo when onnxscript is "
                                      "installed and the opset allows it.")
@arch_option()
@config_option()
@bn_eps_option()
@click.option("--prefix", default=None, help="Key prefix of the MobileOne inside the checkpoint.")
@click.option("--ema", is_flag=True, help="Use the checkpoint's EMA weights.")
@trust_file_option()
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
              help="Seed of the check images.")
@click.option("--rtol", type=click.FloatRange(min=0), default=None,
              help="Tolerance of the runtime check, relative to max |output| (default: "
                   "1e-3 for fp32, 1e-2 for fp16).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@json_option("the summary")
def export(ckpt: str, out: str, input_size: Tuple[int, int], batch_text: str, fixed_size: bool,
           opset: Optional[int], dtype: str, exporter: str, arch_name: Optional[str],
           config_path: Optional[str], bn_eps: Optional[float], prefix: Optional[str],
           ema: bool, trust_file: bool, seed: int, rtol: Optional[float], force: bool,
           as_json: bool) -> int:
    from ..export import ExportOptions, export_file
    from ..render.console import emit
    from ..render.export import export_to_dict, render_export
    from ._options import settle_heap

    settle_heap()
    options = load_options(arch_name, config_path, bn_eps, prefix, ema, trust_file,
                           cls=ExportOptions, input_size=input_size,
                           batch=parse_batch(batch_text), dynamic_size=not fixed_size,
                           opset=opset, dtype=dtype, exporter=exporter, force=force, seed=seed,
                           rtol=rtol)
    emit(export_file(ckpt, out, options), as_json, export_to_dict, render_export)
    return 0
