"""The one preprocessing (mobileone_cli.data): the tensors fed to the model, pixel for pixel,
against mmpretrain's own pipeline (a fixture its libraries wrote) and against an independent
implementation (tests/imaging.py), at sizes where the rounding rules decide pixels."""
from __future__ import annotations

import hashlib
import os
import struct
import zlib

import numpy as np
import pytest
import torch

from mobileone_cli.data.folders import Item, open_dataset, spread
from mobileone_cli.data.pipeline import (ImageError, Preprocessing, load_tensor,
                                         make_preprocessing)
from mobileone_cli.data.stream import stream_batches
from mobileone_cli.errors import BadInput

from .imaging import MEAN, STD, half_to_even_offset, pattern, reference, reference_file, \
    resized, write_image

pytest.importorskip("PIL")

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "mmpretrain_pipeline.npz")


def normalise(crop_hwc: np.ndarray) -> torch.Tensor:
    """mmpretrain ClsDataPreprocessor on an RGB uint8 crop: float32 (x - mean) / std."""
    x = torch.from_numpy(np.ascontiguousarray(crop_hwc)).permute(2, 0, 1).float()
    return (x - torch.tensor(MEAN).view(-1, 1, 1)) / torch.tensor(STD).view(-1, 1, 1)


def _fixture_cases():
    data = np.load(FIXTURE)
    names = sorted({k.split("/")[0] for k in data.files if "/" in k})
    return [(n, {k.split("/")[1]: data[k] for k in data.files if k.startswith(n + "/")})
            for n in names]


