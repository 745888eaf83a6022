"""The trained networks of :mod:`..assets.digits` as torch modules (weights-only loading)."""
from __future__ import annotations

from typing import Dict

import torch

from ..assets import digits as assets
from ..io.read import load_checkpoint
from .mobileone import MobileOne

__all__ = ["trained_state_dict", "trained_model"]


def trained_state_dict(name: str = assets.DEFAULT_NETWORK) -> Dict[str, torch.Tensor]:
    """The shipped train-form state dict (Apple layout, float32) of ``name`` ('s0', 's4')."""
    return dict(load_checkpoint(assets.checkpoint_path(name)).state_dict)


def trained_model(name: str = assets.DEFAULT_NETWORK, form: str = "train") -> MobileOne:
    """A shipped trained network in eval mode, in ``form`` 'train' or 'deploy' (fused in memory
    with the same fusion as ``mobileone convert``)."""
    if form not in ("train", "deploy"):
        raise ValueError(f"form must be 'train' or 'deploy', not {form!r}")
    model = MobileOne(assets.arch(name))
    model.load_state_dict(trained_state_dict(name), strict=True)
    model.eval()
    return model.switch_to_deploy() if form == "deploy" else model
