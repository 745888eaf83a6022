"""Hostile file containers: missing, special, truncated, flipped, foreign, malformed or built to
make the reader do unbounded work (zip bombs, safetensors headers that exhaust the parser).

Each refusal is exit 2 with one error line naming the file, before any unbounded work: the
bombs run in a subprocess under an address-space cap far below what inflating them would take.
"""
from __future__ import annotations

import json
import os
import struct

import pytest
import torch

from .hostile import (assert_bounded, assert_refused, one_thread, run_bounded,  # noqa: F401
                      safetensors_with_header, tiny_sd, zip_bomb)


def test_missing_directory_and_empty(tmp_path, run_cli):
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(tmp_path / "nope.pth"), dst), dst, "no such file")
    assert_refused(run_cli("convert", str(tmp_path), dst), dst)  # a folder means batch mode
    assert_refused(run_cli("inspect", str(tmp_path)), None, "is a directory")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert_refused(run_cli("convert", str(empty), dst), dst, "empty file")


def test_pipes_and_devices_are_refused_without_blocking(tmp_path, run_cli):
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)  # opening it for reading would wait forever for a writer
    dst = str(tmp_path / "o.pth")
    for src in (str(fifo), os.devnull):
        assert_refused(run_cli("convert", src, dst), dst, "not a regular file")


@pytest.mark.parametrize("kind", ["zip-half", "zip-head", "zip-minus-one", "legacy-half"])
def test_truncated_files(kind, tmp_path, tiny_sd, run_cli):
    src = tmp_path / "t.pth"
    torch.save(tiny_sd, src, _use_new_zipfile_serialization=kind.startswith("zip"))
    data = src.read_bytes()
    cut = {"zip-half": len(data) // 2, "zip-head": 100, "zip-minus-one": len(data) - 1,
           "legacy-half": len(data) // 2}[kind]
    src.write_bytes(data[:cut])
    dst = str(tmp_path / "o.pth")
    res = run_cli("convert", str(src), dst)
    assert_refused(res, dst, str(src))
    assert any(w in res.stderr for w in ("truncated", "corrupt")), res.stderr


def test_bit_flip_in_tensor_data_fails_the_crc(tmp_path, tiny_sd, run_cli):
    """torch.load checks no checksum; we do: a flipped bit is not a silently wrong weight."""
    import zipfile

    src = tmp_path / "flip.pth"
    torch.save(tiny_sd, src)
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename and i.file_size > 64)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                      info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + 17] ^= 0x04
    src.write_bytes(bytes(data))
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "CRC")


@pytest.mark.parametrize("name,content", [
    ("random.pth", os.urandom(4096)),
    ("model.json", json.dumps({"stage0.weight": [1.0, 2.0]}).encode()),
    ("config.yaml", b"model:\n  type: MobileOne\n  arch: s0\n"),
    ("text.pth", b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"),
])
def test_not_a_checkpoint(name, content, tmp_path, run_cli):
    src = tmp_path / name
    src.write_bytes(content)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "not a PyTorch or safetensors")


@pytest.mark.parametrize("header,needle", [
    (b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]', "corrupt safetensors header"),
    (b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 9999]}}', "outside the file"),
    (b'{"a": {"dtype": "F32", "shape": [4]}}', "corrupt safetensors header"),
    (b'{"__metadata__": [1], "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}',
     "__metadata__"),
    (b'["not", "an", "object"]', "not a PyTorch or safetensors"),
    (b'{"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}', "does not fill"),
    (b'{"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}', "does not fill"),
    (b'{"a": {"dtype": "WEIRD", "shape": [4], "data_offsets": [0, 16]}}', ""),
])
def test_corrupt_safetensors_header(header, needle, tmp_path, run_cli):
    src = tmp_path / "bad.safetensors"
    safetensors_with_header(src, header)
    dst = str(tmp_path / "o.safetensors")
    assert_refused(run_cli("convert", str(src), dst), dst, needle)
    res = run_cli("inspect", str(src))
    assert_refused(res, None, needle)


def test_safetensors_header_length_beyond_file(tmp_path, run_cli):
    src = tmp_path / "bad.safetensors"
    src.write_bytes(struct.pack("<Q", 10 ** 12) + b'{"a": 1}')
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst)
