"""``mobileone export CKPT OUT.onnx``."""
from __future__ import annotations

from typing import Optional, Tuple

import click

from ..errors import BadInput
from ._common import arch_option, bn_eps_option, resolve_arch, trust_file_option, warn_trusted
from ._common import arch_source, config_option


def parse_batch(value: str) -> Optional[int]:
    """'dynamic' -> None (a dynamic batch axis); 'N' -> N."""
    if value.strip().lower() == "dynamic":
        return None
    try:
        return int(value)
    except ValueError:
        raise BadInput(f"--batch {value!r}: give a number or 'dynamic'") from None


@click.command(help="Export a MobileOne checkpoint (train form is fused first) to ONNX, then run "
                    "the file in onnxruntime on seeded images and compare it with the PyTorch "
                    "deploy model; OUT is written only if it matches. Needs the 'onnx' extra.")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--input-size", nargs=2, type=int, default=(224, 224), show_default=True,
              metavar="H W", help="Image size traced and checked.")
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
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the check images.")
@click.option("--rtol", type=click.FloatRange(min=0), default=None,
              help="Fixed tolerance (relative to max |output|) instead of the adaptive one.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def export(ckpt: str, out: str, input_size: Tuple[int, int], batch_text: str, fixed_size: bool,
           opset: Optional[int], dtype: str, exporter: str, arch_name: Optional[str],
           config_path: Optional[str], bn_eps: float, prefix: Optional[str], ema: bool,
           seed: int, rtol: Optional[float],
           trust_file: bool, force: bool, as_json: bool) -> int:
    from ..export import export_file
    from ..render import print_json
    from ..render_export import export_to_dict, render_export
    from ._common import settle_heap

    settle_heap()

    if trust_file:
        warn_trusted(ckpt)
    result = export_file(ckpt, out, input_size=tuple(input_size), batch=parse_batch(batch_text),
                         dynamic_size=not fixed_size, opset=opset, dtype=dtype,
                         exporter=exporter, force=force, seed=seed, rtol=rtol,
                         arch=resolve_arch(arch_name, config=config_path),
                         arch_source=config_path and arch_source(config_path),
                         eps=bn_eps, prefix=prefix, ema=ema,
                         trust=trust_file)
    if as_json:
        print_json(export_to_dict(result))
    else:
        render_export(result)
    return 0
