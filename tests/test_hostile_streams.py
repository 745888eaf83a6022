"""Hostile environments and inputs must never end in exit 3 ('a bug'), and what stdout may be.

What is about the process runs the CLI in its own process, as a user would: a pipe into
``head``, stdout on ``/dev/full`` or closed, ``COLUMNS=²``, ``PYTHONIOENCODING=ascii`` with a
non-ASCII file name, ``--json`` with file names that are not UTF-8.  The pipes' commands are
forks of a warm server (conftest.warm_cli: the command's own process, with the pipe as its
stdout), the environments' fresh interpreters, which read them at start-up.  Hostile files run
in-process (the same error handling decides the exit code): a 91-byte safetensors file with a
dimension of 2^64-1, an ONNX file that computes another shape than the checkpoint.  The
convention for a reader that stops reading: output is dropped quietly and the command ends with
its own status.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
import torch

import mobileone_cli

from .conftest import TINY, invoke
from .hostile import assert_one_error, deploy_matches_train, temp_files

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mobileone_cli.__file__)))


def _env(**more):
    env = dict(os.environ, **more)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    return env


def _cmd(*args):
    return [sys.executable, "-m", "mobileone_cli", *map(str, args)]


def _run(*args, cwd=None, warm=None, **kw):
    """``mobileone ARGS`` in a fresh interpreter, or forked from the ``warm`` server."""
    env = _env(**kw.pop("env", {}))
    kw.setdefault("stdout", subprocess.PIPE)
    argv = [*warm, *map(str, args)] if warm else _cmd(*args)
    return subprocess.run(argv, cwd=cwd, env=env, stderr=subprocess.PIPE, timeout=600, **kw)


@pytest.fixture(scope="module")
def made_once(tmp_path_factory):
    """The files of :func:`files`, made once for the module (the deploy file by the CLI, run
    in-process: making it is not what is tested)."""
    from PIL import Image

    from mobileone_cli.models.synthetic import random_state_dict

    folder = tmp_path_factory.mktemp("streams")
    src = folder / "tiny.pth"
    torch.save(random_state_dict(TINY, seed=1), src)
    made = invoke("convert", src, folder / "deploy.pth", "-q")
    assert made.exit_code == 0, made.output
    g = torch.Generator().manual_seed(0)
    for c in ("a", "b"):
        (folder / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            pixels = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / "imgs" / c / f"{i}.png")
    return folder


@pytest.fixture
def files(tmp_path, made_once):
    """A train checkpoint, its deploy file, and two class folders of images: a fresh copy in
    the test's own folder (tests write outputs next to them)."""
    shutil.copytree(made_once, tmp_path, dirs_exist_ok=True)
    return tmp_path


