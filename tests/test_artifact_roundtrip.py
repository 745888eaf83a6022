"""Every format export writes is accepted by inspect, verify CKPT ARTIFACT and eval --deploy,
and two identical exports (and conversions) are identical byte for byte.  The exports are of
the tiny network (every kind of block; a format's writer and readers take the same path for
any size, and s0 takes half as long again)."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

from mobileone_cli.arch.specs import get_arch
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.models.synthetic import random_state_dict
from tests.conftest import TINY
from tests.imaging import pattern, write_image

RUNTIMES = {".onnx": ("onnx", "onnxruntime"), ".pte": ("executorch",),
            ".tflite": ("litert_torch", "ai_edge_litert"), ".mlpackage": ("coremltools",)}


def _installed(ext):
    return all(importlib.util.find_spec(m) is not None for m in RUNTIMES[ext])


def _contents(path):
    """{relative name: bytes} of a file or of every file in a package folder."""
    if not os.path.isdir(path):
        with open(path, "rb") as fh:
            return {"": fh.read()}
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, path)] = fh.read()
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("roundtrip")
    path = str(root / "s0_train.pth")
    save_checkpoint(path, random_state_dict(get_arch("s0"), seed=5), force=True)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("roundtrip_tiny") / "tiny_train.pth")
    save_checkpoint(path, random_state_dict(TINY, seed=5), force=True)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    for c in range(2):
        write_image(str(root / f"class{c}" / "0.png"), pattern(80, 72, salt=c))
    return str(root)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [".pth", ".safetensors"])
def test_convert_twice_gives_the_same_bytes(ckpt, tmp_path, run_cli, fmt):
    outs = [str(tmp_path / f"{i}{fmt}") for i in range(2)]
    for out in outs:
        res = run_cli("-q", "convert", ckpt, out, "--to", "timm", "--input-size", "64")
        assert res.exit_code == 0, res.output
    assert _contents(outs[0]) == _contents(outs[1])


@pytest.mark.slow
@pytest.mark.parametrize("ext", list(RUNTIMES))
def test_export_is_accepted_everywhere_and_byte_stable(ext, tiny_ckpt, tiny_config, images,
                                                      tmp_path, run_cli):
    if not _installed(ext):
        pytest.skip(f"the runtime for {ext} is not installed")
    outs = [str(tmp_path / f"{i}{ext}") for i in range(2)]
    for out in outs:
        res = run_cli("-q", "export", tiny_ckpt, out, "--input-size", "64", "--config",
                      tiny_config)
        assert res.exit_code == 0, res.output
    assert _contents(outs[0]) == _contents(outs[1])

    doc = json.loads(run_cli("inspect", outs[0], "--json").stdout)
    assert doc["kind"] == ("onnx" if ext == ".onnx" else "artifact")
    assert doc["inputs"][0]["shape"][1:] in ([3, 64, 64], [3, "height", "width"]) or \
        doc["inputs"][0]["shape"][1] == 3
    assert doc["outputs"][0]["shape"][-1] == TINY.num_classes
    if ext != ".onnx":
        assert doc["size"] == sum(len(b) for b in _contents(outs[0]).values())
        assert doc["executes_here"] is (ext != ".mlpackage")

    res = run_cli("-q", "verify", tiny_ckpt, outs[0], "--input-size", "64", "--config",
                  tiny_config)
    assert res.exit_code == 0, res.output

    res = run_cli("-q", "eval", tiny_ckpt, images, "--deploy", outs[0], "--crop", "64",
                  "--config", tiny_config)
    if ext == ".mlpackage":
        assert res.exit_code == 2 and "runs only on macOS" in res.stderr
    else:
        assert res.exit_code == 0, res.output
