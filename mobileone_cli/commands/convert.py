"""``mobileone convert SRC DST`` (and batch mode: several SRCs or folders into a folder)."""
from __future__ import annotations

from typing import Optional, Tuple

import click

from ..arch.layouts import LAYOUT_NAMES
from ..errors import BadInput
from ..rules.limits import default_eps
from ..rules.tolerances import checkpoint_rule_text
from ._options import (
    MobileOneCommand,
    arch_option,
    bn_eps_option,
    complete_from,
    config_option,
    ema_option,
    input_size_option,
    json_option,
    load_options,
    prefix_option,
    seed_option,
    trust_file_option,
)
from ._sources import fetch_options


def generic_only(**given: Optional[str]) -> None:
    """--generic fuses blocks where they stand: options about a whole MobileOne do not apply."""
    for name, value in given.items():
        if value is not None and not (name == "arch" and value.lower() == "auto"):
            raise BadInput(f"--{name} does not apply with --generic (blocks are fused in place, "
                           f"under their own names)")


@click.command(cls=MobileOneCommand,
               help="Fuse a MobileOne train checkpoint into a deploy checkpoint (and/or remap "
                    "its layout). DST's extension picks the format: .safetensors or torch (.pth, "
                    ".pth.tar, .pt, .bin, .ckpt). Batch mode: 'convert SRC_DIR DST_DIR', "
                    "'convert A B ... DST_DIR' or 'convert SRC DST_DIR/' converts every "
                    "checkpoint into DST_DIR (made when missing) under its own name and format, "
                    "continuing past bad files.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=True),
                metavar="SRC... DST")
@arch_option()
@config_option()
@bn_eps_option()
@click.option("--to", "layout_out", default=None, metavar="apple|mmpretrain|timm",
              shell_complete=complete_from(*LAYOUT_NAMES),
              help="Key layout of DST (default: the layout of SRC; mmcls = mmpretrain).")
@click.option("--no-fuse", is_flag=True,
              help="Keep the train form: only remap the keys to --to's layout.")
@prefix_option("Convert the MobileOne under this key prefix (e.g. 'backbone.'); every other key "
               "is copied unchanged. Default: found automatically when there is one.")
@ema_option("Convert the EMA weights (ema_state_dict, ...) instead of the state_dict.")
@trust_file_option()
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="Store the output in this precision (fusion still runs in float64 and rounds "
                   "once); the summary reports what the rounding costs. Default: SRC's dtype.")
@click.option("--equalize", is_flag=True,
              help="Equalize the fused weights across layers for int8 (Nagel et al. 2019: "
                   "output channel i of a conv divided by s_i, input channel i of the next "
                   "layer multiplied by it, across ReLU; never after an SE block). The same "
                   "function, checked against the train model. See docs/quant.md.")
@click.option("--rtol", type=click.FloatRange(min=0), default=None,
              help="Fixed tolerance of the check, relative to max |output| (with --generic: "
                   "of each fused block's output). Default: "
                   f"{checkpoint_rule_text()} the measured rounding sensitivity of the "
                   "output dtype.")
@input_size_option(help_extra=" Size of the check image.")
@seed_option("Seed of the check image.")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
@click.option("--suffix", default=None, metavar="TEXT",
              help="Batch: appended to each output's name (default: _deploy when fusing, which "
                   "also replaces a trailing _unfused; '' keeps the input names).")
@click.option("--name", "name_template", default=None, metavar="TEMPLATE",
              help="Batch: output file names from {stem}, {suffix} and {ext}, e.g. "
                   "'{stem}_timm{ext}'.")
@click.option("--skip-existing", is_flag=True,
              help="Batch: leave files whose output exists alone (for re-running a batch).")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Batch: worker processes (default: the number of cores).")
@click.option("--no-verify", is_flag=True, help="Skip the built-in equivalence check.")
@json_option("the summary")
@click.option("--generic", is_flag=True,
              help="Fuse every re-parameterisable block of ANY network (MobileOne, FastViT, "
                   "MobileCLIP, RepVGG, RepGhost, your own) found by key names; all other keys "
                   "pass through unchanged.")
