"""``--plot FILE.svg|FILE.png`` (verify, stats, quant): the terminal picture as an SVG file, or as
a PNG drawn by Pillow (the ``images`` extra), written like every output (atomically; an existing
file only with ``--force``)."""
from __future__ import annotations

from typing import Optional

import click

from ..errors import BadInput

__all__ = ["plot_option", "plot_force_option", "check_plot", "write_plot"]


def plot_option(what: str):
    return click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
                        metavar="FILE.svg|png",
                        help=f"Also draw {what} into FILE.svg (a plain SVG picture) or FILE.png "
                             "(needs Pillow: the images extra).")


def plot_force_option():
    return click.option("--force", is_flag=True, help="Overwrite the --plot file if it exists.")


def check_plot(path: Optional[str], force: bool) -> None:
    """Refuse, before any work, a --plot file that cannot or must not be written."""
    from ..io.write import check_destination

    if path is None:
        return
    from ..render import raster

    if not path.lower().endswith((".svg", ".png")):
        raise BadInput(f"--plot {path}: the picture is written as SVG or PNG; name the file "
                       ".svg or .png")
    if path.lower().endswith(".png") and not raster.available():
        raise BadInput(f"--plot {path}: a PNG is drawn with Pillow (>= 10.1, with FreeType), "
                       "which is not installed", hint=f"{raster.INSTALL_HINT}; or name the "
                                                      "file .svg (needs nothing)")
    check_destination(path, force=force)


def write_plot(path: Optional[str], svg: str, force: bool, as_json: bool) -> None:
    from ..io.write import atomic_write
    from ..render.console import console, line, quiet

    if path is None:
        return
    if path.lower().endswith(".png"):
        from ..render.raster import svg_to_png

        data = svg_to_png(svg)
    else:
        data = svg.encode("utf-8")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write(path, write, force=force)
    if not as_json and not quiet():
        line(console(), "plot:", f"wrote {path}")
