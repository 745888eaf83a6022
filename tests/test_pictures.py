"""Pictures: the terminal bars and the SVG files of ``--plot`` show the report's own numbers.

The SVG is parsed with xml.etree; a log axis is read back from its decade ticks (position and
label), so a bar's right end and a bound's line give back a number that must match ``--json``.
Linear bars must stand in the ratio of the values they draw.
"""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import pytest

from mobileone_cli.render import pictures

NS = {"s": "http://www.w3.org/2000/svg"}


class FakeConsole:
    width = 80
    encoding = "utf-8"


def _bar_cells(text: str) -> float:
    """Length of a bar drawn with eighth blocks, in character cells."""
    return sum(pictures.EIGHTHS.index(c) / 8 for c in text if c in pictures.EIGHTHS[1:])


def test_log_axis_and_terminal_profile_geometry():
    from mobileone_cli.jobs.verify import ProfileRow

    rows = [ProfileRow("stem", "stage0", 1e-7, 1e-4, True),
            ProfileRow("stage1", "stage1.0", 1e-5, 1e-4, True),
            ProfileRow("stage2", "stage2.3", 1e-3, 1e-4, False),
            ProfileRow("head", "linear", 0.0, 1e-4, True)]
    span = pictures.log_span([r.rel for r in rows] + [r.bound_rel for r in rows])
    assert span == (-7, -3)
    lines = [t.plain for t in pictures.error_profile(FakeConsole(), rows)]
    assert all(len(ln) <= 80 for ln in lines)
    bars = lines[1:]
    start = len("stage1") + 1
    cells = len(bars[0]) - start - len(" 1.00e-07 stage1.0 ok")
    for r, ln in zip(rows, bars):
        body = ln[start:start + cells]
        want = 0 if r.rel == 0 else (math.log10(r.rel) + 7) / 4 * cells
        assert abs(_bar_cells(body) - want) <= 1, (r, ln)  # the mark may hide one cell
        assert body.index(pictures.MARK) == round((math.log10(1e-4) + 7) / 4 * cells)
        assert ln.endswith("BAD" if not r.within else "ok")


def test_stage_bars_solid_is_deploy_and_light_is_what_fusion_removes():
    lines = pictures.stage_bars(FakeConsole(), ["a", "b"],
                                [("params", [100, 40], [25, 40]), ("MACs", [10, 5], [1, 5])])
    a = lines[1].plain
    cells = (80 - 2 - 2) // 2
    left = a[2:2 + cells]
    assert abs(_bar_cells(left) - 25 / 100 * cells) <= 1 / 8  # deploy, solid
    solid = sum(c in pictures.EIGHTHS[1:] for c in left)
    assert left.count(pictures.LIGHT) == cells - solid  # up to train (the panel's largest)
    b = lines[2].plain[2:2 + cells]
    assert pictures.LIGHT not in b and abs(_bar_cells(b) - 40 / 100 * cells) <= 1 / 8


# ---------------------------------------------------------------- SVG files


def _axis(root):
    """x of decade d on the log axis: read from the tick lines and their labels."""
    xs = [float(e.get("x1")) for e in root.iterfind(".//s:line[@class='tick']", NS)]
    labels = [int(e.text.replace("1e", "")) for e in root.iterfind(".//s:text[@class='tick']",
                                                                   NS)]
    assert len(xs) == len(labels) >= 3
    step = (xs[-1] - xs[0]) / (labels[-1] - labels[0])
    for x, d in zip(xs, labels):  # evenly spaced decades (x written to 3 decimals: +-5e-4 each)
        assert abs(x - (xs[0] + (d - labels[0]) * step)) < 1.5e-3
    return lambda x: labels[0] + (x - xs[0]) / step, xs[0]