@pytest.mark.parametrize("name,case", _fixture_cases(), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_matches_mmpretrains_own_pipeline(name, case, tmp_path):
    """Files decoded, resized, cropped by mmcv/mmpretrain themselves (OpenCV decoding, EXIF
    orientation, 16-bit and alpha handling included) give exactly our tensor."""
    path = tmp_path / f"img.{case['format']}"
    path.write_bytes(case["file"].tobytes())
    resize, ch, cw = (int(v) for v in case["params"])
    p = Preprocessing(resize=resize, crop=(ch, cw), interpolation=str(case["interpolation"]))
    got = load_tensor(str(path), p)
    assert got.dtype == torch.float32 and got.shape == (3, ch, cw)
    crop = case["crop"]
    if "sha256" in case:  # a full 224x224 crop is stored as its digest and a corner
        assert tuple(case["shape"]) == (ch, cw, 3)
        pixels = torch.round(got * torch.tensor(STD).view(-1, 1, 1)
                             + torch.tensor(MEAN).view(-1, 1, 1)).to(torch.uint8)
        assert torch.equal(normalise(pixels.permute(1, 2, 0).numpy()), got)
        digest = hashlib.sha256(pixels.permute(1, 2, 0).contiguous().numpy().tobytes())
        assert digest.hexdigest() == str(case["sha256"])
        got = got[:, :16, :16]
    assert torch.equal(got, normalise(crop))


# Sizes (w, h) with the resize (short edge) and crop (h, w) where each rounding rule matters.
ROUNDING = [
    ((200, 201), 256, (224, 224)),  # long edge 257: offset 16.5 -> 16 (half to even)
    ((200, 203), 256, (224, 224)),  # long edge 259: offset 17.5 -> 18
    ((150, 226), 256, (224, 224)),  # long edge 385.7 -> 385 (truncated, not rounded)
    ((451, 300), 256, (224, 224)),  # landscape: width 384.85 -> 384
    ((256, 256), 256, (224, 224)),  # already the size: not resampled
    ((37, 23), 64, (56, 56)),  # upscaled
    ((90, 64), 64, (57, 56)),  # short-side offset 3.5 -> 4
    ((1000, 101), 64, (48, 64)),  # wide strip, non-square crop
]


@pytest.mark.parametrize("size,resize,crop", ROUNDING)
def test_tensor_fed_to_the_model_equals_independent_pipeline(size, resize, crop, tmp_path):
    w, h = size
    arr = pattern(w, h, salt=w + h)
    path = write_image(str(tmp_path / "a.png"), arr)
    p = Preprocessing(resize=resize, crop=crop)
    want = torch.from_numpy(reference(arr, resize=resize, crop=crop))
    assert torch.equal(load_tensor(path, p), want)
    # ... and what the evaluation stream batches (the model's input) is that same tensor
    batch = next(stream_batches([Item(path, "a.png", 0)], p, 4, workers=1))
    assert batch.x.shape == (1, 3, *crop) and torch.equal(batch.x[0], want)


def test_rounding_cases_are_real():
    """The sizes above do separate the rules: a floor(x + 0.5) offset or a rounded long edge
    would pick other pixels."""
    _, long = resized(200, 201, 256)
    assert long == 257 and half_to_even_offset(long, 224) == 16 != int(np.floor(16.5 + 0.5))
    assert half_to_even_offset(259, 224) == 18
    assert resized(150, 226, 256)[1] == 385 != round(256 * 226 / 150)
    from PIL import Image

    arr = pattern(200, 201, salt=401)
    one_row_lower = np.asarray(Image.fromarray(arr).resize((256, 257), Image.BILINEAR))[17:241,
                                                                                       16:240]
    assert not torch.equal(torch.from_numpy(reference(arr)), normalise(one_row_lower))


def test_verify_images_uses_the_same_pipeline(tmp_path):
    from mobileone_cli.check.images import load_images

    for i, (w, h) in enumerate([(200, 201), (90, 64)]):
        write_image(str(tmp_path / f"{i}.png"), pattern(w, h, salt=i))
    x, names = load_images(str(tmp_path), (224, 224))
    assert names == ["0.png", "1.png"]
    for i in range(2):
        assert torch.equal(x[i], torch.from_numpy(reference_file(str(tmp_path / names[i]))))


def test_overrides_reach_the_pixels(tmp_path):
    arr = pattern(300, 200, salt=3)
    path = write_image(str(tmp_path / "a.png"), arr)
    p = make_preprocessing(resize=100, crop="80x96", interpolation="bicubic",
                           mean="0.5,0.5,0.5", std="0.25 0.25 0.25")
    assert p.mean == (127.5,) * 3 and p.std == (63.75,) * 3  # fractions of 255
    want = reference(arr, resize=100, crop=(80, 96), interpolation="bicubic",
                     mean=(127.5,) * 3, std=(63.75,) * 3)
    assert torch.equal(load_tensor(path, p), torch.from_numpy(want))


def test_defaults_are_mmpretrains():
    p = make_preprocessing()
    assert p == Preprocessing() and p.is_default
    assert (p.resize, p.crop, p.interpolation) == (256, (224, 224), "bilinear")
    assert p.mean == (123.675, 116.28, 103.53) and p.std == (58.395, 57.12, 57.375)
    assert "mmpretrain" in p.describe() and "256" in p.describe()
    assert make_preprocessing(crop=192).resize == 219  # the 256:224 ratio is kept
    p = make_preprocessing(crop="160x192")
    assert p.crop == (160, 192) and p.resize == 219


@pytest.mark.parametrize("kw,message", [
    (dict(resize=256, crop=300), "does not fit"), (dict(resize=100, crop=224), "does not fit"),
    (dict(mean="1,2"), "three numbers"), (dict(std="10,0,10"), "> 0"),
    (dict(mean="a,b,c"), "three numbers"), (dict(std="nan,1,1"), "finite"),
    (dict(interpolation="cubic"), "one of"), (dict(mean="0.5,0.5,0.5"), "give both")])
def test_bad_overrides(kw, message):
    with pytest.raises(BadInput, match=message):
        make_preprocessing(**kw)


def _png_header_only(path, w, h):
    """A PNG whose header claims w x h pixels (no pixel data): a decompression bomb's shape."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IEND", b""))


def test_decoding_is_bounded(tmp_path):
    from mobileone_cli.rules.limits import MAX_IMAGE_PIXELS

    bomb = str(tmp_path / "bomb.png")
    _png_header_only(bomb, 60000, 60000)
    with pytest.raises(ImageError, match="limit"):
        load_tensor(bomb, Preprocessing())
    # a thin strip is small, but resizing its short edge to 256 would make it huge
    strip = write_image(str(tmp_path / "strip.png"), pattern(20000, 1))
    with pytest.raises(ImageError, match="long side is more than"):
        load_tensor(strip, Preprocessing())
    # within the aspect bound, a large --resize is bounded too
    wide = write_image(str(tmp_path / "wide.png"), pattern(1000, 100))
    assert MAX_IMAGE_PIXELS < 40960 * 4096
    with pytest.raises(ImageError, match="resized"):
        load_tensor(wide, Preprocessing(resize=4096))


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0 not a jpeg",
                                     b"GIF89a"])
def test_unreadable_is_an_image_error(content, tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match="cannot read image"):
        load_tensor(str(path), Preprocessing())


def test_truncated_jpeg_is_unreadable_and_stream_goes_on(tmp_path):
    good = write_image(str(tmp_path / "good.jpg"), pattern(120, 90), quality=90)
    data = open(good, "rb").read()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    seen = []
    batches = list(stream_batches([Item(good, "good", 1), Item(str(bad), "cut", 2),
                                   Item(good, "good2", 3)], Preprocessing(crop=(56, 56),
                                                                          resize=64), 2,
                                  workers=2, unreadable=lambda it, why: seen.append(it.name)))
    assert seen == ["cut"]
    assert [b.names for b in batches] == [["good", "good2"]]
    assert batches[0].labels.tolist() == [1, 3]


def test_spread_limit_covers_the_dataset():
    assert list(spread(10, None)) == list(range(10))
    assert list(spread(10, 4)) == [0, 2, 5, 7]
    assert list(spread(3, 5)) == [0, 1, 2]


def test_class_folder_order_is_torchvisions(tmp_path):
    """Classes by sorted folder name, images recursively in sorted order, hidden folders and
    non-images ignored."""
    for rel in ["b/2.png", "b/1.jpg", "a/z/9.png", "a/0.png", "a/x.txt", ".hidden/h.png",
                "c/.ipynb_checkpoints/k.png", "c/k.PNG"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    ds = open_dataset(str(tmp_path), num_classes=3)
    assert ds.class_names == ["a", "b", "c"] and ds.total == 5
    items = [(i.name, i.label) for i in ds.items()]
    assert items == [(os.path.join("a", "0.png"), 0), (os.path.join("a", "z", "9.png"), 0),
                     (os.path.join("b", "1.jpg"), 1), (os.path.join("b", "2.png"), 1),
                     (os.path.join("c", "k.PNG"), 2)]
