"""Two MobileOne networks trained on the UCI handwritten digits, and their held-out images.

Files (all made by ``tools/train_digits.py``, reproducibly):

* ``digits_s0.yaml`` / ``digits_s0_unfused.pth.tar``: an s0-style network (k = 4 conv branches,
  no SE), train form, Apple layout, float32, real BatchNorm statistics;
* ``digits_s4.yaml`` / ``digits_s4_unfused.pth.tar``: an s4-style network (SE blocks);
* ``heldout.npz``: the held-out images the networks never saw in training, as 8x8 uint8
  (``pixels``, the dataset's 0..16 scaled to 0..255), their ``labels`` and their ``index`` in
  scikit-learn's ``load_digits()``;
* ``training.json``: how each network was trained and its held-out top-1;
* ``ATTRIBUTION.txt``: where the images come from (CC BY 4.0).

A network sees an image as :data:`SIZE` x :data:`SIZE` RGB: every pixel repeated
:data:`SCALE` x :data:`SCALE` times (what Pillow's nearest resize does at an integer factor),
grey copied to R, G and B, then ``(x - MEAN) / STD`` on 0..255.  ``mobileone eval`` reproduces it
with :data:`EVAL_OPTIONS` on PNGs of the 8x8 pixels.

This module never imports torch.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

__all__ = ["FOLDER", "NETWORKS", "DEFAULT_NETWORK", "SIZE", "SCALE", "MEAN", "STD",
           "HELDOUT_EVERY", "EVAL_OPTIONS", "HELDOUT", "ATTRIBUTION", "network_name",
           "config_path", "checkpoint_path", "training_record", "arch", "attribution"]

FOLDER = os.path.dirname(os.path.abspath(__file__))
NETWORKS = ("digits_s0", "digits_s4")
DEFAULT_NETWORK = "digits_s0"
SIZE = 64  # pixels per side the networks see: stage 4 still has a 2x2 map to work on
SCALE = 8  # SIZE / 8
MEAN = (127.5, 127.5, 127.5)  # on 0..255, RGB
STD = (127.5, 127.5, 127.5)
HELDOUT_EVERY = 5  # image i of load_digits() is held out when i % 5 == 0 (360 of 1,797)
EVAL_OPTIONS = ("--resize", str(SIZE), "--crop", str(SIZE), "--interpolation", "nearest",
                "--mean", ",".join(f"{v:g}" for v in MEAN),
                "--std", ",".join(f"{v:g}" for v in STD))
HELDOUT = os.path.join(FOLDER, "heldout.npz")
ATTRIBUTION = os.path.join(FOLDER, "ATTRIBUTION.txt")
_TRAINING = os.path.join(FOLDER, "training.json")


def network_name(name: str) -> str:
    """'s0', 'digits_s0' -> 'digits_s0'; ValueError for anything else."""
    full = name if name.startswith("digits_") else f"digits_{name}"
    if full not in NETWORKS:
        raise ValueError(f"no trained network {name!r}; one of {', '.join(NETWORKS)}")
    return full


def config_path(name: str = DEFAULT_NETWORK) -> str:
    return os.path.join(FOLDER, f"{network_name(name)}.yaml")


def checkpoint_path(name: str = DEFAULT_NETWORK) -> str:
    return os.path.join(FOLDER, f"{network_name(name)}_unfused.pth.tar")


def arch(name: str = DEFAULT_NETWORK):
    """The ArchSpec of a trained network, read from its YAML config."""
    from ...arch.config import config_from_text

    path = config_path(name)
    with open(path, "r", encoding="utf-8") as fh:
        return config_from_text(fh.read(), path)


def training_record(name: str = DEFAULT_NETWORK) -> Dict[str, Any]:
    """What ``tools/train_digits.py`` recorded for a network: held-out top-1, epochs, seed..."""
    with open(_TRAINING, "r", encoding="utf-8") as fh:
        return dict(json.load(fh)["networks"][network_name(name)])


def attribution() -> str:
    """The dataset's attribution, one paragraph."""
    with open(ATTRIBUTION, "r", encoding="utf-8") as fh:
        return fh.read().strip()

