"""``--plot FILE.png``: drawn by Pillow from the picture's SVG, no external program."""
import shutil
import xml.etree.ElementTree as ET

import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from mobileone_cli.render.raster import font  # noqa: E402

NS = "{http://www.w3.org/2000/svg}"


def _texts(svg_path):
    root = ET.parse(svg_path).getroot()
    return root, [t for t in root.iter(NS + "text")]


def _check_png_matches_svg(png_path, svg_path):
    root, texts = _texts(svg_path)
    width, height = int(root.get("width")), int(root.get("height"))
    image = Image.open(png_path)
    image.verify()  # a whole, valid PNG
    image = Image.open(png_path).convert("RGB")
    assert image.format is None or image.format == "PNG"
    assert image.size == (width, height)
    colors = {c for _, c in image.getcolors(maxcolors=1 << 20)}
    assert (255, 255, 255) in colors and len(colors) > 10  # drawn on, not blank
    # Every colour the SVG fills a bar with shows up in the PNG.
    fills = {r.get("fill") for r in root.iter(NS + "rect")} - {"white"}
    for fill in fills:
        rgb = tuple(int(fill[i:i + 2], 16) for i in (1, 3, 5))
        assert rgb in colors, fill
    # Text fits its canvas, measured with the font the PNG is drawn with (bold adds a
    # 1 px stroke on each side).
    title = [t for t in texts if t.get("class") == "title"]
    assert title
    for t in texts:
        size = int(t.get("font-size", root.get("font-size", "12")))
        length = font(size).getlength(t.text or "") + (2 if t.get("font-weight") else 0)
        x = float(t.get("x"))
        left = {"start": x, "middle": x - length / 2, "end": x - length}[
            t.get("text-anchor", "start")]
        assert 0 <= left and left + length <= width, (t.text, left, length, width)
    return image


def test_stats_png_is_the_svg_picture_without_external_programs(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no rsvg-convert (nor anything else) on PATH
    assert shutil.which("rsvg-convert") is None
    png, svg = tmp_path / "s.png", tmp_path / "s.svg"
    for path in (png, svg):
        res = run_cli("stats", "--arch", "s0", "--plot", str(path))
        assert res.exit_code == 0, res.output
        assert f"wrote {path}" in " ".join(res.output.split())  # a long path may wrap
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _check_png_matches_svg(png, svg)
    # Byte-stable, and an existing PNG is an output like any other.
    first = png.read_bytes()
    res = run_cli("stats", "--arch", "s0", "--plot", str(png))
    assert res.exit_code == 2 and "--force" in res.stderr
    res = run_cli("stats", "--arch", "s0", "--plot", str(png), "--force")
    assert res.exit_code == 0 and png.read_bytes() == first


def test_verify_png_fits_its_canvas(run_cli, write_ckpt, tmp_path):
    train = write_ckpt("s0")
    other = write_ckpt("s0", form="deploy", seed=7, name="other_deploy_file_with_a_long_name.pth")
    png, svg = tmp_path / "v.png", tmp_path / "v.svg"
    for path in (png, svg):
        res = run_cli("verify", train, other, "--input-size", "32", "--batch", "1",
                      "--plot", str(path))
        assert res.exit_code == 1
    _check_png_matches_svg(png, svg)
    root, texts = _texts(svg)
    title = " ".join(t.text for t in texts if t.get("class") == "title")
    assert "other_deploy_file_with_a_long_name.pth" in title and "train" in title.lower()


def test_png_without_pillow_names_the_extra_and_svg_still_works(run_cli, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL -> ImportError
    monkeypatch.setitem(sys.modules, "PIL.features", None)
    res = run_cli("stats", "--arch", "s0", "--plot", str(tmp_path / "p.png"))
    assert res.exit_code == 2
    assert "Pillow" in res.stderr and "mobileone-cli[images]" in res.stderr
    assert not list(tmp_path.iterdir())
    res = run_cli("stats", "--arch", "s0", "--plot", str(tmp_path / "p.svg"))
    assert res.exit_code == 0 and (tmp_path / "p.svg").read_text().startswith("<?xml")


def test_other_plot_suffixes_are_refused_before_the_work(run_cli, tmp_path):
    res = run_cli("stats", "--arch", "s0", "--plot", str(tmp_path / "p.jpg"))
    assert res.exit_code == 2 and ".svg or .png" in res.stderr
