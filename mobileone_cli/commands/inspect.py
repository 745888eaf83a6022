"""``mobileone inspect CKPT``: what a checkpoint holds.  Torch-free for .safetensors files."""
from __future__ import annotations

from typing import Optional

import click

from ._common import arch_source, config_option, resolve_arch, trust_file_option, warn_trusted


@click.command(help="Show what a checkpoint holds: file format, wrapper, layout (apple, "
                    "mmpretrain, timm), form (train/deploy), variant, classes, prefix, dtype, "
                    "key and parameter counts, unknown keys.")
@click.argument("ckpt", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--prefix", default=None, metavar="PFX",
              help="Look at the MobileOne under this key prefix (when there are several).")
@click.option("--ema", is_flag=True, help="Look at the EMA weights instead of the state_dict.")
@trust_file_option()
@config_option()
def inspect(ckpt: str, as_json: bool, prefix: Optional[str], ema: bool, trust_file: bool,
            config_path: Optional[str]) -> int:
    from ..inspection import inspect_file
    from ..render import print_json
    from ..render_inspect import render_inspect

    if trust_file:
        warn_trusted(ckpt)
    report = inspect_file(ckpt, ema=ema, trust=trust_file, prefix=prefix,
                          arch=resolve_arch(None, config=config_path),
                          arch_source=config_path and arch_source(config_path))
    if as_json:
        print_json(report)
    else:
        render_inspect(report)
    return 0
