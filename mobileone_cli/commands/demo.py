"""``mobileone demo``: the whole job on a synthetic Apple s0 checkpoint, no download."""
from __future__ import annotations

import os
import tempfile
from typing import Optional

import click

from ..errors import BadInput
from ._options import resolve_arch, seed_option


@click.command(help="Synthesize an Apple-layout unfused s0 checkpoint (random weights, BatchNorm "
                    "statistics calibrated like a trained network's), convert it, verify it and "
                    "show the summary.")
@click.option("--dir", "folder", type=click.Path(file_okay=False), default=None,
              help="Keep the files in this folder (default: a temporary folder, removed after).")
@click.option("--arch", "arch_name", default="s0", show_default=True, metavar="s0..s4")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="Synthesize the network a YAML model config describes instead "
                                   "(see examples/).")
@seed_option()
def demo(folder: Optional[str], arch_name: str, config_path: Optional[str], seed: int) -> int:
    from ..arch.memory import job_bytes, weight_elements
    from ..io.write import save_checkpoint
    from ..jobs.convert import ConvertOptions, convert_file
    from ..models.synthetic import random_state_dict
    from ..platform import check_memory
    from ..render.console import console, line, quiet
    from ..render.convert import render_convert

    arch = resolve_arch(None, config=config_path) if config_path else resolve_arch(arch_name)
    if arch is None:  # --arch auto: there is no checkpoint to detect it from
        raise BadInput("the demo synthesizes a checkpoint: give --arch s0..s4 or --config FILE")
    check_memory(job_bytes(arch), f"the demo of {arch.name} ({weight_elements(arch):,} weights)",
                 hint="a config within the limits can still describe a network too large to "
                      "build; `mobileone stats --config FILE` counts it without building it")
    out = console()

    def run(where: str) -> None:
        src = os.path.join(where, f"mobileone_{arch.name}_unfused.pth.tar")
        dst = os.path.join(where, f"mobileone_{arch.name}.pth")
        save_checkpoint(src, random_state_dict(arch, seed=seed), force=True)
        if not quiet():
            line(out, "", f"synthesized {src} (Apple layout, train form, random weights, "
                          f"calibrated BN statistics)")
        options = ConvertOptions(arch=arch if config_path else None,
                                 arch_source=f"--config {config_path}" if config_path else None,
                                 force=True)
        result = convert_file(src, dst, options)
        if not quiet():
            render_convert(result, title="mobileone demo")
        line(out, "[bold green]OK[/]:", f"deploy checkpoint matches the train model "
                                        f"(max rel diff {result.metrics.max_rel:.2e})", whole=True)

    if folder:
        os.makedirs(folder, exist_ok=True)
        run(folder)
    else:
        with tempfile.TemporaryDirectory(prefix="mobileone-demo-") as tmp:
            run(tmp)
    return 0
