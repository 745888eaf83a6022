"""``mobileone stats [CKPT] [--arch sN]``: exact params and MACs/FLOPs, train vs deploy.

Torch is imported only by ``--bench`` and by reading a torch (non-safetensors) checkpoint.
"""
from __future__ import annotations

from typing import Optional

import click

from ._options import (
    MobileOneCommand,
    config_option,
    input_size_option,
    json_option,
    resolve_arch,
    trust_file_option,
)
from ._plot import check_plot, plot_force_option, plot_option, write_plot
from ._sources import fetch_options


@click.command(cls=MobileOneCommand,
               help="Exact parameter and MAC counts of a MobileOne, train form and deploy form "
                    "side by side, per stage and in total, computed from the architecture (no "
                    "forward pass). Give a checkpoint CKPT (architecture, classes and form are "
                    "detected; its real tensors are summed too) or --arch sN.")
@click.argument("ckpt", required=False, type=click.Path(dir_okay=True))
@click.option("--arch", "arch_name", default=None, metavar="s0..s4",
              help="Built-in variant (needed without CKPT; with CKPT it must match the file).")
@config_option()
@click.option("--num-classes", type=click.IntRange(min=0), default=None,
              help="Head size for --arch (default 1000; 0 = no head).")
@input_size_option()
@click.option("--convention", type=click.Choice(["macs", "flops", "mmpretrain"]),
              default="macs", show_default=True,
              help="Unit of the per-part compute columns: MACs; FLOPs = 2 x MACs "
                   "(torch.utils.flop_counter); mmpretrain's fvcore-style count (backbone + "
                   "pooling, head excluded). --json always gives all three.")
@click.option("--bench", is_flag=True,
              help="Also measure CPU latency and peak memory of both forms on this machine.")
@click.option("--runtime", type=click.Choice(["torch", "onnxruntime", "executorch", "litert"]),
              default="torch", show_default=True,
              help="Where --bench runs both forms: eager PyTorch, or each form exported to that "
                   "runtime first (needs its extra: onnx, executorch, litert).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batch size for --bench.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for --bench (default: the runtime's default).")
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True,
              help="Timed forward passes per form for --bench (the median is reported).")
@click.option("--warmup", type=click.IntRange(min=1), default=5, show_default=True,
              help="Untimed forward passes per form before timing, for --bench.")
@trust_file_option()
@click.option("--exact", is_flag=True,
              help="Every digit in the tables, whatever the width (by default numbers are "
                   "rounded to 3 digits, 4.83 M, when exact ones do not fit).")
@plot_option("the per-part bars (and --bench's latency bars)")
@plot_force_option()
@json_option()
@fetch_options("ckpt")
def stats(ckpt: Optional[str], arch_name: Optional[str], config_path: Optional[str],
          num_classes: Optional[int],
          input_size, convention: str, bench: bool, runtime: str, batch: int,
          threads: Optional[int], runs: int, warmup: int, trust_file: bool, exact: bool,
          plot_path: Optional[str], force: bool, as_json: bool) -> int:
    from ..errors import BadInput
    from ..jobs.stats import bench_report, stats_for_arch, stats_for_checkpoint
    from ..render.console import emit
    from ..render.stats import render_stats, stats_plot, stats_to_dict

    if ckpt is None and arch_name is None and config_path is None:
        raise BadInput("give a checkpoint file or --arch", hint="e.g. mobileone stats --arch s2")
    if ckpt is not None and num_classes is not None:
        raise BadInput("--num-classes applies to --arch only; a checkpoint's head size is read "
                       "from the file")
    check_plot(plot_path, force)
    arch = resolve_arch(arch_name, num_classes, config=config_path)
    if ckpt is None and arch is None:
        raise BadInput("--arch auto needs a checkpoint file")
    if ckpt is None:
        assert arch is not None  # refused above
        report = stats_for_arch(arch, input_size)
    else:
        report = stats_for_checkpoint(ckpt, arch=arch, input_size=input_size, trust=trust_file,
                                      arch_source=f"--config {config_path}" if config_path
                                      else None)
    if runtime != "torch" and not bench:
        raise BadInput("--runtime applies to --bench", hint="add --bench")
    if bench:
        bench_report(report, batch=batch, threads=threads, runs=runs, warmup=warmup,
                     runtime=runtime)
    emit(report, as_json, stats_to_dict, render_stats, convention=convention, exact=exact)
    write_plot(plot_path, stats_plot(report, convention), force, as_json)
    return 0
