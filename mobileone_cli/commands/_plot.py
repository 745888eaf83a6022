"""``--plot FILE.svg`` (verify, stats): the terminal picture as an SVG file, written like every
output (atomically; an existing file only with ``--force``)."""
from __future__ import annotations

from typing import Optional

import click

from ..errors import BadInput

__all__ = ["plot_option", "plot_force_option", "check_plot", "write_plot"]


def plot_option(what: str):
    return click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
                        metavar="FILE.svg",
                        help=f"Also draw {what} into FILE.svg (a plain SVG picture).")


def plot_force_option():
    return click.option("--force", is_flag=True, help="Overwrite the --plot file if it exists.")


def check_plot(path: Optional[str], force: bool) -> None:
    """Refuse, before any work, a --plot file that cannot or must not be written."""
    from ..io.write import check_destination

    if path is None:
        return
    if not path.lower().endswith(".svg"):
        raise BadInput(f"--plot {path}: the picture is written as SVG; name the file .svg",
                       hint="for a PNG, convert the SVG afterwards (e.g. rsvg-convert -o "
                            "plot.png plot.svg)")
    check_destination(path, force=force)


def write_plot(path: Optional[str], svg: str, force: bool, as_json: bool) -> None:
    from ..io.write import atomic_write
    from ..render.console import console, line, quiet

    if path is None:
        return

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(svg)

    atomic_write(path, write, force=force)
    if not as_json and not quiet():
        line(console(), "plot:", f"wrote {path}")