@click.option("--blocks", "blocks_file", default=None, metavar="FILE.yaml",
              type=click.Path(dir_okay=False),
              help="With --generic: block patterns of another naming (docs/configs.md).")
@click.option("--groups", type=click.IntRange(min=1), default=None,
              help="With --generic: groups of blocks that hold only an identity BatchNorm "
                   "(default: depthwise).")
@click.option("--norm-kernel", default=None, metavar="K|HxW",
              help="With --generic: kernel of blocks without a conv branch (default: their "
                   "sibling's, else 1x1).")
@fetch_options("paths", keep_last=True)
def convert(paths: Tuple[str, ...], arch_name: Optional[str],
            config_path: Optional[str], bn_eps: Optional[float], layout_out: Optional[str],
            no_fuse: bool, prefix: Optional[str], ema: bool, trust_file: bool,
            dtype: Optional[str], equalize: bool, rtol: Optional[float],
            input_size: Tuple[int, int], seed: int,
            force: bool, suffix: Optional[str], name_template: Optional[str],
            skip_existing: bool, jobs: Optional[int], no_verify: bool,
            as_json: bool, generic: bool, blocks_file: Optional[str], groups: Optional[int],
            norm_kernel: Optional[str]) -> int:
    from ..jobs.batch import is_batch
    from ..jobs.convert import ConvertOptions, convert_file
    from ..render.console import emit
    from ..render.convert import convert_to_dict, render_convert
    from ._options import settle_heap

    if len(paths) < 2:
        raise BadInput(f"missing DST: give the output file after {paths[0]!r} "
                       f"(mobileone convert SRC DST; several SRCs or a folder: SRC... DST_DIR)")
    settle_heap()
    sources, dst = paths[:-1], paths[-1]  # several SRCs, or folders: batch mode into DST
    first = sources[0]
    batch = is_batch(sources, dst)
    if generic:
        if batch:
            raise BadInput("--generic converts one file at a time: give one SRC file and a DST "
                           "file")
        if no_fuse or prefix is not None:
            raise BadInput("--no-fuse and --prefix do not apply with --generic")
        generic_only(arch=arch_name, config=config_path, to=layout_out, dtype=dtype)
        if equalize:
            raise BadInput("--equalize does not apply with --generic (it needs the whole "
                           "MobileOne chain)")
        from ..fuse.generic import parse_kernel
        from ..jobs.convert_generic import convert_generic_file
        from ..render.generic import generic_to_dict, render_generic

        result = convert_generic_file(first, dst, eps=default_eps(bn_eps),
                                      force=force, verify=not no_verify, groups=groups,
                                      norm_kernel=parse_kernel(norm_kernel), ema=ema,
                                      trust=trust_file, rtol=rtol, blocks_file=blocks_file)
        emit(result, as_json, generic_to_dict, render_generic)
        return 0
    if groups is not None or norm_kernel is not None or blocks_file is not None:
        raise BadInput("--groups, --norm-kernel and --blocks only apply with --generic")
    options = load_options(arch_name, config_path, bn_eps, prefix, ema, trust_file,
                           cls=ConvertOptions, layout_out=layout_out, fuse=not no_fuse,
                           dtype=dtype, verify=not no_verify, rtol=rtol, force=force,
                           equalize=equalize,
                           input_size=input_size, seed=seed)
    if batch:
        from ._batch import run_batch

        if suffix is None:
            suffix = "_deploy" if not no_fuse else ""
        return run_batch(sources, dst, options, as_json, suffix=suffix, template=name_template,
                         skip_existing=skip_existing, jobs=jobs)
    for flag, value in (("--suffix", suffix), ("--name", name_template),
                        ("--skip-existing", skip_existing or None), ("--jobs", jobs)):
        if value is not None:
            raise BadInput(f"{flag} applies to batch mode (several SRCs, a SRC folder, or a DST "
                           f"folder)")
    emit(convert_file(first, dst, options), as_json, convert_to_dict, render_convert)
    return 0