def _svg(path):
    tree = ET.parse(path)  # well-formed XML, or this raises
    root = tree.getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(train, its deploy file, another network's deploy file), written once: tests only read
    them."""
    import torch

    from mobileone_cli.io.write import save_checkpoint
    from mobileone_cli.jobs.convert import convert_file

    from .conftest import state_dict_of

    folder = tmp_path_factory.mktemp("pair")
    train, good, other = (str(folder / n) for n in ("s0_apple_train.pth", "good.pth",
                                                    "other.pth"))
    save_checkpoint(train, state_dict_of("s0", "train", "apple", 0, torch.float32, None))
    convert_file(train, good, input_size=(32, 32))
    save_checkpoint(other, state_dict_of("s0", "deploy", "apple", 7, torch.float32, None))
    return train, good, other


@pytest.mark.parametrize("which, code", [("good", 0), ("other", 1)])
def test_verify_plot_bars_are_the_reported_errors(pair, run_cli, tmp_path, which, code):
    train, good, other = pair
    svg = str(tmp_path / "profile.svg")
    res = run_cli("verify", train, good if which == "good" else other, "--input-size", "32",
                  "--batch", "1", "--plot", svg, "--json")
    assert res.exit_code == code, res.output
    report = json.loads(res.stdout)
    root = _svg(svg)
    decade, x0 = _axis(root)
    lo = decade(x0)
    bars = {e.get("data-name"): e for e in root.iterfind(".//s:rect[@class='bar']", NS)}
    bounds = {e.get("data-name"): float(e.get("x1"))
              for e in root.iterfind(".//s:line[@class='bound']", NS)}
    assert [r["name"] for r in report["profile"]] == list(bars)
    assert report["profile"][-1]["name"] == "output"
    for row in report["profile"]:
        bar = bars[row["name"]]
        end = float(bar.get("x")) + float(bar.get("width"))
        if row["rel"] and math.log10(row["rel"]) > lo:
            assert abs(decade(end) - math.log10(row["rel"])) < 1e-3, row
        assert abs(decade(bounds[row["name"]]) - math.log10(row["bound_rel"])) < 1e-3, row
        assert bar.get("fill") == ("#2e8b57" if row["within"] else "#c0392b")
    # the rows are the report's verdict: a failing pair shows a bar beyond its bound
    beyond = [r["name"] for r in report["profile"] if r["rel"] > r["bound_rel"]]
    assert bool(beyond) == (code == 1)
    assert all(not r["within"] for r in report["profile"] if r["name"] in beyond)


def test_stats_plot_bars_stand_in_the_ratio_of_the_counts(run_cli, tmp_path):
    """Params and MACs bars (the latency bars of --bench: test_stats.py's bench test, whose
    run draws them)."""
    svg = str(tmp_path / "stats.svg")
    res = run_cli("stats", "--arch", "s1", "--plot", svg, "--json", "--input-size", "32")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    root = _svg(svg)

    def widths(cls):
        return [(e.get("data-name"), float(e.get("width")))
                for e in root.iterfind(f".//s:rect[@class='{cls}']", NS)]

    train, deploy = widths("train"), widths("deploy")
    parts = list(d["train"]["parts"])
    assert [n for n, _ in train] == parts + parts  # the params panel, then the MACs panel
    values = {"train": [d["train"]["parts"][p]["params"] for p in parts]
              + [d["train"]["parts"][p]["macs"] for p in parts],
              "deploy": [d["deploy"]["parts"][p]["params"] for p in parts]
              + [d["deploy"]["parts"][p]["macs"] for p in parts]}
    n = len(parts)
    for panel in (slice(0, n), slice(n, 2 * n)):
        ref_w = max(w for _, w in train[panel])
        ref_v = max(values["train"][panel])
        for kind, bars in (("train", train), ("deploy", deploy)):
            for (_, w), v in zip(bars[panel], values[kind][panel]):
                assert abs(w / ref_w - v / ref_v) < 1e-6
    assert widths("latency") == []  # no --bench, no latency panel


def latency_bars(svg):
    """(form, width) of the latency bars of a stats --plot --bench picture."""
    return [(e.get("data-name"), float(e.get("width")))
            for e in _svg(svg).iterfind(".//s:rect[@class='latency']", NS)]


def test_plot_files_are_outputs_like_any_other(run_cli, tmp_path, pair):
    svg = tmp_path / "p.svg"
    svg.write_text("keep me")
    res = run_cli("stats", "--arch", "s0", "--plot", str(svg))
    assert res.exit_code == 2 and "already exists" in res.stderr and "--force" in res.stderr
    assert svg.read_text() == "keep me"
    res = run_cli("stats", "--arch", "s0", "--plot", str(svg), "--force")
    assert res.exit_code == 0 and svg.read_text().startswith("<?xml")
    res = run_cli("stats", "--arch", "s0", "--plot", str(tmp_path / "p.gif"))
    assert res.exit_code == 2 and ".svg or .png" in res.stderr
    res = run_cli("verify", pair[0], "--plot", str(tmp_path / "no" / "p.svg"))
    assert res.exit_code == 2 and "does not exist" in res.stderr  # refused before the work
    assert not list(tmp_path.glob(".mobileone-tmp-*"))


def test_terminal_pictures_are_shown_and_follow_the_numbers(run_cli, pair):
    train, good, _ = pair
    res = run_cli("verify", train, good, "--input-size", "32", "--batch", "1")
    assert "error profile" in res.stdout
    rows = [ln for ln in res.stdout.splitlines()
            if ln.startswith(("stem ", "stage", "head ", "output ")) and pictures.MARK in ln]
    assert [r.split()[0] for r in rows] == ["stem", "stage1", "stage2", "stage3", "stage4",
                                            "head", "output"]
    res = run_cli("stats", "--arch", "s0")
    assert "per part" in res.stdout and pictures.LIGHT in res.stdout
    res = run_cli("-q", "stats", "--arch", "s0")
    assert pictures.LIGHT not in res.stdout and len(res.stdout.splitlines()) == 1
