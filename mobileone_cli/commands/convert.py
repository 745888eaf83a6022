"""``mobileone convert SRC DST``."""
from __future__ import annotations

from typing import Optional

import click

from ._common import arch_option, arch_source, bn_eps_option, config_option, resolve_arch


@click.command(help="Fuse a MobileOne train checkpoint into a deploy checkpoint (and/or remap "
                    "its layout). DST's extension picks the format: .safetensors or torch (.pth).")
@click.argument("src", type=click.Path(dir_okay=True))
@click.argument("dst", type=click.Path(dir_okay=True))
@arch_option()
@config_option()
@bn_eps_option()
@click.option("--to", "layout_out", type=click.Choice(["apple", "mmpretrain", "timm"]),
              default=None, help="Key layout of DST (default: the layout of SRC).")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
@click.option("--no-verify", is_flag=True, help="Skip the built-in equivalence check.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def convert(src: str, dst: str, arch_name: Optional[str], config_path: Optional[str],
            bn_eps: float, layout_out: Optional[str], force: bool, no_verify: bool,
            as_json: bool) -> int:
    from ..convert import convert_file
    from ..render import convert_to_dict, print_json, render_convert

    result = convert_file(src, dst, arch=resolve_arch(arch_name, config=config_path),
                          arch_source=config_path and arch_source(config_path),
                          layout_out=layout_out, eps=bn_eps, force=force, verify=not no_verify)
    if as_json:
        print_json(convert_to_dict(result))
    else:
        render_convert(result)
    return 0
