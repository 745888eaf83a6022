"""``mobileone demo``: the whole job on a network that ships with the package, no download."""
from __future__ import annotations

from typing import Optional

import click

from ._options import json_option, resolve_arch, seed_option


@click.command(help="Convert, verify and export a MobileOne trained on the UCI handwritten "
                    "digits (shipped with the package), then show the held-out top-1 of the "
                    "train model, the deploy file, every exported file whose runtime is "
                    "installed and int8: the numbers a deployment has to keep. The files stay "
                    "in --dir. --synthetic (implied by --arch, --config, --seed): a random-weight "
                    "network instead (convert and verify only).")
@click.option("--dir", "folder", type=click.Path(file_okay=False), default="mobileone-demo",
              show_default=True, help="Where the demo's files go (created; files already "
                                      "there are not overwritten without --force).")
@click.option("--force", is_flag=True, help="Overwrite the demo's files in --dir.")
@click.option("--network", type=click.Choice(["s0", "s4"]), default="s0", show_default=True,
              help="The trained network: s0-style (k = 4 branches) or s4-style (SE blocks).")
@click.option("--synthetic", is_flag=True,
              help="Synthesize an Apple-layout unfused network with random weights (BatchNorm "
                   "statistics calibrated like a trained network's) instead.")
@click.option("--arch", "arch_name", default=None, metavar="s0..s4",
              help="Synthesize this variant [s0].")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="Synthesize the network a YAML model config describes "
                                   "(see examples/).")
@seed_option("The seed of the random weights [0].", default=None)
@json_option("the report: files, checks, held-out results")
def demo(folder: str, force: bool, network: str, synthetic: bool, arch_name: Optional[str],
         config_path: Optional[str], seed: Optional[int], as_json: bool) -> int:
    from ..jobs.demo import run_demo
    from ..render.console import emit, quiet
    from ..render.demo import demo_to_dict, render_demo, step_status

    synthetic = synthetic or bool(arch_name or config_path) or seed is not None
    arch = None
    if synthetic:
        arch = resolve_arch(None, config=config_path) if config_path else \
            resolve_arch(arch_name or "s0")
    with step_status(enabled=not quiet() and not as_json) as progress:
        report = run_demo(folder, network=network, synthetic=synthetic, arch=arch,
                          arch_source=f"--config {config_path}" if config_path else None,
                          seed=seed or 0, force=force, progress=progress)
    emit(report, as_json, demo_to_dict, render_demo)
    return 0
