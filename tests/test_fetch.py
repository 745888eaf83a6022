"""Checkpoints by name (apple:s0, mmpretrain:s0, timm:s0, hf-hub:..., https://...): fetched from a
loopback server at the official paths (tests/fetchserver.py), cached, checked, then read by the
same loader as a local file.  No test reaches the network."""
from __future__ import annotations

import hashlib
import io
import json
import os
import time

import pytest
import torch

from mobileone_cli.arch import sources
from mobileone_cli.arch.layouts import remap
from mobileone_cli.arch.sources import parse_remote
from mobileone_cli.errors import BadInput
from mobileone_cli.fuse.fusion import fuse_state_dict
from mobileone_cli.io.download import check_url
from mobileone_cli.models.synthetic import random_state_dict
from mobileone_cli.rules import limits

from .fetchserver import APPLE, COMMIT, MMPRETRAIN, FetchServer
from .conftest import TINY, invoke
from .hostile import assert_one_error, deploy_matches_train

S0 = APPLE + "mobileone_s0_unfused.pth.tar"
S0_FUSED = APPLE + "mobileone_s0.pth.tar"
MM_S0 = MMPRETRAIN + "mobileone-s0_8xb32_in1k_20221110-0bc94952.pth"
TIMM = "timm/mobileone_s0.apple_in1k"
# The check images of a fetched file's convert/verify: the whole check, at a size that keeps the
# loopback tests about fetching (the numbers are checked again by deploy_matches_train).
SMALL = ("--input-size", "64")


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def files():
    """The synthetic train state dict (Apple layout) and files made from it in each publisher's
    layout: Apple's bare unfused and fused state dicts, mmpretrain's {'meta', 'state_dict'},
    timm's safetensors and .bin."""
    from safetensors.torch import save

    sd = random_state_dict(TINY, seed=3)
    fused = fuse_state_dict(sd, TINY, eps=1e-5, layout="apple")
    timm = {k: v.contiguous() for k, v in remap(sd, TINY, "apple", "timm", "train").items()}
    mm = remap(sd, TINY, "apple", "mmpretrain", "train")
    return {"sd": sd, "apple": _torch_bytes(sd), "apple_fused": _torch_bytes(fused),
            "mmpretrain": _torch_bytes({"meta": {"epoch": 300}, "state_dict": mm}),
            "timm_st": save(timm), "timm_bin": _torch_bytes(timm)}


@pytest.fixture
def net(tmp_path, monkeypatch):
    """The loopback server as every source (Apple, OpenMMLab, the Hub), and an empty cache."""
    with FetchServer() as server:
        monkeypatch.setenv("MOBILEONE_APPLE_URL", server.url + APPLE)
        monkeypatch.setenv("MOBILEONE_MMPRETRAIN_URL", server.url + MMPRETRAIN)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("MOBILEONE_CACHE", str(tmp_path / "cache"))
        for name in ("MOBILEONE_OFFLINE", "MOBILEONE_TIMEOUT", "HF_TOKEN", "XDG_CACHE_HOME"):
            monkeypatch.delenv(name, raising=False)
        yield server


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cache_files(tmp_path):
    root = tmp_path / "cache"
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not p.name.endswith(".lock"))


def _refused(res, *needles):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert_one_error(res.stderr, *needles)


# --------------------------------------------------------------------------- names

def test_names_parse_to_the_table():
    assert parse_remote("apple:s2").known.file == "mobileone_s2_unfused.pth.tar"
    assert parse_remote("apple:S2-fused").known.form == "deploy"
    mm = parse_remote("mmpretrain:mobileone_s4").known
    assert mm.file == "mobileone-s4_8xb32_in1k_20221110-28d888cb.pth"
    assert mm.sha256_prefix == "28d888cb" and mm.layout == "mmpretrain"
    hub = parse_remote("hf-hub:timm/mobileone_s0.apple_in1k@v1.0/sub/pytorch_model.bin")
    assert (hub.repo, hub.revision, hub.file) == (TIMM, "v1.0", "sub/pytorch_model.bin")
    assert parse_remote("hf-hub:timm/mobileone_s0.apple_in1k").file is None
    assert parse_remote("https://example.com/x.pth").url == "https://example.com/x.pth"
    assert parse_remote("runs/epoch_3.pth") is None and parse_remote("c:/x.pth") is None
    for bad in ("apple:s9", "hf-hub:timm", "hf-hub:timm/x/../y", "https:x"):
        with pytest.raises(ValueError):
            parse_remote(bad)


