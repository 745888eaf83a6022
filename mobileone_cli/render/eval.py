"""Output of ``mobileone eval`` (an evaluate.EvalReport): tables, plain data, the progress bar."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, Optional

from .console import console, fmt_rel, line, quiet, render_timings, safe, shorten_path, timings_json
from .verdict import finite_json

__all__ = ["eval_to_dict", "render_eval", "progress_bar"]

SHOWN = 10  # disagreeing / unreadable images shown in the tables (--json lists more)


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _agreement(a) -> Optional[Dict[str, Any]]:
    if a is None:
        return None
    return {"images": a.images, "top1_agreement": a.agreement,
            "disagreeing": a.disagreeing if a.logits else None,
            "max_abs_diff": a.max_abs, "max_rel_diff": a.max_rel, "scale": a.scale,
            "min_cosine": a.min_cosine, "non_finite_images": a.non_finite,
            "disagreements": [{"image": d.name, "label": d.label if d.label >= 0 else None,
                               "reference_top1": d.reference, "top1": d.prediction}
                              for d in a.disagreements]}


def eval_to_dict(r) -> Dict[str, Any]:
    """Plain data for ``--json``; per-class accuracy included; inf/NaN become null."""
    ds = r.dataset
    models = []
    for m in r.models:
        acc = m.accuracy
        models.append({
            "role": m.role, "name": m.name, "model": m.info,
            "top1": acc.top1 if acc else None, "top5": acc.topk if acc else None,
            "topk": acc.k if acc else None,
            "per_class": acc.per_class(ds.class_names) if acc else None,
            "vs_reference": _agreement(m.agreement)})
    return finite_json({
        "arch": r.arch.name, "num_classes": r.arch.num_classes,
        "compared": "logits" if r.logits else "feature map",
        "data": {"root": ds.root, "kind": ds.kind, "labels_file": ds.labels_file,
                 "classes": len(ds.class_names) or None, "images_listed": ds.total,
                 "limit": r.limit, "selected": r.selected, "evaluated": r.images,
                 "unreadable": r.unreadable,
                 "unreadable_files": [{"image": n, "reason": why}
                                      for n, why in r.unreadable_listed]},
        "preprocessing": r.preprocessing.to_dict(),
        "run": {"device": r.device, "batch": r.batch, "workers": r.workers,
                "seconds": r.seconds, "forward_seconds": r.forward_seconds,
                "images_per_second": r.images_per_second},
        "reference": r.models[0].name, "models": models, "notes": list(r.notes),
        **timings_json(r.timings),
    })


def _data_line(r) -> str:
    ds = r.dataset
    what = ds.kind
    if ds.kind == "labels file":
        what += f" {ds.labels_file}"
    if ds.class_names:
        what += f", {len(ds.class_names)} classes"
    some = (f"{r.selected} of {ds.total} images (--limit)" if r.selected < ds.total
            else f"{ds.total} images")
    bad = f", {r.unreadable} unreadable (skipped)" if r.unreadable else ""
    return f"{ds.root} ({what}): {some}{bad}"


def result_line(r) -> str:
    """``-q``: each model's accuracy (when scored) and its agreement with the reference."""
    parts = []
    for m in r.models:
        bits = []
        if m.accuracy is not None:
            bits.append(f"top-1 {_pct(m.accuracy.top1)}, top-{m.accuracy.k} "
                        f"{_pct(m.accuracy.topk)}")
        a = m.agreement
        if a is not None:
            bits.append((f"agrees {_pct(a.agreement)}, " if r.logits else "")
                        + f"rel {fmt_rel(a.max_rel)}")
        parts.append(f"{m.role} {', '.join(bits) or 'reference'}")
    return f"{r.images} images: " + "; ".join(parts)


