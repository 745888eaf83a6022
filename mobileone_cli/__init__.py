"""mobileone: turn MobileOne training checkpoints into deploy checkpoints, and prove them right.

The public API is importable from here; names that need torch are loaded on first use, so
``import mobileone_cli`` (and every torch-free command) stays fast.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_LAZY = {
    # architectures and layouts (no torch)
    "ArchSpec": "arch.specs", "BlockSpec": "arch.specs", "get_arch": "arch.specs",
    "builtin_archs": "arch.specs", "LAYOUTS": "arch.layouts", "schema": "arch.layouts",
    "key_map": "arch.layouts", "remap": "arch.layouts", "load_config": "io.configfile",
    "parse_config": "arch.config", "detect_layout": "io.detect", "Detection": "io.detect",
    "read_safetensors_header": "io.read", "arch_stats": "arch.counting",
    # tensors
    "fuse_branches": "fuse.fusion", "fuse_block": "fuse.fusion", "fuse_state_dict": "fuse.fusion",
    "bn_scale_shift": "fuse.fusion", "BatchNormStats": "fuse.fusion",
    "fuse_generic": "fuse.generic_fuse", "find_blocks": "fuse.generic",
    "MobileOne": "models.mobileone", "build_model": "models.mobileone",
    "deploy_copy": "models.mobileone", "random_state_dict": "models.synthetic",
    "load_checkpoint": "io.read", "save_checkpoint": "io.write", "LoadOptions": "io.source",
    "open_source": "io.source",
    "judge": "check.verdict", "Verdict": "check.verdict", "compare_outputs": "check.harness",
    "verify_files": "jobs.verify", "verify_state_dicts": "jobs.verify",
    "checkpoint_health": "check.health",
    "verify_artifact": "jobs.verify_artifact", "check_artifact": "check.artifact",
    "load_artifact": "runtimes", "Artifact": "runtimes",
    # the jobs
    "ConvertOptions": "jobs.convert", "convert_file": "jobs.convert",
    "convert_state_dict": "jobs.convert",
    "convert_generic_file": "jobs.convert_generic", "ExportOptions": "jobs.export",
    "export_file": "jobs.export", "convert_many": "jobs.batch", "plan_batch": "jobs.batch",
    "inspect_file": "jobs.inspect", "stats_for_arch": "jobs.stats",
    "stats_for_checkpoint": "jobs.stats",
    "evaluate_files": "jobs.eval", "EvalReport": "jobs.eval", "Preprocessing": "data.pipeline",
    "make_preprocessing": "data.pipeline", "open_dataset": "data.folders",
    "quantize_file": "jobs.quant", "QuantOptions": "jobs.quant", "QuantReport": "jobs.quant",
    # the trained networks and their held-out images (assets/digits)
    "trained_model": "models.trained", "trained_state_dict": "models.trained",
    "heldout_images": "data.digits",
    "fetch_names": "jobs.fetch", "list_known": "jobs.fetch", "FetchSettings": "io.remote",
    "local_path": "io.remote",
    "MobileOneError": "errors", "BadInput": "errors", "VerificationFailed": "errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'mobileone_cli' has no attribute {name!r}")