def test_unknown_name_is_one_error_naming_the_known_ones(net, tmp_path):
    res = invoke("convert", "apple:s9", tmp_path / "out.pth")
    _refused(res, "apple:s9", "apple:s0")
    assert net.log == []


def test_url_rule_refuses_plain_http_and_downgrades():
    assert check_url("https://a.example/x") and check_url("http://127.0.0.1:8/x")
    assert check_url("http://localhost/x") and check_url("http://[::1]/x")
    for url in ("http://example.com/x", "ftp://example.com/x", "file:///etc/passwd"):
        with pytest.raises(BadInput):
            check_url(url)
    with pytest.raises(BadInput, match="redirected from https://a.example"):
        check_url("http://b.example/x", came_from="https://a.example/x")
    with pytest.raises(BadInput, match="password") as caught:
        check_url("https://me:secret@a.example/x?token=abc")
    assert "secret" not in caught.value.message and "abc" not in caught.value.message
    with pytest.raises(BadInput, match="port"):
        check_url("https://a.example:http/x")


def test_sha256_pins_a_local_file_too(files, tmp_path):
    src = tmp_path / "s0.pth"
    src.write_bytes(files["apple"])
    res = invoke("inspect", src, "--no-health", "--sha256", "0" * 64)
    _refused(res, "s0.pth", "--sha256 pins 0000")
    res = invoke("inspect", src, "--no-health", "--sha256", _sha(files["apple"]))
    assert res.exit_code == 0, res.output


def test_unusable_cache_folder_is_bad_input(net, files, tmp_path):
    net.files[S0] = files["apple"]
    (tmp_path / "a_file").write_text("x")
    res = invoke("fetch", "apple:s0", "--cache-dir", tmp_path / "a_file" / "cache")
    _refused(res, "cannot use the cache")


# --------------------------------------------------------------------------- end to end

def test_convert_apple_name_end_to_end(net, files, tmp_path):
    """`mobileone convert apple:s0 s0.safetensors`: downloaded from Apple's path, recorded in
    the cache with its sha256, fused; the output computes the train model's function (float64
    train model in eval mode as the reference).  The second run reads only the cache."""
    net.files[S0] = files["apple"]
    dst = tmp_path / "s0.safetensors"
    res = invoke("convert", "apple:s0", dst, *SMALL)
    assert res.exit_code == 0, res.output
    assert deploy_matches_train(files["sd"], dst) < 1e-6
    cached = tmp_path / "cache" / "apple" / "mobileone_s0_unfused.pth.tar"
    record = json.loads((tmp_path / "cache/apple/mobileone_s0_unfused.pth.tar.json").read_text())
    assert cached.read_bytes() == files["apple"] and record["sha256"] == _sha(files["apple"])
    assert record["url"] == net.url + S0 and record["name"] == "apple:s0"
    assert "downloaded apple:s0" in res.stderr
    assert _cache_files(tmp_path) == ["apple/mobileone_s0_unfused.pth.tar",
                                      "apple/mobileone_s0_unfused.pth.tar.json"]
    requests = len(net.log)
    res = invoke("convert", "apple:s0", tmp_path / "again.pth", "--offline", *SMALL)
    assert res.exit_code == 0, res.output
    assert len(net.log) == requests and "downloaded" not in res.stderr
    import mobileone_cli as mo

    assert mo.local_path("apple:s0", mo.FetchSettings(offline=True)) == str(cached)
    assert mo.inspect_file("apple:s0", health=False)["file"] == str(cached)
    assert len(net.log) == requests


