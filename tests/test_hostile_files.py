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

from .hostile import (assert_bounded, assert_refused, run_bounded, safetensors_with_header,
                      zip_bomb)


pytestmark = pytest.mark.usefixtures("one_thread")


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


# --------------------------------------------------------------------------- unbounded work

@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_zip_bomb_is_refused_without_inflating(command, tmp_path, tiny_sd):
    """A ~3 MB .pth whose one deflated record inflates to 3 GiB (torch never compresses): read
    in the past in full, twice (the load and the CRC pass: 6.4 GB, 60 s for 6 GiB).  Refused
    from the zip directory alone, under a 2 GiB address-space cap."""
    src = tmp_path / "bomb.pth"
    declared = zip_bomb(str(src), tiny_sd, gib=3)
    assert declared == 3 << 30 and src.stat().st_size < 8 << 20
    before = src.read_bytes()
    dst = tmp_path / "o.pth"
    args = ["inspect", src] if command == "inspect" else ["convert", src, dst]
    res = run_bounded(*args, limit_mb=2048)
    assert_refused(res, str(dst), str(src), "is compressed", "not written by torch.save")
    assert_bounded(res, mb=600, cpu_s=30)
    assert src.read_bytes() == before


def test_zip_bomb_really_inflates_to_gibibytes(tmp_path, tiny_sd):
    """Control for the test above: the record is a valid deflate stream that a reader which
    trusts it inflates to what it declares (checked on its first 64 MiB)."""
    import zipfile

    src = tmp_path / "bomb.pth"
    zip_bomb(str(src), tiny_sd, gib=1)
    with zipfile.ZipFile(src) as zf:
        info = next(i for i in zf.infolist() if i.compress_type == zipfile.ZIP_DEFLATED)
        assert info.file_size == 1 << 30 and info.compress_size < 2 << 20
        with zf.open(info) as fh:
            got = sum(len(fh.read(1 << 20)) for _ in range(64))
    assert got == 64 << 20


def test_stored_record_larger_than_the_file_is_refused(tmp_path, tiny_sd):
    """A stored record cannot hold more bytes than the file: its declared size is a lie."""
    import zipfile

    src = tmp_path / "liar.pth"
    torch.save(tiny_sd, src)
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename)
    # Its central directory entry: name length at offset 28, name at 46, size at 24.
    pos = data.find(b"PK\x01\x02")
    while data[pos + 46:pos + 46 + len(info.filename)] != info.filename.encode():
        pos = data.find(b"PK\x01\x02", pos + 4)
        assert pos != -1
    data[pos + 24:pos + 28] = struct.pack("<I", 0xFFFFFFF0)
    src.write_bytes(bytes(data))
    dst = str(tmp_path / "o.pth")
    from .hostile import invoke

    assert_refused(invoke("convert", str(src), dst), dst, "declares", "-byte file")


# The safetensors library's rules, and numbers or nesting a JSON parser can choke on (never exit 3).
HOSTILE_HEADERS = [
    (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b'{"a": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 16]}}', "does not fill"),
    (b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1e400]}}', "data_offsets"),
    (b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, NaN]}}', "NaN is not JSON"),
    (b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 16]}}',
     "an integer of 5000 digits"),
    (b'{"a": {"dtype": "F32", "shape": [4.0], "data_offsets": [0, 16]}}', "does not fill"),
    (b'{"a": {"dtype": "F32", "shape": [true, 4], "data_offsets": [0, 16]}}', "does not fill"),
    (b'{"a": {"dtype": 5, "shape": [4], "data_offsets": [0, 16]}}', "dtype, shape"),
    (b'{"a": {"dtype": "f32", "shape": [4], "data_offsets": [0, 16]}}', "unknown dtype"),
    (b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16, 16]}}', "data_offsets"),
    (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}', "starts at byte 8"),
    (b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, '
     b'"b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', "starts at byte 0"),
    (b'{"__metadata__": {"k": {"x": 1}}, "a": {"dtype": "F32", "shape": [4], '
     b'"data_offsets": [0, 16]}}', "__metadata__"),
    (b'{"a": [1]}', "not a JSON object"),
]


