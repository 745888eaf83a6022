"""Write tests/data/mmpretrain_pipeline.npz: image files and what mmpretrain's own test pipeline
makes of them, for tests/test_preprocessing.py.

Run once, in an environment holding the real libraries (not part of the test install):

    pip install torch==2.13.0 mmengine==0.10.7 opencv-python-headless
    pip install --no-deps mmcv-lite==2.2.0 mmpretrain==1.2.0 importlib-metadata einops
    python tests/data/make_mmpretrain_pipeline.py

The transforms are mmcv's ``LoadImageFromFile`` (OpenCV decoding), mmpretrain's
``ResizeEdge(edge='short', backend='pillow')`` and mmcv's ``CenterCrop``, built from the same
dicts as ``configs/_base_/datasets/imagenet_bs32_pil_resize.py``.  mmpretrain's transforms module
imports torchvision at the top, whose wheels for torch 2.13 did not install here; the three
transforms never call it, so a placeholder package stands in for it (``--stub-torchvision``).
The normalisation (``ClsDataPreprocessor``: float32 ``(x - mean) / std`` after BGR->RGB) is
applied in the test; this file stores the uint8 crops, in RGB (for 224x224 crops: their sha256
and top-left 16x16 corner).
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from tests.imaging import pattern  # noqa: E402

# (name, width, height, format, extra, resize, crop (w, h), interpolation)
CASES = [
    ("landscape_default", 250, 187, "PNG", None, 256, (224, 224), "bilinear"),
    ("portrait_jpeg_default", 167, 250, "JPEG", None, 256, (224, 224), "bilinear"),
    ("offset_16.5_rounds_to_16", 200, 201, "PNG", None, 256, (224, 224), "bilinear"),
    ("long_edge_truncated", 150, 226, "PNG", None, 256, (224, 224), "bilinear"),
    ("trunc_and_half_to_even_4.5", 128, 131, "PNG", None, 64, (56, 56), "bilinear"),
    ("half_to_even_5.5", 128, 135, "PNG", None, 64, (56, 56), "bilinear"),
    ("short_side_offset_3.5", 90, 64, "PNG", None, 64, (56, 57), "bilinear"),
    ("upscaled_tiny", 37, 23, "PNG", None, 64, (56, 56), "bilinear"),
    ("same_size_no_resize", 64, 80, "PNG", None, 64, (56, 56), "bilinear"),
    ("bicubic", 151, 97, "PNG", None, 64, (48, 56), "bicubic"),
    ("grey", 77, 101, "PNG", "L", 64, (56, 56), "bilinear"),
    ("rgba", 101, 77, "PNG", "RGBA", 64, (56, 56), "bilinear"),
    ("grey16", 70, 90, "PNG", "I;16", 64, (56, 56), "bilinear"),
    ("exif_rotated_jpeg", 120, 80, "JPEG", "exif6", 64, (56, 56), "bilinear"),
]


def encode(arr: np.ndarray, fmt: str, extra) -> bytes:
    from PIL import Image

    img = Image.fromarray(arr)
    kw = {"quality": 90} if fmt == "JPEG" else {}
    if extra == "L":
        img = img.convert("L")
    elif extra == "RGBA":
        alpha = (np.arange(arr.shape[0] * arr.shape[1]) % 251).reshape(arr.shape[:2])
        img = Image.fromarray(np.dstack([arr, alpha.astype(np.uint8)]), "RGBA")
    elif extra == "I;16":
        grey = arr[..., 0].astype(np.uint16) * 257 + arr[..., 1].astype(np.uint16) % 200
        img = Image.fromarray(grey)
    elif extra == "exif6":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        kw["exif"] = exif
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def stub_torchvision() -> None:
    import types

    def anything(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})

    for mod in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                "torchvision.transforms.transforms"):
        m = types.ModuleType(mod)
        m.__getattr__ = anything  # type: ignore[attr-defined]
        m.__path__ = []  # a package: submodules import
        sys.modules[mod] = m
        parent, _, leaf = mod.rpartition(".")
        if parent:
            setattr(sys.modules[parent], leaf, m)


def main() -> None:
    if "--stub-torchvision" in sys.argv:
        stub_torchvision()
    import mmcv
    import mmpretrain
    from mmcv.transforms import CenterCrop, LoadImageFromFile
    from mmpretrain.datasets.transforms import ResizeEdge

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, w, h, fmt, extra, scale, crop, interp) in enumerate(CASES):
            data = encode(pattern(w, h, salt=i), fmt, extra)
            path = os.path.join(tmp, f"{i}.{fmt.lower()}")
            with open(path, "wb") as f:
                f.write(data)
            r = LoadImageFromFile()(dict(img_path=path))
            r = ResizeEdge(scale=scale, edge="short", backend="pillow",
                           interpolation=interp)(r)
            r = CenterCrop(crop_size=crop)(r)
            out[f"{name}/file"] = np.frombuffer(data, np.uint8)
            out[f"{name}/format"] = np.array(fmt.lower())
            out[f"{name}/params"] = np.array([scale, crop[1], crop[0]])  # resize, crop h, w
            out[f"{name}/interpolation"] = np.array(interp)
            rgb = np.ascontiguousarray(r["img"][..., ::-1])  # BGR -> RGB
            if rgb.size > 20_000:  # keep the file small: a digest and a corner of big crops
                out[f"{name}/sha256"] = np.array(hashlib.sha256(rgb.tobytes()).hexdigest())
                out[f"{name}/shape"] = np.array(rgb.shape)
                rgb = rgb[:16, :16]
            out[f"{name}/crop"] = rgb
    out["versions"] = np.array(f"mmcv {mmcv.__version__}, mmpretrain {mmpretrain.__version__}")
    np.savez_compressed(os.path.join(HERE, "mmpretrain_pipeline.npz"), **out)
    print(f"wrote {len(CASES)} cases ({out['versions']})")


if __name__ == "__main__":
    main()