def test_verify_two_names_fused_against_unfused(net, files):
    net.files[S0] = files["apple"]
    net.files[S0_FUSED] = files["apple_fused"]
    res = invoke("verify", "apple:s0", "apple:s0-fused", *SMALL)
    assert res.exit_code == 0, res.output
    assert "PASS" in res.stdout


def test_fetch_json_then_cached_then_listed(net, files, tmp_path):
    net.files[S0_FUSED] = files["apple_fused"]
    res = invoke("fetch", "apple:s0-fused", "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)["files"][0]
    assert got["status"] == "downloaded" and got["sha256"] == _sha(files["apple_fused"])
    assert (got["layout"], got["form"], got["variant"]) == ("apple", "deploy", "s0")
    res = invoke("fetch", "apple:s0-fused", "--json")
    assert json.loads(res.stdout)["files"][0]["status"] == "cached"
    listed = json.loads(invoke("fetch", "--list", "--json").stdout)["names"]
    cached = {n["name"]: n["cached"] for n in listed}
    assert cached["apple:s0-fused"] == got["path"] and cached["apple:s0"] is None
    assert {n["name"] for n in listed} >= {"apple:s4", "mmpretrain:s3", "timm:s2"}


def test_inspect_and_stats_take_names(net, files):
    net.files[S0] = files["apple"]
    res = invoke("inspect", "apple:s0", "--json", "--no-health")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["layout"] == "apple"
    res = invoke("stats", "apple:s0", "--json")
    assert res.exit_code == 0, res.output


# --------------------------------------------------------------------------- integrity

def test_mmpretrain_prefix_mismatch_refused_nothing_cached(net, files, tmp_path):
    """The served file is not OpenMMLab's: its sha256 does not start with 0bc94952."""
    net.files[MM_S0] = files["mmpretrain"]
    res = invoke("convert", "mmpretrain:s0", tmp_path / "out.pth")
    _refused(res, "mmpretrain:s0", "0bc94952", "nothing was cached")
    assert _cache_files(tmp_path) == [] and not (tmp_path / "out.pth").exists()


def test_mmpretrain_prefix_match_converts(net, files, tmp_path, monkeypatch):
    """With the table's prefix set to the fixture's (the real file cannot be served), the
    download passes the check and converts."""
    from dataclasses import replace

    data = files["mmpretrain"]
    known = replace(sources.KNOWN["mmpretrain:s0"], sha256_prefix=_sha(data)[:8])
    monkeypatch.setitem(sources.KNOWN, "mmpretrain:s0", known)
    net.files[MM_S0] = data
    dst = tmp_path / "out.pth"
    res = invoke("convert", "mmpretrain:s0", dst, *SMALL)
    assert res.exit_code == 0, res.output
    out = torch.load(dst, weights_only=True)
    assert out["meta"]["epoch"] == 300
    assert deploy_matches_train(remap(files["sd"], TINY, "apple", "mmpretrain", "train"),
                                out["state_dict"], layout="mmpretrain") < 1e-6


def test_sha256_pin(net, files, tmp_path):
    net.files[S0] = files["apple"]
    wrong = "ab" * 32
    res = invoke("fetch", "apple:s0", "--sha256", wrong)
    _refused(res, "--sha256 pins abababab", "nothing was cached")
    assert _cache_files(tmp_path) == []
    res = invoke("fetch", "apple:s0", "--sha256", _sha(files["apple"]).upper())
    assert res.exit_code == 0, res.output
    res = invoke("convert", "apple:s0", tmp_path / "o.pth", "--sha256", wrong)
    _refused(res, "the cached file", "--sha256 pins")
    res = invoke("fetch", "apple:s0", "--sha256", "abc")
    _refused(res, "64 hex digits")


def test_changed_cache_file_is_refused_until_fetched_again(net, files, tmp_path):
    net.files[S0] = files["apple"]
    assert invoke("fetch", "apple:s0").exit_code == 0
    cached = tmp_path / "cache" / "apple" / "mobileone_s0_unfused.pth.tar"
    data = bytearray(cached.read_bytes())
    data[-100] ^= 1
    cached.write_bytes(bytes(data))
    res = invoke("convert", "apple:s0", tmp_path / "out.pth")
    _refused(res, "changed since it was downloaded")
    assert "mobileone fetch --force apple:s0" in res.stderr
    res = invoke("fetch", "--force", "apple:s0")
    assert res.exit_code == 0, res.output
    assert cached.read_bytes() == files["apple"]


def test_downloaded_file_is_still_loaded_weights_only(net, tmp_path):
    """A download goes through the loader of local files: a pickle that would run code is
    refused and never runs."""

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'PWNED'}",)

    net.files[APPLE + "mobileone_s2_unfused.pth.tar"] = _torch_bytes({"x": Payload()})
    res = invoke("convert", "apple:s2", tmp_path / "out.pth")
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "out.pth").exists()


