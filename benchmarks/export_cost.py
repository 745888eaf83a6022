"""Export cost and numeric levels per target: wall time, peak RSS, artifact size, and what the
runtime check measured (max rel diff, its bound, the network's rounding sensitivity).

    python benchmarks/export_cost.py [--arch s0 s4] [--targets .onnx .pte .tflite .mlpackage]
        [--dtypes fp32 fp16] [--stats calibrated random] [--input-size 224] [--json OUT]

Every case is a fresh Python process (os.wait4 gives its own peak RSS): it imports the target's
toolchain (timed apart: `import coremltools` alone is seconds), then runs
``mobileone_cli.export.export_file`` on a synthetic train checkpoint written beforehand (load,
fusion, fusion verdict, export, runtime check, atomic write).  The floor is ``torch.export.export``
of the deploy model alone, in its own process, as every exporter here starts with it.
A missing runtime is reported as skipped.  Nothing here is asserted in the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CHILD = r"""
import json, os, sys, time
job = json.loads(sys.argv[1])
from mobileone_cli.runtimes import runtime_module, target_for
t0 = time.perf_counter()
if job["target"] == "floor":
    import torch
    from mobileone_cli.spec.arch import get_arch
    from mobileone_cli.models.synthetic import random_state_dict
    from mobileone_cli.check.harness import load_model
    arch = get_arch(job["arch"])
    model = load_model(random_state_dict(arch, form="deploy", seed=1), arch, "deploy",
                       dtype=torch.float32)
    x = torch.zeros(1, 3, *job["size"])
    t1 = time.perf_counter()
    with torch.no_grad():
        torch.export.export(model, (x,))
    print(json.dumps({"import_s": t1 - t0, "export_s": time.perf_counter() - t1}))
    sys.exit(0)
mod = runtime_module(target_for(job["dst"]).module)
try:
    mod.require()
except Exception as exc:
    print(json.dumps({"skipped": str(exc)}))
    sys.exit(0)
t1 = time.perf_counter()
from mobileone_cli.export import export_file
r = export_file(job["src"], job["dst"], input_size=tuple(job["size"]), dtype=job["dtype"],
                force=True)
checks = [{"max_rel": c.metrics.max_rel, "bound": c.tolerance,
           "sensitivity": c.sensitivity.max_rel if c.sensitivity else None,
           "vs_fp32": c.metrics_fp32.max_rel if c.metrics_fp32 else None} for c in r.checks]
print(json.dumps({"import_s": t1 - t0, "export_s": time.perf_counter() - t1,
                  "size": r.size_out, "executed": r.executed, "checks": checks,
                  "weights_passed": r.weights.passed if r.weights else None}))
"""


def run_child(job: Dict[str, Any]) -> Dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(job)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = (err.strip().splitlines() or ["(no output)"])[-1]
        return {"error": tail, "wall_s": wall}
    res = json.loads(out.strip().splitlines()[-1])
    res.update(wall_s=wall, peak_rss_mb=usage.ru_maxrss / 1024)
    return res


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["s0", "s4"])
    ap.add_argument("--targets", nargs="+", default=[".onnx", ".pte", ".tflite", ".mlpackage"])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "fp16"])
    ap.add_argument("--stats", nargs="+", default=["calibrated"])
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--json", default=None, help="write every row here")
    args = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    from mobileone_cli.io.write import save_checkpoint
    from mobileone_cli.models.synthetic import random_state_dict
    from mobileone_cli.spec.arch import get_arch

    size = [args.input_size, args.input_size]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            floor = run_child({"target": "floor", "arch": arch, "size": size})
            rows.append({"arch": arch, "target": "torch.export (floor)", **floor})
            print(f"{arch} torch.export floor: {floor.get('export_s', 0):.2f} s "
                  f"(+{floor.get('import_s', 0):.1f} s imports), peak RSS "
                  f"{floor.get('peak_rss_mb', 0):.0f} MB", flush=True)
            for stats in args.stats:
                src = os.path.join(tmp, f"{arch}_{stats}.pth")
                save_checkpoint(src, random_state_dict(get_arch(arch), seed=1, stats=stats),
                                force=True)
                for target in args.targets:
                    for dtype in args.dtypes:
                        dst = os.path.join(tmp, f"out_{arch}_{stats}_{dtype}{target}")
                        r = run_child({"target": target, "src": src, "dst": dst,
                                       "dtype": dtype, "size": size})
                        rows.append({"arch": arch, "stats": stats, "target": target,
                                     "dtype": dtype, **r})
                        print(_line(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


def _line(r: Dict[str, Any]) -> str:
    head = f"{r['arch']} {r['stats']:<10} {r['target']:<10} {r['dtype']}: "
    if "skipped" in r or "error" in r:
        return head + ("skipped: " + r["skipped"] if "skipped" in r else "ERROR " + r["error"])
    text = (f"export {r['export_s']:.1f} s (+{r['import_s']:.1f} s imports), "
            f"peak RSS {r['peak_rss_mb']:.0f} MB, {r['size'] / 1e6:.1f} MB")
    for c in r["checks"]:
        text += f"; diff {c['max_rel']:.2e} <= {c['bound']:.2e}"
        if c["sensitivity"] is not None:
            text += f" (sens {c['sensitivity']:.1e})"
    if not r["executed"]:
        text += f"; not executed, weights {'ok' if r['weights_passed'] else 'FAIL'}"
    return head + text


if __name__ == "__main__":
    sys.exit(main())
