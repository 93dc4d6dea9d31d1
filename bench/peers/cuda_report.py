"""The GPU report: kiln's rows (`kiln-bench cuda`), the peers' rows
(`cuda_peers.py`) and the first-call times from one run of
`scripts/gpu.sh bench`, as a Markdown table of times, ratios to the
fastest peer and to the copy floor, and issue 16's targets (met or not).
Usage: cuda_report.py DIR (reads DIR/cuda.json, cuda_peers.json,
cuda_first.json; writes DIR/cuda.md, and DIR/cuda.png when matplotlib is
there)."""
import json
import os
import sys

d = sys.argv[1]
load = lambda name, empty: json.load(open(os.path.join(d, name))) if os.path.exists(os.path.join(d, name)) else empty
kiln = {r["row"]: r for r in load("cuda.json", [])}
peers = load("cuda_peers.json", [])
first = load("cuda_first.json", {})
floor = next((r for r in peers if r["peer"] == "copy floor"), None)
MEMORY = ["gelu_tanh", "gelu_erf", "softmax", "layernorm"]
PER_CALL = ["matmul_add per call", "forward_and_norm per call", "tiny x + 1 per call"]
NAMES = ["torch-eager", "torch-compile", "jax-jit"]


def fmt(v):
    if v is None:
        return ""
    return f"{v * 1e6:.1f} us" if v < 1e-3 else f"{v * 1e3:.3f} ms"


def peer(name, row):
    return next((r for r in peers if r["peer"] == name and r["row"] == row), None)


lines = ["| row | kiln | " + " | ".join(NAMES) + " | kiln / fastest | kiln / floor | target | met |",
         "|---" * (6 + len(NAMES)) + "|"]
met_count, total = 0, 0
bars = []
for row, k in kiln.items():
    if row.startswith("x + 1"):
        ratio = floor["pipelined_s"] / k["pipelined_s"] if floor else None
        lines.append(f"| {row} | {fmt(k['pipelined_s'])} | | | | | {ratio:.0%} | | |" if ratio else f"| {row} | {fmt(k['pipelined_s'])} |")
        continue
    modes = ["pipelined_s", "synced_s"] if row in PER_CALL else ["pipelined_s"]
    for mode in modes:
        ps = {n: peer(n, row) for n in NAMES}
        times = {n: p[mode] for n, p in ps.items() if p}
        best = min(times.values()) if times else None
        kt = k[mode]
        vs = kt / best if best else None
        fl = floor["pipelined_s"] / kt if (floor and row in MEMORY) else None
        if row in MEMORY:
            target, ok = "floor >= 90%, <= 1.0x", vs is not None and fl is not None and vs <= 1.0 and fl >= 0.9
        elif row in PER_CALL:
            target, ok = "<= 0.5x", vs is not None and vs <= 0.5
        else:
            target, ok = "<= 1.05x", vs is not None and vs <= 1.05
        total += 1
        met_count += ok
        label = row + (" (synced)" if mode == "synced_s" else (" (pipelined)" if row in PER_CALL else ""))
        cells = " | ".join(fmt(times.get(n)) for n in NAMES)
        lines.append(
            f"| {label} | {fmt(kt)} | {cells} | {f'{vs:.2f}x' if vs else ''} | {f'{fl:.0%}' if fl else ''} | {target} | {'yes' if ok else 'no'} |"
        )
        if vs:
            bars.append((label, vs))
for which in ["gelu", "layernorm"]:
    f = first.get(which, {})
    kc, kd, jc, jd = (f.get(x) for x in ["kiln_cold_ms", "kiln_disk_ms", "jax_cold_ms", "jax_disk_ms"])
    if kc is None:
        continue
    vs = kc / jc if jc else None
    ok = vs is not None and vs <= 0.25
    total += 1
    met_count += ok
    ms = lambda v: f"{v:.1f} ms" if v is not None else ""
    lines.append(f"| first call {which}, empty cache | {ms(kc)} | | | {ms(jc)} | {f'{vs:.2f}x' if vs else ''} | | <= 0.25x | {'yes' if ok else 'no'} |")
    ok = kd is not None and kd <= 10
    total += 1
    met_count += ok
    lines.append(f"| first call {which}, disk cache | {ms(kd)} | | | {ms(jd)} | | | <= 10 ms | {'yes' if ok else 'no'} |")
head = f"Copy floor: {fmt(floor['pipelined_s'])} for 2^28 f32 in and out ({floor['bytes'] / floor['pipelined_s'] / 1e12:.2f} TB/s).\n\n" if floor else ""
md = head + "\n".join(lines) + f"\n\nTargets met: {met_count} of {total}.\n"
open(os.path.join(d, "cuda.md"), "w").write(md)
print(md)
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.4 * len(bars) + 1))
    ax.barh([b[0] for b in bars], [b[1] for b in bars])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("kiln time / fastest peer's time (lower is better)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(os.path.join(d, "cuda.png"), dpi=120)
except Exception as e:  # the table is the report; the picture is a convenience
    print(f"cuda_report: no picture ({e})", file=sys.stderr)
