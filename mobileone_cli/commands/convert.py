"""``mobileone convert SRC DST``."""
from __future__ import annotations

from typing import Optional

import click

from ..errors import BadInput
from ._common import arch_option, arch_source, bn_eps_option, config_option, resolve_arch
from ._common import trust_file_option, warn_trusted


def generic_only(**given: Optional[str]) -> None:
    """--generic fuses blocks where they stand: options about a whole MobileOne do not apply."""
    for name, value in given.items():
        if value is not None and not (name == "arch" and value.lower() == "auto"):
            raise BadInput(f"--{name} does not apply with --generic (blocks are fused in place, "
                           f"under their own names)")


@click.command(help="Fuse a MobileOne train checkpoint into a deploy checkpoint (and/or remap "
                    "its layout). DST's extension picks the format: .safetensors or torch (.pth). "
                    "Batch mode: 'convert SRC_DIR DST_DIR' or 'convert A B ... DST_DIR' converts "
                    "every checkpoint (.pth .pth.tar .pt .bin .ckpt .safetensors) into DST_DIR "
                    "under its own name and format, continuing past bad files.")
@click.argument("src", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.argument("dst", type=click.Path(dir_okay=True))
@arch_option()
@config_option()
@bn_eps_option()
@click.option("--to", "layout_out", type=click.Choice(["apple", "mmpretrain", "timm"]),
              default=None, help="Key layout of DST (default: the layout of SRC).")
@click.option("--no-fuse", is_flag=True,
              help="Keep the train form: only remap the keys to --to's layout.")
@click.option("--prefix", default=None, metavar="PFX",
              help="Convert the MobileOne under this key prefix (e.g. 'backbone.'); every other "
                   "key is copied unchanged. Default: found automatically when there is one.")
@click.option("--ema", is_flag=True,
              help="Convert the EMA weights (ema_state_dict, ...) instead of the state_dict.")
@trust_file_option()
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="Store the output in this precision (fusion still runs in float64 and rounds "
                   "once); the summary reports what the rounding costs. Default: SRC's dtype.")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
@click.option("--no-verify", is_flag=True, help="Skip the built-in equivalence check.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--generic", is_flag=True,
              help="Fuse every MobileOne-style block of ANY network (FastViT, MobileCLIP, your "
                   "own) found by key names; all other keys pass through unchanged.")
@click.option("--groups", type=click.IntRange(min=1), default=None,
              help="With --generic: groups of blocks that hold only an identity BatchNorm "
                   "(default: depthwise).")
@click.option("--norm-kernel", default=None, metavar="K|HxW",
              help="With --generic: kernel of blocks without a conv branch (default: their "
                   "sibling's, else 1x1).")
def convert(src: str, dst: str, arch_name: Optional[str], config_path: Optional[str],
            bn_eps: float, layout_out: Optional[str], force: bool, no_verify: bool,
            as_json: bool, generic: bool, groups: Optional[int],
            norm_kernel: Optional[str], no_fuse: bool = False, prefix: Optional[str] = None,
            ema: bool = False, trust_file: bool = False, dtype: Optional[str] = None) -> int:
    from ..batch import is_batch
    from ..convert import convert_file
    from ..render import convert_to_dict, print_json, render_convert
    from ._common import settle_heap

    settle_heap()

    sources, src = src, src[0]  # several SRCs, or folders: batch mode into the folder DST
    batch = is_batch(sources, dst)
    if batch and generic:
        raise BadInput("--generic converts one file at a time: give one SRC file and a DST file")

    if generic and (no_fuse or prefix is not None):
        raise BadInput("--no-fuse and --prefix do not apply with --generic")
    if trust_file:
        warn_trusted(", ".join(sources) if batch else src)
    if generic:
        from ..generic import convert_generic_file, parse_kernel
        from ..render_generic import generic_to_dict, render_generic

        generic_only(arch=arch_name, config=config_path, to=layout_out, dtype=dtype)
        result = convert_generic_file(src, dst, eps=bn_eps, force=force, verify=not no_verify,
                                      groups=groups, norm_kernel=parse_kernel(norm_kernel),
                                      ema=ema, trust=trust_file)
        print_json(generic_to_dict(result)) if as_json else render_generic(result)
        return 0
    if groups is not None or norm_kernel is not None:
        raise BadInput("--groups and --norm-kernel only apply with --generic")

    from ..precision import parse_dtype

    options = dict(arch=resolve_arch(arch_name, config=config_path),
                   arch_source=config_path and arch_source(config_path),
                   layout_out=layout_out, eps=bn_eps, force=force, verify=not no_verify,
                   fuse=not no_fuse, prefix=prefix, ema=ema, trust=trust_file,
                   dtype=parse_dtype(dtype))
    if batch:
        from ._batch import run_batch

        return run_batch(sources, dst, options, as_json)
    result = convert_file(src, dst, **options)
    if as_json:
        print_json(convert_to_dict(result))
    else:
        render_convert(result)
    return 0