def render_eval(r) -> None:
    from rich import box
    from rich.table import Table

    out = console()
    if quiet():
        line(out, "", result_line(r), whole=True)
        return
    ref = r.models[0]
    head = Table.grid(padding=(0, 1))
    head.add_column(style="bold")
    head.add_column()
    i = ref.info
    classes = f"{r.arch.num_classes} classes" if r.arch.has_head else "no head"
    head.add_row("eval", safe(f"{ref.name} ({i.get('layout')}, {i.get('form')} form, "
                              f"{r.arch.name}, {classes}, {i.get('dtype')})"))
    head.add_row("data", safe(_data_line(r)))
    head.add_row("pipeline", safe(r.preprocessing.describe()))
    rate = r.images_per_second
    head.add_row("run", f"{r.device}, batch {r.batch}, {r.workers} decoding threads")
    head.add_row("speed", f"{r.images} images x {len(r.models)} models in {r.seconds:.1f} s"
                          + (f": {rate:.1f} images/s" if rate else ""))
    out.print(head)

    scored = ref.accuracy is not None
    k = ref.accuracy.k if scored else 5
    t = Table(header_style="bold", box=box.SIMPLE_HEAD,
              show_edge=False, pad_edge=False)
    for col, just in (("model", "left"), ("top-1", "right"),
                      (f"top-{k}", "right"), ("agree", "right"), ("max |diff|", "right"),
                      ("rel", "right")):
        if col.startswith("top") and not scored or col == "agree" and not r.logits:
            continue
        # ``just`` is one of rich's justify names (its Literal type is lost in the tuple).
        t.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    room = max(24, out.width - 54)  # what the other columns leave to "role name"
    for m in r.models:
        name = ("(fused here)" if m.info.get("path") is None
                else shorten_path(m.name, max(12, room - len(m.role) - 1)))
        row = [f"{m.role} {safe(name)}"]
        if scored:
            row += [_pct(m.accuracy.top1), _pct(m.accuracy.topk)]
        a = m.agreement
        if a is None:
            row += ["reference", "", ""] if r.logits else ["reference", ""]
        else:
            row += ([_pct(a.agreement)] if r.logits else []) + [f"{a.max_abs:.2e}",
                                                                 fmt_rel(a.max_rel)]
        t.add_row(*row)
    out.print(t)
    what = "logit" if r.logits else "feature-map value"
    line(out, "", ("agree: same top-1 as the reference; " if r.logits else "")
         + f"rel: max |diff| over max |reference {what}|")

    for m in r.models[1:]:
        a = m.agreement
        if a is None or not a.disagreeing:
            continue
        out.print(f"{a.disagreeing} image(s) where {safe(m.name)}'s top-1 differs from "
                  f"{safe(ref.name)}'s:")
        d = Table(header_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for col in ("image", "label", "reference", "this model"):
            d.add_column(col, justify="left" if col == "image" else "right")
        for x in a.disagreements[:SHOWN]:
            d.add_row(safe(x.name), str(x.label) if x.label >= 0 else "-", str(x.reference),
                      str(x.prediction))
        out.print(d)
        if a.disagreeing > SHOWN:
            out.print(f"... and {a.disagreeing - SHOWN} more (--json lists "
                      f"{min(a.disagreeing, len(a.disagreements))})")
    if r.unreadable:
        out.print(f"{r.unreadable} unreadable image(s), skipped:")
        for _name, why in r.unreadable_listed[:SHOWN]:
            out.print(f"  {safe(why)}")
        if r.unreadable > SHOWN:
            out.print(f"  ... and {r.unreadable - SHOWN} more (listed in --json)")
    for note in r.notes:
        line(out, "note:", note)
    render_timings(out, r.timings)


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Optional[Callable[[int, int], None]]]:
    """A callback ``(done, total)`` drawing a bar with images/s on stderr, when stderr is a
    terminal (else None: logs stay clean); the tool's one progress display
    (:mod:`.progress`)."""
    from .progress import counter

    with counter("eval", unit="images", enabled=enabled) as update:
        yield update