@pytest.mark.parametrize("header,needle", HOSTILE_HEADERS,
                         ids=[f"h{i}" for i in range(len(HOSTILE_HEADERS))])
def test_hostile_safetensors_headers_are_bad_input_for_inspect_and_convert(header, needle,
                                                                            tmp_path):
    """One header parser: inspect refuses exactly what convert refuses, with the same line."""
    from .hostile import invoke

    src = tmp_path / "bad.safetensors"
    safetensors_with_header(src, header, payload=b"\0" * 16)
    dst = str(tmp_path / "o.safetensors")
    conv = invoke("convert", str(src), dst)
    assert_refused(conv, dst, needle, "corrupt safetensors header")
    insp = invoke("inspect", str(src))
    assert_refused(insp, None, needle)
    assert insp.stderr.splitlines()[0] == conv.stderr.splitlines()[0]


def test_headers_the_library_accepts_are_accepted(tmp_path):
    """The parser is not stricter than the safetensors library: every header the library
    loads (scalars, empty tensors, unknown extra fields, padding, null metadata) lists."""
    from safetensors.torch import load_file

    from mobileone_cli.io.read import read_safetensors_header

    for header in (b'{"a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}, '
                   b'"b": {"dtype": "F32", "shape": [3], "data_offsets": [4, 16]}}',
                   b'{"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, '
                   b'"b": {"dtype": "U16", "shape": [8], "data_offsets": [0, 16]}}',
                   b'{"__metadata__": null, "a": {"dtype": "F32", "shape": [4], '
                   b'"data_offsets": [0, 16], "extra": {"x": 1}}}     '):
        path = tmp_path / "ok.safetensors"
        safetensors_with_header(path, header, payload=b"\0" * 16)
        lib = {k: tuple(v.shape) for k, v in load_file(str(path)).items()}
        ours, _ = read_safetensors_header(str(path))
        assert {k: shape for k, (_, shape) in ours.items()} == lib
    for header, _ in HOSTILE_HEADERS[1:]:  # and the library refuses what we refuse
        path = tmp_path / "bad.safetensors"
        safetensors_with_header(path, header, payload=b"\0" * 16)
        with pytest.raises(Exception):
            load_file(str(path))


def test_deep_header_costs_neither_time_nor_memory(tmp_path):
    """80 MB of brackets (the format allows 100 MB of header): the parser stops at its stack
    depth, torch-free, in a fraction of a second of CPU."""
    src = tmp_path / "deep.safetensors"
    n = 40 * 1024 * 1024
    safetensors_with_header(src, b'{"a": ' + b"[" * n + b"]" * n + b"}", payload=b"")
    res = run_bounded("inspect", src, limit_mb=1024)
    assert_refused(res, None, "nested too deeply")
    assert_bounded(res, mb=400, cpu_s=20)


def test_a_million_tensor_entries_are_refused_from_the_count(tmp_path):
    """67 MB of empty entries: 27 CPU s and 2.3 GB for convert to find no MobileOne in them.
    Refused from the count, torch-free, before any of them is looked at."""
    from mobileone_cli.rules.limits import MAX_TENSORS

    n = MAX_TENSORS + 1
    src = tmp_path / "many.safetensors"
    header = json.dumps({f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
                         for i in range(n)}).encode()
    safetensors_with_header(src, header, payload=b"")
    res = run_bounded("convert", src, tmp_path / "o.pth", limit_mb=2048)
    assert_refused(res, str(tmp_path / "o.pth"), f"{n:,} tensors", f"at most {MAX_TENSORS:,}")
    assert_bounded(res, mb=600, cpu_s=30)
