"""Batch conversion (`convert SRC_DIR DST_DIR`, `convert A B ... DST_DIR`).

Good files must come out converted (checked here against their train model, independently of the
package's own check), a bad file must be reported in its row without stopping the run, and the
exit code must say that something failed.  The checkpoints are a small MobileOne (4 stages, SE in
the last two, 2 conv branches) that detection recognises from its shapes, so the many conversions
stay fast; s0..s4 go through the same convert_file in the other tests.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from mobileone_cli.jobs.batch import (BatchItem, batch_exit_code, convert_many, find_checkpoints,
                                 plan_batch)
from mobileone_cli.io.read import load_checkpoint
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.errors import BadInput
from mobileone_cli.arch.layouts import remap, schema
from mobileone_cli.models.mobileone import MobileOne
from mobileone_cli.models.synthetic import random_state_dict

from .conftest import FOUR_STAGE




def _write(path, layout="apple", seed=0):
    sd = random_state_dict(FOUR_STAGE, layout=layout, seed=seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_checkpoint(str(path), sd, force=True)
    return sd


def _matches_train(train_sd, layout, out_path):
    """The written deploy file computes what the train model (eval mode) computes."""
    arch = FOUR_STAGE
    out = load_checkpoint(str(out_path)).state_dict
    train = MobileOne(arch).eval()
    train.load_state_dict(remap(train_sd, arch, layout, "apple", "train"))
    deploy = MobileOne(arch, deploy=True).eval()
    deploy.load_state_dict(remap(out, arch, layout, "apple", "deploy"))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, got = train(x), deploy(x)
    return float((ref - got).abs().max() / ref.abs().max()) < 1e-4


@pytest.fixture
def src_dir(tmp_path):
    """Two good checkpoints (one in a sub-folder, safetensors, timm layout), a truncated one, and
    files that are not checkpoints."""
    src = tmp_path / "run"
    good = {"epoch_1.pth": _write(src / "epoch_1.pth", seed=1),
            "sub/ema.safetensors": _write(src / "sub" / "ema.safetensors", layout="timm", seed=2)}
    whole = (src / "epoch_1.pth").read_bytes()
    (src / "epoch_2.pth.tar").write_bytes(whole[: len(whole) // 3])  # a crash mid-save
    (src / "log.txt").write_text("not a checkpoint")
    (src / ".hidden").mkdir()
    (src / ".hidden" / "x.pth").write_bytes(whole)
    return src, good


def test_folder_with_a_corrupt_file(src_dir, run_cli, tmp_path):
    src, good = src_dir
    dst = tmp_path / "deploy"
    res = run_cli("convert", str(src), str(dst), "--json")
    assert res.exit_code == 2, res.output
    info = json.loads(res.stdout)
    rows = {os.path.relpath(f["src"], src): f for f in info["files"]}
    assert set(rows) == {"epoch_1.pth", "epoch_2.pth.tar", os.path.join("sub", "ema.safetensors")}
    assert rows["epoch_2.pth.tar"]["status"] == "bad input"
    assert "epoch_2.pth.tar" in rows["epoch_2.pth.tar"]["message"]
    assert info["converted"] == 2 and info["failed"] == 1 and info["exit_code"] == 2
    # Fused outputs get the _deploy suffix; the extension (hence the format) is the input's.
    assert sorted(os.path.relpath(os.path.join(r, f), dst) for r, _, fs in os.walk(dst)
                  for f in fs) == ["epoch_1_deploy.pth",
                                   os.path.join("sub", "ema_deploy.safetensors")]
    assert _matches_train(good["epoch_1.pth"], "apple", dst / "epoch_1_deploy.pth")
    assert _matches_train(good["sub/ema.safetensors"], "timm",
                          dst / "sub" / "ema_deploy.safetensors")
    for name in ("epoch_1.pth", os.path.join("sub", "ema.safetensors")):
        assert rows[name]["status"] == "ok" and rows[name]["arch"] == "custom"
        assert rows[name]["max_rel"] < 1e-4
    # The output keeps the input's format: safetensors stays safetensors.
    assert (dst / "sub" / "ema_deploy.safetensors").read_bytes()[8:9] == b"{"


def test_table_and_exit_code_in_text_mode(src_dir, run_cli, tmp_path):
    src, _ = src_dir
    res = run_cli("convert", str(src / "epoch_1.pth"), str(src / "epoch_2.pth.tar"),
                  str(tmp_path / "out"))
    assert res.exit_code == 2
    for word in ("file", "output", "arch", "result", "max rel diff", "bad input",
                 "1 of 2 converted", "epoch_1_deploy.pth"):
        assert word in res.stdout, word
    assert "Traceback" not in res.output


def test_several_files_into_a_folder_all_good(tmp_path, run_cli):
    a = _write(tmp_path / "a" / "m.pth", seed=4)
    _write(tmp_path / "b" / "n.pth", layout="mmpretrain", seed=5)
    out = tmp_path / "out"
    res = run_cli("convert", str(tmp_path / "a" / "m.pth"), str(tmp_path / "b" / "n.pth"),
                  str(out), "--to", "timm", "--dtype", "fp16", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert [f["status"] for f in info["files"]] == ["ok", "ok"]
    assert [f["layout"] for f in info["files"]] == ["apple -> timm", "mmpretrain -> timm"]
    assert all(0 < f["rounded_max_rel"] < 1e-2 for f in info["files"])
    sd = load_checkpoint(str(out / "m_deploy.pth")).state_dict
    assert all(v.dtype == torch.float16 for v in sd.values())
    assert "stem.reparam_conv.weight" in sd
    assert len(a) == len(schema(FOUR_STAGE, "apple", "train"))
    assert len(sd) == len(schema(FOUR_STAGE, "timm", "deploy"))


def test_existing_outputs_are_kept_without_force(tmp_path, run_cli):
    _write(tmp_path / "src" / "a.pth", seed=6)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_deploy.pth").write_bytes(b"keep")
    res = run_cli("convert", str(tmp_path / "src"), str(out), "--json")
    assert res.exit_code == 2
    row = json.loads(res.stdout)["files"][0]
    assert row["status"] == "bad input" and "--force" in row["message"]
    assert (out / "a_deploy.pth").read_bytes() == b"keep"
    # Re-running a batch: --skip-existing leaves the existing output alone and exits 0.
    res = run_cli("convert", str(tmp_path / "src"), str(out), "--skip-existing", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["files"][0]["status"] == "skipped"
    assert (out / "a_deploy.pth").read_bytes() == b"keep"
    assert run_cli("convert", str(tmp_path / "src"), str(out), "--force").exit_code == 0
    assert (out / "a_deploy.pth").read_bytes() != b"keep"


def test_single_file_into_an_existing_folder(tmp_path, run_cli):
    _write(tmp_path / "x.pth", seed=7)
    (tmp_path / "out").mkdir()
    res = run_cli("convert", str(tmp_path / "x.pth"), str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "x_deploy.pth").exists()


@pytest.mark.parametrize("case, msg", [
    ("dst_is_file", "is not a directory"),
    ("dst_looks_like_file", "must be a directory"),
    ("empty_dir", "no checkpoint files found"),
    ("same_name", "would both be written"),
    ("generic", "one file at a time"),
    ("dst_is_src", "is the source folder"),
    ("bad_template", "fields are {stem}, {suffix} and {ext}"),
    ("single_with_jobs", "--jobs applies to batch mode"),
])
def test_batch_refusals_exit_2_before_any_work(case, msg, tmp_path, run_cli):
    a = tmp_path / "a.pth"
    a.write_bytes(b"x")
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    (tmp_path / "d1" / "m.pth").write_bytes(b"x")
    (tmp_path / "d2" / "m.pth").write_bytes(b"x")
    args = {"dst_is_file": [str(tmp_path / "d1"), str(a)],
            "dst_looks_like_file": [str(a), str(a), str(tmp_path / "new.pth")],
            "empty_dir": [str(tmp_path / "empty"), str(tmp_path / "out")],
            "same_name": [str(tmp_path / "d1" / "m.pth"), str(tmp_path / "d2" / "m.pth"),
                          str(tmp_path / "out")],
            "generic": [str(tmp_path / "d1"), str(tmp_path / "out"), "--generic"],
            "dst_is_src": [str(tmp_path / "d1"), str(tmp_path / "d1" / ".." / "d1"),
                           "--suffix", ""],
            "bad_template": [str(tmp_path / "d1"), str(tmp_path / "out"), "--name", "{arch}"],
            "single_with_jobs": [str(a), str(tmp_path / "o.pth"), "--jobs", "2"]}[case]
    if case == "empty_dir":
        (tmp_path / "empty").mkdir()
    res = run_cli("convert", *args)
    assert res.exit_code == 2, res.output
    assert msg in res.stderr
    assert not (tmp_path / "out").exists()


def test_find_checkpoints_extensions_and_skips(tmp_path):
    for name in ("a.pth", "b.pth.tar", "c.pt", "d.bin", "e.safetensors", "f.ckpt", "g.txt",
                 "h.onnx", ".i.pth", "out/j.pth", ".git/k.pth"):
        p = tmp_path / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    found = [os.path.relpath(f, tmp_path) for f in find_checkpoints(str(tmp_path),
                                                                    skip=str(tmp_path / "out"))]
    assert found == ["a.pth", "b.pth.tar", "c.pt", "d.bin", "e.safetensors", "f.ckpt"]


def test_convert_many_records_every_failure_kind(tmp_path, monkeypatch):
    """Library level: a mismatch and an internal error are recorded, the run goes on."""
    import mobileone_cli.jobs.convert as conv
    from mobileone_cli.errors import VerificationFailed

    good = tmp_path / "good.pth"
    _write(good, seed=8)
    real = conv.convert_file

    def fake(src, dst, options=None, **kw):
        if src.endswith("mismatch.pth"):
            raise VerificationFailed(f"{src}: fused model differs")
        if src.endswith("bug.pth"):
            raise ZeroDivisionError("oops")
        return real(src, dst, options, **kw)

    monkeypatch.setattr(conv, "convert_file", fake)
    pairs = [(str(tmp_path / n), str(tmp_path / "out" / n))
             for n in ("mismatch.pth", "bug.pth", "good.pth")]
    seen = []
    items = convert_many(pairs, on_done=lambda i, it: seen.append(it.status))
    assert seen == ["mismatch", "internal error", "ok"]
    assert [it.exit_code for it in items] == [1, 3, 0]
    assert "ZeroDivisionError" in items[1].message
    assert (tmp_path / "out" / "good.pth").exists()
    assert batch_exit_code(items) == 3
    assert batch_exit_code(items[::2]) == 1


def test_batch_exit_code_priority():
    def item(code):
        return BatchItem("s", "d", "x", code)

    assert batch_exit_code([item(0), item(0)]) == 0
    assert batch_exit_code([item(0), item(2)]) == 2
    assert batch_exit_code([item(2), item(1)]) == 1
    assert batch_exit_code([item(1), item(3), item(2)]) == 3


def test_plan_batch_mirrors_subfolders(tmp_path):
    (tmp_path / "src" / "x").mkdir(parents=True)
    (tmp_path / "src" / "x" / "m.pth").write_bytes(b"x")
    pairs = plan_batch([str(tmp_path / "src")], str(tmp_path / "dst"))
    assert pairs == [(str(tmp_path / "src" / "x" / "m.pth"), str(tmp_path / "dst" / "x" / "m.pth"))]
    with pytest.raises(BadInput):
        plan_batch([str(tmp_path / "src")], str(tmp_path / "src" / "x" / "m.pth"))


def test_output_names():
    from mobileone_cli.jobs.batch import output_name

    assert output_name("mobileone_s0_unfused.pth.tar", "_deploy") == "mobileone_s0_deploy.pth.tar"
    assert output_name("ema.safetensors", "_deploy") == "ema_deploy.safetensors"
    assert output_name("m.pth", "") == "m.pth"
    assert output_name("m.pth", "_x", "{stem}_timm{suffix}{ext}") == "m_timm_x.pth"
    with pytest.raises(BadInput):
        output_name("m.pth", "", "../{stem}{ext}")


def test_parallel_jobs_keep_order_and_report_failures(tmp_path, run_cli):
    """--jobs 2: the same rows, in input order, as a serial run; a bad file is its own row."""
    for i in range(4):
        _write(tmp_path / "src" / f"m{i}.pth", seed=10 + i)
    whole = (tmp_path / "src" / "m0.pth").read_bytes()
    (tmp_path / "src" / "m2.pth").write_bytes(whole[:500])
    runs = {}
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker computes: the same reduction order, the same bits
    try:
        for jobs in ("1", "2"):
            out = tmp_path / f"out{jobs}"
            res = run_cli("convert", str(tmp_path / "src"), str(out), "--jobs", jobs, "--json")
            assert res.exit_code == 2, res.output
            runs[jobs] = json.loads(res.stdout)["files"]
    finally:
        torch.set_num_threads(threads)
    assert [(f["src"], f["status"]) for f in runs["1"]] == \
        [(f["src"], f["status"]) for f in runs["2"]]
    assert [f["status"] for f in runs["2"]] == ["ok", "ok", "bad input", "ok"]
    for a, b in zip(runs["1"], runs["2"]):  # same conversion in a worker: same numbers
        assert a["max_rel"] == b["max_rel"]
    assert sorted(os.listdir(tmp_path / "out2")) == ["m0_deploy.pth", "m1_deploy.pth",
                                                      "m3_deploy.pth"]


def test_a_failed_row_keeps_what_was_learned(tmp_path, monkeypatch):
    """A file that fails its check still shows its arch, layout and the difference found."""
    import mobileone_cli.fuse.fusion as fusion

    _write(tmp_path / "src" / "m.pth", seed=20)
    real = fusion.fuse_block

    def buggy(sd, block, **kw):
        out = real(sd, block, **kw)
        return {k: v * 1.05 if block.name == "stage2.1" and "reparam" in k else v
                for k, v in out.items()}

    monkeypatch.setattr(fusion, "fuse_block", buggy)
    items = convert_many(plan_batch([str(tmp_path / "src")], str(tmp_path / "out"),
                                    suffix="_deploy"), input_size=(64, 64))
    it = items[0]
    assert it.status == "mismatch" and it.exit_code == 1
    assert it.arch == "custom" and it.layout == "apple" and it.max_rel > 1e-3
