"""Temp files that a killed run left behind (``kill -9`` during a write cannot clean up): found
by name and by their writer's process being gone, and named to the user, never deleted."""
from __future__ import annotations

import os
from typing import List, Optional

__all__ = ["TEMP_PREFIX", "stale_temp_files", "stale_note"]

TEMP_PREFIX = ".mobileone-tmp-"  # + "<pid>-<random>": see io.write.atomic_write


def stale_temp_files(folder: str) -> List[str]:
    """Temp files of this tool in ``folder`` whose process is gone (killed during a write)."""
    out: List[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return out
    for name in names:
        if not name.startswith(TEMP_PREFIX):
            continue
        pid = name[len(TEMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            out.append(os.path.join(folder, name))
    return sorted(out)


def stale_note(dst: str) -> Optional[str]:
    """A note naming the temp files a killed run left beside ``dst``, or None."""
    folder = os.path.dirname(os.path.abspath(dst))
    stale = stale_temp_files(folder)
    if not stale:
        return None
    names = ", ".join(os.path.basename(p) for p in stale[:3])
    more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
    return (f"{len(stale)} temp file(s) in {folder} were left by a run that was killed while "
            f"writing ({names}{more}); they are incomplete and safe to delete")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
