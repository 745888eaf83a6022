"""``mobileone export CKPT OUT`` (.onnx, .pte, .tflite, .mlpackage)."""
from __future__ import annotations

from typing import Optional, Tuple

import click

from ..errors import BadInput
from ..rules.tolerances import export_rule_text
from ..runtimes.coreml import DEFAULT_DEPLOYMENT_TARGET
from ._options import (
    MobileOneCommand,
    input_size_option,
    json_option,
    load_options,
    reading_options,
    seed_option,
)
from ._sources import fetch_options


def parse_batch(value: Optional[str]):
    """None -> 'auto' (the target's default); 'dynamic' -> None (a dynamic batch axis);
    'N' -> N."""
    if value is None:
        return "auto"
    if value.strip().lower() == "dynamic":
        return None
    try:
        return int(value)
    except ValueError:
        raise BadInput(f"--batch {value!r}: give a number or 'dynamic'") from None


@click.command(cls=MobileOneCommand,
               help="Export a MobileOne checkpoint (train form is fused first) for a runtime "
                    "picked by OUT's extension: .onnx (onnxruntime), .pte (ExecuTorch, XNNPACK), "
                    ".tflite (LiteRT), .mlpackage (Core ML). The artifact is run in its runtime "
                    "on seeded images and compared with the PyTorch deploy model; OUT is written "
                    "only if it matches. Core ML runs only on macOS: elsewhere every weight in "
                    "the package is read back and compared instead. Each runtime is an extra: "
                    "'onnx', 'executorch', 'litert', 'coreml'.")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path())
@input_size_option(help_extra=" Traced and checked.")
@click.option("--batch", "batch_text", default=None, metavar="N|dynamic",
              help="Batch size fixed in the artifact, or 'dynamic'. Default: dynamic for .onnx, "
                   "1 for .pte/.tflite/.mlpackage.")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Largest batch of a dynamic batch in a .pte/.tflite/.mlpackage (default 32; "
                   "ExecuTorch plans memory for it and needs > 16).")
@click.option("--fixed-size/--dynamic-size", "fixed_size", default=None,
              help="Fix height and width to --input-size, or keep them dynamic (.onnx only). "
                   "Default: dynamic for .onnx, fixed for the others.")
@click.option("--opset", type=click.IntRange(min=7), default=None,
              help="ONNX opset (default: the exporter's; the dynamo exporter needs >= 18).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Precision of the artifact: fp16 stores float16 weights (.onnx, .pte: also "
                   "float16 input, output and arithmetic; .tflite: float32 biases, input and "
                   "output; .mlpackage: compute precision FLOAT16).")
@click.option("--coreml-target", default=DEFAULT_DEPLOYMENT_TARGET, show_default=True,
              metavar="TARGET",
              help="Core ML minimum deployment target (.mlpackage): iOS15..iOS18, "
                   "macOS12..macOS15.")
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "torchscript"]), default="auto",
              show_default=True, help="torch.onnx exporter; auto = dynamo when onnxscript is "
                                      "installed and the opset allows it.")
@reading_options()
@seed_option("Seed of the check images.")
@click.option("--rtol", type=click.FloatRange(min=0), default=None,
              help="Fixed tolerance of the runtime check, relative to max |output|. Default: "
                   f"{export_rule_text()} the measured effect of the artifact's arithmetic "
                   "precision (fp32 or fp16) on this network.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@json_option("the summary")
@fetch_options("ckpt")
def export(ckpt: str, out: str, input_size: Tuple[int, int], batch_text: Optional[str],
           max_batch: Optional[int], fixed_size: Optional[bool], opset: Optional[int],
           dtype: str, coreml_target: str, exporter: str, arch_name: Optional[str],
           config_path: Optional[str], bn_eps: Optional[float], prefix: Optional[str],
           ema: bool, trust_file: bool, seed: int, rtol: Optional[float], force: bool,
           as_json: bool) -> int:
    from ..jobs.export import ExportOptions, export_file
    from ..render.console import emit
    from ..render.export import export_to_dict, render_export
    from ._options import settle_heap

    settle_heap()
    options = load_options(arch_name, config_path, bn_eps, prefix, ema, trust_file,
                           cls=ExportOptions, input_size=input_size,
                           batch=parse_batch(batch_text), max_batch=max_batch,
                           dynamic_size=None if fixed_size is None else not fixed_size,
                           opset=opset, dtype=dtype, coreml_target=coreml_target,
                           exporter=exporter, force=force, seed=seed, rtol=rtol)
    emit(export_file(ckpt, out, options), as_json, export_to_dict, render_export)
    return 0
