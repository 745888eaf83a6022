"""Terminal injection: every string that comes from the user or from a file is shown as text.

File names, key names, safetensors metadata, config names and messages quoted from files reach
tables and error lines.  Rich markup in them (``[link=...]`` becomes a hidden OSC-8 hyperlink)
must stay literal text, escape sequences (a window-title OSC, a hyperlink) must never reach the
terminal raw, and a newline must not add a line: a key named ``x\\nOK: verified`` could forge a
success line under an error.  Output is produced as for a colour terminal (``FORCE_COLOR``), so
that markup which slipped through would show up as escape sequences.
"""
from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from .hostile import assert_bounded, assert_refused, invoke, run_bounded


pytestmark = pytest.mark.usefixtures("one_thread")

# A file name cannot hold '/', so the markup is an unclosed tag (it links the rest of the line).
EVIL = "e[link=mailto:a@evil.example]click\x1b]0;pwned\x07\nOK: fine"
EVIL_KEY = "neck.x\nOK: verified \x1b]8;;mailto:evil\x07[bold]b[/bold]"


@pytest.fixture(autouse=True)
def colour_terminal(monkeypatch):
    """A wide colour terminal: escape sequences are produced, and cells are not wrapped (so
    the literal text can be looked for)."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "2000")


def assert_inert(text: str) -> None:
    """Nothing from a file drove the terminal or forged a line."""
    assert "\x1b]8;" not in text, "an OSC-8 hyperlink reached the output"
    assert "\x1b]0;" not in text and "\x07" not in text, "a raw OSC/BEL reached the output"
    assert not [ln for ln in text.splitlines() if ln.lstrip().startswith("OK:")], text


@pytest.fixture
def evil_src(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    sd[EVIL_KEY] = torch.zeros(2)  # passes through as a key outside the MobileOne
    src = tmp_path / (EVIL + ".pth")
    torch.save(sd, src)
    return src


@pytest.mark.parametrize("command", ["convert", "inspect", "stats", "verify"])
def test_file_and_key_names_are_shown_as_text(command, evil_src, tmp_path, monkeypatch):
    # Relative names, so that tables (at most MAX_WIDTH wide) show the evil name whole.
    monkeypatch.chdir(tmp_path)
    src = os.path.basename(evil_src)
    args = {"convert": [src, "o.pth", "--input-size", "32"],
            "inspect": [src], "stats": [src],
            "verify": [src, "--input-size", "32", "--batch", "1"]}[command]
    res = invoke(command, *args)
    assert res.exit_code == 0, res.output
    out = res.stdout + res.stderr
    assert_inert(out)
    assert "[link=mailto:a@evil.example]" in out  # the markup is shown, not interpreted
    assert "\\x1b]0;pwned\\x07\\nOK: fine" in out  # control characters shown escaped
    if command == "inspect":
        assert "neck.x\\nOK: verified \\x1b]8;;mailto:evil\\x07[bold]b[/bold]" in out


def test_newline_in_a_key_cannot_forge_a_line_under_an_error(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    sd["stage1.0.rbr_conv.0.conv.weight\nOK: all good \x1b]0;t\x07"] = sd.pop(
        "stage1.0.rbr_conv.0.conv.weight")
    src = tmp_path / "keys.pth"
    torch.save(sd, src)
    dst = tmp_path / "o.pth"
    res = invoke("convert", str(src), str(dst))
    assert_refused(res, str(dst), "1 unexpected key(s)",
                   "stage1.0.rbr_conv.0.conv.weight\\nOK: all good \\x1b]0;t\\x07")
    assert_inert(res.stdout + res.stderr)


def test_safetensors_metadata_is_shown_as_text(tmp_path, tiny_sd):
    src = tmp_path / "m.safetensors"
    save_file(tiny_sd, str(src), metadata={"[link=mailto:e]k[/link]\nOK: x": "v\x1b]0;t\x07\n"
                                                                            "OK: meta"})
    res = invoke("inspect", str(src))
    assert res.exit_code == 0, res.output
    assert_inert(res.stdout)
    assert "[link=mailto:e]k[/link]\\nOK: x" in res.stdout and "v\\x1b]0;t\\x07\\nOK: meta" in \
        res.stdout


def test_batch_table_and_progress_show_names_as_text(tmp_path, tiny_sd):
    folder = tmp_path / "in"
    folder.mkdir()
    bad = dict(tiny_sd)
    bad[EVIL_KEY] = "not a tensor"  # a failing row whose message quotes the key
    torch.save({"state_dict": {**bad, "stage0.rbr_conv.0.conv.weight": 7}},
               folder / (EVIL + ".pth"))
    torch.save(tiny_sd, folder / "good.pth")
    res = invoke("convert", str(folder), str(tmp_path / "out"), "--input-size", "32")
    assert res.exit_code == 2, res.output
    out = res.stdout + res.stderr
    assert_inert(out)
    assert "[link=mailto:a@evil.example]" in out


def test_config_name_and_quoted_config_text_are_shown_as_text(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text('name: "[link=mailto:evil]n[/link]\\e]0;t\\a\\nOK: x"\n'
                   'model: {backbone: {arch: s0}}\n')
    res = invoke("stats", "--config", str(cfg))
    assert res.exit_code == 0, res.output
    assert_inert(res.stdout)
    assert "[link=mailto:evil]n[/link]" in res.stdout
    # A message quoting the file: an unknown field whose name holds the sequences.
    cfg.write_text('model: {backbone: {arch: {base: s0, "w\\e]0;t\\a\\nOK: x": 1}}}\n')
    res = invoke("stats", "--config", str(cfg))
    assert_refused(res, None, "unknown field")
    assert_inert(res.stdout + res.stderr)


def test_generic_convert_table_shows_names_as_text(evil_src, tmp_path):
    res = invoke("convert", str(evil_src), str(tmp_path / "g.pth"), "--generic")
    assert res.exit_code == 0, res.output
    assert_inert(res.stdout + res.stderr)
    assert "[link=mailto:a@evil.example]" in res.stdout


@pytest.mark.slow
def test_export_table_shows_names_as_text(evil_src, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    res = invoke("export", str(evil_src), str(tmp_path / (EVIL + ".onnx")), "--input-size", "32")
    assert res.exit_code == 0, res.output
    assert_inert(res.stdout + res.stderr)
    assert "[link=mailto:a@evil.example]" in res.stdout


def test_huge_names_are_cut_in_tables_and_errors(tmp_path, tiny_sd):
    """A megabyte-long key is shown by its start and a count, never in full."""
    sd = dict(tiny_sd)
    sd["k" * 1_000_000] = torch.zeros(1)
    src = tmp_path / "long.pth"
    torch.save(sd, src)
    res = invoke("inspect", str(src))
    assert res.exit_code == 0 and len(res.stdout) < 20_000
    sd = dict(tiny_sd)
    key = "stage1.0.rbr_conv.0.conv.weight"
    sd[key + "k" * 1_000_000] = sd.pop(key)
    torch.save(sd, src)
    res = invoke("convert", str(src), str(tmp_path / "o.pth"))
    assert_refused(res, str(tmp_path / "o.pth"), "1 unexpected key(s)", key + "kkkk", "k...")
    assert len(res.stderr) < 5_000


def _with_metadata(path, tensors, n: int) -> None:
    """A safetensors file with ``n`` metadata entries (written by hand: fast at a million)."""
    plain = str(path) + ".plain"
    save_file(tensors, plain)
    with open(plain, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
        payload = fh.read()
    os.unlink(plain)
    header["__metadata__"] = {f"k{i:07d}": f"v{i}" for i in range(n)}
    raw = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + payload)


def test_metadata_rows_are_capped_and_json_keeps_all(tmp_path, tiny_sd):
    src = tmp_path / "meta.safetensors"
    _with_metadata(src, tiny_sd, 5_000)
    res = invoke("inspect", str(src))
    assert res.exit_code == 0, res.output
    assert len(res.stdout.splitlines()) < 60 and "4,984 more entries" in res.stdout
    res = invoke("inspect", str(src), "--json")
    assert len(json.loads(res.stdout)["metadata"]) == 5_000


@pytest.mark.slow
def test_a_million_metadata_entries_are_summarised(tmp_path, tiny_sd):
    """inspect shows the first few entries and a count (a row per entry takes > 120 s for a
    million), torch-free, in seconds; --json keeps every entry."""
    src = tmp_path / "meta.safetensors"
    _with_metadata(src, tiny_sd, 1_000_000)
    res = run_bounded("inspect", src, limit_mb=2048)
    assert res.exit_code == 0, res.output
    assert_bounded(res, mb=1000, cpu_s=20)
    assert len(res.stdout.splitlines()) < 60
    assert "metadata.k0000000" in res.stdout and "999,984 more entries" in res.stdout
    res = run_bounded("inspect", src, "--json", limit_mb=2048)
    assert res.exit_code == 0 and len(json.loads(res.stdout)["metadata"]) == 1_000_000
    assert_bounded(res, mb=1000, cpu_s=20)


def test_printable_and_one_line():
    from mobileone_cli.errors import one_line, printable
    from mobileone_cli.render.console import safe

    # newline, ESC, BEL, DEL, a C1 control, right-to-left override, zero-width space
    s = "a\nb\x1b[31mc\x07\x7f\x9b\u202e\u200bd"
    assert printable(s) == "a\\nb\\x1b[31mc\\x07\\x7f\\x9b\\u202e\\u200bd"
    assert printable("plain ünïcode 名前") == "plain ünïcode 名前"
    assert one_line("x" * 50, 30) == "x" * 6 + "... (44 more characters)"
    assert one_line("x" * 30, 30) == "x" * 30
    assert safe("[bold]k[/bold]\n") == "\\[bold]k\\[/bold]\\n"
