"""SVG plots fit their canvas (long titles and subtitles wrap, long block names widen it) and a
verify plot names both files."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from mobileone_cli.render.svg import CHAR_W, verify_svg


@dataclass
class Row:
    name: str
    block: str
    rel: float
    bound_rel: Optional[float]
    within: bool


def _fits(svg: str) -> bool:
    width = float(re.search(r"<svg [^>]*width='([\d.]+)'", svg).group(1))
    for x, anchor, size, text in re.findall(
            r"<text [^>]*x='([\d.]+)' [^>]*text-anchor='(\w+)'([^>]*)>([^<]*)</text>", svg):
        w = len(text) * CHAR_W * (14 / 12 if "font-size='14'" in size else 1)
        left = float(x) - (w / 2 if anchor == "middle" else w if anchor == "end" else 0)
        if left < 0 or left + w > width + 1:
            return False
    return True


def test_long_names_and_subtitles_fit():
    rows = [Row("stages.1 (stage2)", "stages.1.5 (stage2.5)", 1.7e-2, 1e-4, False),
            Row("output", "logits", 0.49, 1.2e-4, False)]
    subtitle = "relative RMS int8 noise of each block's median channel, " * 4
    svg = verify_svg(rows, "mobileone quant " + "runs/long_folder_name/" * 3 + "s0.pth: int8",
                     subtitle=subtitle)
    assert _fits(svg)
    assert svg.count('class="subtitle"') >= 2  # wrapped, not cut


def test_verify_plot_names_both_files(tmp_path):
    from types import SimpleNamespace

    from mobileone_cli.render.verify import verify_plot

    report = SimpleNamespace(train={"path": "a/train.pth"}, deploy={"path": "b/deploy.pth"},
                             passed=True, profile=lambda: [Row("stem", "stage0", 1e-7, 1e-4,
                                                               True)])
    svg = verify_plot(report)
    assert "a/train.pth" in svg and "b/deploy.pth" in svg and _fits(svg)