# --------------------------------------------------------------------------- transfers

def test_resume_after_a_dropped_connection(net, files, tmp_path):
    """The first GET breaks off midway; the same command resumes with a Range request
    conditional on the ETag, and the bytes are whole."""
    data = files["apple"]
    net.files[S0] = data
    net.drops[S0] = [len(data) // 3]
    res = invoke("fetch", "apple:s0", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["files"][0]["status"] == "resumed"
    assert net.gets(S0) == [(None, None), (f"bytes={len(data) // 3}-", f'"{_sha(data)}"')]
    assert (tmp_path / "cache/apple/mobileone_s0_unfused.pth.tar").read_bytes() == data


def test_resume_in_a_later_command(net, files, tmp_path):
    """Every try of one command breaks off: the partial file stays in the cache (never under
    the final name) and the next command goes on from where it stopped."""
    data = files["apple"]
    net.files[S0] = data
    step = len(data) // 8
    net.drops[S0] = [step, step, step]
    res = invoke("convert", "apple:s0", tmp_path / "out.pth")
    _refused(res, "download failed after 3 tries", "run the command again to resume")
    assert _cache_files(tmp_path) == ["apple/mobileone_s0_unfused.pth.tar.part",
                                      "apple/mobileone_s0_unfused.pth.tar.part.json"]
    assert os.path.getsize(tmp_path / "cache/apple/mobileone_s0_unfused.pth.tar.part") == 3 * step
    res = invoke("convert", "apple:s0", tmp_path / "out.pth", *SMALL)
    assert res.exit_code == 0, res.output
    assert net.gets(S0)[-1][0] == f"bytes={3 * step}-"
    assert _cache_files(tmp_path) == ["apple/mobileone_s0_unfused.pth.tar",
                                      "apple/mobileone_s0_unfused.pth.tar.json"]
    assert deploy_matches_train(files["sd"], tmp_path / "out.pth") < 1e-6


def test_changed_server_file_is_downloaded_whole_not_spliced(net, files, tmp_path):
    data = files["apple"]
    net.files[S0] = data
    net.drops[S0] = [100, 100, 100]
    assert invoke("fetch", "apple:s0").exit_code == 2
    net.files[S0] = files["apple_fused"]  # the server's file changed: its ETag too
    res = invoke("fetch", "apple:s0", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["files"][0]["sha256"] == _sha(files["apple_fused"])


def test_offline_uses_only_the_cache(net, files, tmp_path):
    net.files[S0] = files["apple"]
    res = invoke("convert", "apple:s0", tmp_path / "out.pth", "--offline")
    _refused(res, "apple:s0 is not in the cache", "--offline")
    assert net.log == [] and _cache_files(tmp_path) == []


def test_offline_from_the_environment(net, files, tmp_path, monkeypatch):
    net.files[S0] = files["apple"]
    monkeypatch.setenv("MOBILEONE_OFFLINE", "1")
    _refused(invoke("fetch", "apple:s0"), "not in the cache")
    assert net.log == []


def test_redirects_followed_and_bounded(net, files, tmp_path):
    net.files["/mirror/s0.pth"] = files["apple"]
    net.redirects[S0] = net.url + "/hop"
    net.redirects["/hop"] = "/mirror/s0.pth"
    res = invoke("fetch", "apple:s0", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["files"][0]["sha256"] == _sha(files["apple"])
    record = json.loads((tmp_path / "cache/apple/mobileone_s0_unfused.pth.tar.json").read_text())
    assert record["final_url"] == net.url + "/mirror/s0.pth"
    net.redirects[APPLE + "mobileone_s1_unfused.pth.tar"] = "/loop"
    net.redirects["/loop"] = APPLE + "mobileone_s1_unfused.pth.tar"
    _refused(invoke("fetch", "apple:s1"), "redirect")
    net.redirects[APPLE + "mobileone_s2_unfused.pth.tar"] = "http://example.com/s2.pth"
    _refused(invoke("fetch", "apple:s2"), "plain http is refused", "redirected from")
    assert _cache_files(tmp_path) == ["apple/mobileone_s0_unfused.pth.tar",
                                      "apple/mobileone_s0_unfused.pth.tar.json"]


def test_server_that_never_answers_times_out(net, tmp_path, monkeypatch):
    net.hang.add(S0)
    monkeypatch.setenv("MOBILEONE_TIMEOUT", "0.3")
    start = time.monotonic()
    res = invoke("convert", "apple:s0", tmp_path / "out.pth")
    _refused(res, "no answer within 0.3 s", "nothing was cached")
    assert time.monotonic() - start < 10
    assert _cache_files(tmp_path) == []


@pytest.mark.parametrize("announced", [True, False])
def test_response_larger_than_the_bound(net, files, tmp_path, monkeypatch, announced):
    net.files[S0] = files["apple"]
    if not announced:
        net.no_length.add(S0)
    monkeypatch.setattr(limits, "MAX_DOWNLOAD", 4096)
    res = invoke("convert", "apple:s0", tmp_path / "out.pth")
    _refused(res, "more than a checkpoint may have (4,096)", "nothing was cached")
    assert _cache_files(tmp_path) == []


def test_plain_url(net, files, tmp_path):
    net.files["/any/where/epoch_3.pth"] = files["apple"]
    url = net.url + "/any/where/epoch_3.pth"
    res = invoke("convert", url, tmp_path / "out.pth", *SMALL)
    assert res.exit_code == 0, res.output
    assert deploy_matches_train(files["sd"], tmp_path / "out.pth") < 1e-6
    assert [p for p in _cache_files(tmp_path) if p.endswith("epoch_3.pth")]
    _refused(invoke("fetch", net.url + "/missing.pth"), "HTTP 404")


# --------------------------------------------------------------------------- the Hub

@pytest.fixture
def hub(net):
    """The server as the Hub; these tests need huggingface_hub (the `hub` extra)."""
    pytest.importorskip("huggingface_hub")
    return net


def test_hub_repo_with_two_files(hub, files, tmp_path):
    """hf-hub:REPO takes model.safetensors when the repo also holds pytorch_model.bin; a file
    name picks the other; timm:s0 is the same repo; all through huggingface_hub."""
    hub.hub_file(TIMM, "model.safetensors", files["timm_st"])
    hub.hub_file(TIMM, "pytorch_model.bin", files["timm_bin"])
    timm_sd = remap(files["sd"], TINY, "apple", "timm", "train")
    res = invoke("fetch", f"hf-hub:{TIMM}", f"hf-hub:{TIMM}/pytorch_model.bin", "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)["files"]
    assert [g["sha256"] for g in got] == [_sha(files["timm_st"]), _sha(files["timm_bin"])]
    assert got[0]["url"] == f"hf-hub:{TIMM}@{COMMIT}/model.safetensors"
    dst = tmp_path / "out.safetensors"
    res = invoke("convert", "timm:s0", dst, "--offline", *SMALL)
    assert res.exit_code == 0, res.output
    assert deploy_matches_train(timm_sd, dst, layout="timm") < 1e-6
    res = invoke("fetch", f"hf-hub:{TIMM}/pytorch_model.bin", "--json")
    assert json.loads(res.stdout)["files"][0]["status"] == "cached"


def test_hub_falls_back_to_the_bin_file(hub, files, tmp_path):
    hub.hub_file("me/other", "pytorch_model.bin", files["timm_bin"])
    res = invoke("convert", "hf-hub:me/other", tmp_path / "out.pth", *SMALL)
    assert res.exit_code == 0, res.output
    _refused(invoke("fetch", "hf-hub:me/nothing"), "no model.safetensors or pytorch_model.bin")
    hub.hub_file("me/other", "sub/w.bin", files["timm_bin"], revision="v1")
    res = invoke("fetch", "hf-hub:me/other@v1/sub/w.bin", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["files"][0]["url"] == f"hf-hub:me/other@{COMMIT}/sub/w.bin"
    assert (tmp_path / "cache/hf-hub-records/me/other" / COMMIT / "sub/w.bin.json").is_file()


def test_hub_sha256_mismatch_refused_nothing_cached(hub, files, tmp_path):
    path = hub.hub_file(TIMM, "model.safetensors", files["timm_st"])
    hub.etags[path] = "cd" * 32  # the Hub's ETag of a large file is its sha256
    _refused(invoke("fetch", "timm:s0"), "the Hub says cdcdcdcd", "nothing was cached")
    blobs = [p for p in _cache_files(tmp_path) if "/blobs/" in p or "/snapshots/" in p]
    assert blobs == []


def test_hub_offline_not_cached(hub, files):
    hub.hub_file(TIMM, "model.safetensors", files["timm_st"])
    _refused(invoke("fetch", "timm:s0", "--offline"), "timm:s0", "in the cache")
    assert hub.log == []


def test_hub_file_larger_than_the_bound(hub, files, tmp_path, monkeypatch):
    hub.hub_file(TIMM, "model.safetensors", files["timm_st"])
    monkeypatch.setattr(limits, "MAX_DOWNLOAD", 4096)
    _refused(invoke("fetch", "timm:s0"), "more than a checkpoint may have", "nothing was cached")
    assert [m for m, *_ in hub.log] == ["HEAD"]
    assert not [p for p in _cache_files(tmp_path) if "/blobs/" in p]


def test_hub_changed_cache_file_refused(hub, files, tmp_path):
    hub.hub_file(TIMM, "model.safetensors", files["timm_st"])
    res = invoke("fetch", "timm:s0", "--json")
    assert res.exit_code == 0, res.output
    blob = os.path.realpath(json.loads(res.stdout)["files"][0]["path"])
    data = bytearray(open(blob, "rb").read())
    data[-1] ^= 1
    with open(blob, "wb") as fh:
        fh.write(bytes(data))
    _refused(invoke("convert", "timm:s0", tmp_path / "out.pth", "--offline"),
             "changed since it was downloaded")


def test_cache_folder_rule(monkeypatch, tmp_path):
    from mobileone_cli.io.cache import cache_root

    for name in ("MOBILEONE_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == str(tmp_path / ".cache" / "mobileone")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_root() == str(tmp_path / ".cache" / "mobileone")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == str(tmp_path / "xdg" / "mobileone")
    monkeypatch.setenv("MOBILEONE_CACHE", str(tmp_path / "mine"))
    assert cache_root() == str(tmp_path / "mine")
    assert cache_root(str(tmp_path / "flag")) == str(tmp_path / "flag")