COMMANDS = {
    "stats": ["stats", "--arch", "s0"],
    "inspect": ["inspect", "{d}/tiny.pth"],
    "convert": ["convert", "{d}/tiny.pth", "{d}/out-{run}.pth"],
    "verify": ["verify", "{d}/tiny.pth", "{d}/deploy.pth"],
    # opset 17 takes the TorchScript exporter: 2 s in a fresh process where the default (dynamo,
    # tests/test_export.py) takes 4; what is tested here is where the report goes
    "export": ["export", "{d}/tiny.pth", "{d}/out-{run}.onnx", "--opset", "17"],
    "eval": ["eval", "{d}/tiny.pth", "{d}/imgs"],
    "quant": ["quant", "{d}/tiny.pth", "--input-size", "64"],  # half the time of 224 px
    # the demo's report goes out through the same emit whichever network it shows: the small
    # synthesized one of a config, not the trained demo's three exports and seven evaluations
    "demo": ["demo", "--dir", "{d}/demo-{run}", "--config", "{examples}/custom_3stage.yaml"],
}
# What each run of a command leaves (each run writes its own: a second run into the first's
# outputs would test the refusal to overwrite, not the pipe).
OUTPUTS = {"convert": "out-{run}.pth", "export": "out-{run}.onnx",
           "demo": "demo-{run}/mobileone_custom_3stage.pth"}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_piped_into_head_ends_quietly(name, files, warm_cli):
    """`mobileone X | head -1` (and a reader that has gone before the first line): the
    command's own status (0 here), no traceback, no 'error:'; its work (an output file) done."""
    if name == "export":
        pytest.importorskip("onnxruntime")

    def cmd(run: int):
        return [*warm_cli, *(a.format(d=files, run=run, examples=os.path.join(ROOT, "examples"))
                             for a in COMMANDS[name])]

    shell = " ".join(map(_quote, cmd(1))) + " | head -1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", shell], env=_env(), cwd=files,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr, proc.stderr
    gone = subprocess.Popen(cmd(2), env=_env(), cwd=files, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    gone.stdout.close()  # the reader is gone before anything is written
    _, err = gone.communicate(timeout=600)
    assert gone.returncode == 0, err
    assert b"Traceback" not in err and b"error" not in err, err
    for run in (1, 2):
        if name in OUTPUTS:
            assert (files / OUTPUTS[name].format(run=run)).is_file(), (name, run)
        if name == "convert":
            assert deploy_matches_train(torch.load(files / "tiny.pth"),
                                        files / f"out-{run}.pth") < 1e-5


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(str(s))


def test_a_failed_verification_keeps_its_status_through_a_pipe(files, warm_cli):
    """verify of a wrong deploy file into `head -1`: exit 1 still (not 0, not a crash)."""
    sd = torch.load(files / "deploy.pth")
    key = next(k for k in sd if k.endswith("weight"))
    sd[key] = sd[key] * 1.5
    torch.save(sd, files / "wrong.pth")
    shell = " ".join(map(_quote, [*warm_cli, "verify", files / "tiny.pth", files / "wrong.pth"]))
    proc = subprocess.run(["bash", "-c", shell + " | head -1; exit ${PIPESTATUS[0]}"],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_stdout_on_a_full_device_is_an_error(files, warm_cli):
    """`> /dev/full`: exit 2, one line that says so and what was written (DST is whole)."""
    with open("/dev/full", "w") as full:
        proc = _run("convert", files / "tiny.pth", files / "out.pth", stdout=full, text=True,
                    warm=warm_cli)
    assert proc.returncode == 2, proc.stderr
    assert_one_error(proc.stderr, "cannot write the output to stdout",
                     "no space left on device", "already written:", "out.pth")
    assert deploy_matches_train(torch.load(files / "tiny.pth"), files / "out.pth") < 1e-5
    with open("/dev/full", "w") as full:
        proc = _run("stats", "--arch", "s0", "--json", stdout=full, text=True, warm=warm_cli)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert_one_error(proc.stderr, "no space left on device", "nothing was written")


def test_a_closed_stdout_is_an_error_and_never_takes_a_file(files):
    """`>&-`: no file the tool opens gets descriptor 1 (the report would land in it); exit 2,
    one line, no traceback after DST was written."""
    proc = subprocess.run(["bash", "-c", " ".join(map(_quote, _cmd(
        "convert", files / "tiny.pth", files / "out.pth"))) + " >&-"], env=_env(),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert_one_error(proc.stderr, "stdout (it is closed)", "already written:")
    assert deploy_matches_train(torch.load(files / "tiny.pth"), files / "out.pth") < 1e-5
    assert temp_files(files) == []


@pytest.mark.parametrize("columns", ["²", "٣", "12a", "-5", ""])
def test_odd_columns_are_ignored(columns):
    proc = _run("stats", "--arch", "s0", env={"COLUMNS": columns, "LINES": columns}, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "params" in proc.stdout and proc.stderr == ""


def test_ascii_output_with_a_non_ascii_file_name(tmp_path, tiny_sd):
    """PYTHONIOENCODING=ascii and a file named é.pth: escaped, exit 0 (not 3)."""
    src = tmp_path / "é.pth"
    torch.save(tiny_sd, src)
    proc = _run("convert", src, tmp_path / "dé.pth", env={"PYTHONIOENCODING": "ascii"},
                text=True)
    assert proc.returncode == 0, proc.stderr
    assert "d\\xe9.pth" in proc.stdout and "Traceback" not in proc.stderr
    bad = _run("inspect", tmp_path / "missing-é.pth", env={"PYTHONIOENCODING": "ascii"},
               text=True)
    assert bad.returncode == 2 and "missing-\\xe9.pth" in bad.stderr, bad.stderr


def _strict_json(text: str):
    """Parse ``text`` as a strict parser would: every string must be valid Unicode."""
    doc = json.loads(text)

    def walk(v):
        if isinstance(v, str):
            v.encode("utf-8")  # a lone surrogate raises
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(k)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    walk(doc)
    return doc


@pytest.mark.slow  # three subprocesses
def test_json_is_valid_for_names_that_are_not_utf8(tmp_path, tiny_sd):
    folder = os.fsencode(str(tmp_path))
    src, dst = folder + b"/\xff.pth", folder + b"/\xfe_deploy.pth"
    torch.save(tiny_sd, src.decode("utf-8", "surrogateescape"))
    for args, code in ((["inspect", src, "--json"], 0),
                       (["convert", src, dst, "--json"], 0),
                       (["inspect", folder + b"/\xfd.pth", "--json"], 2)):
        proc = subprocess.run(_cmd(*[os.fsdecode(a) if isinstance(a, bytes) else a
                                     for a in args]), env=_env(), capture_output=True,
                              timeout=600)
        assert proc.returncode == code, proc.stderr
        doc = _strict_json(proc.stdout.decode("utf-8"))
        assert "\\xf" in json.dumps(doc, ensure_ascii=False)


def test_a_dimension_of_2_to_the_64_is_bad_input(tmp_path):
    """91 bytes: a zero-element tensor whose other dimension is 2^64-1: bad input (exit 2),
    not an internal error."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [0, 2 ** 64 - 1],
                               "data_offsets": [0, 0]}}).encode()
    path = tmp_path / "big.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    assert path.stat().st_size == 91
    for args in (["inspect", path], ["stats", path], ["convert", path, tmp_path / "o.pth"]):
        res = invoke(*args)
        assert res.exit_code == 2, res.output
        assert_one_error(res.stderr, "2^63")
    assert temp_files(tmp_path) == [] and not (tmp_path / "o.pth").exists()


@pytest.mark.slow
def test_an_onnx_file_computing_another_shape_than_it_declares(files):
    """Declared [batch, 10], computed [batch, 7] (a Slice at the end): eval says which file,
    exit 2; verify finds the mismatch, exit 1 (never 3)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import numpy as np
    from onnx import helper, numpy_helper

    made = invoke("export", files / "tiny.pth", files / "t.onnx", "-q")  # in-process: setup
    assert made.exit_code == 0, made.output
    model = onnx.load(files / "t.onnx")
    g = model.graph
    out = g.output[0].name
    for node in g.node:
        for i, o in enumerate(node.output):
            if o == out:
                node.output[i] = "before_slice"
    g.initializer.extend([numpy_helper.from_array(np.array([v], np.int64), n)
                          for n, v in (("s0", 0), ("s1", 7), ("ax", 1))])
    g.node.append(helper.make_node("Slice", ["before_slice", "s0", "s1", "ax"], [out]))
    onnx.save(model, files / "lies.onnx")
    res = invoke("eval", files / "tiny.pth", files / "imgs", "--deploy", files / "lies.onnx")
    assert res.exit_code == 2, res.output
    assert_one_error(res.stderr, "lies.onnx", "[4, 7]", "[4, 10]")
    res = invoke("verify", files / "tiny.pth", files / "lies.onnx")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
