"""Bar chart of target/bench/cpu.json: one group per workload, one bar per
impl, median time on a log scale (p10-p90 as error bars).

    plot.py target/bench/cpu.json target/bench/cpu.png [target/bench/missing.json]
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PEERS = ["numpy", "jax-jit", "torch-compile", "torch-eager", "mlx-compile", "mlx-eager"]
# Each peer, then its run with glibc set to reuse freed blocks (+reuse, hatched).
IMPLS = ["kiln", "kiln-eager"] + [p + s for p in PEERS for s in ("", "+reuse")] + ["floor"]
COLORS = {
    "kiln": "#d62728", "kiln-eager": "#ff9896", "numpy": "#7f7f7f", "jax-jit": "#1f77b4",
    "torch-compile": "#ff7f0e", "torch-eager": "#ffbb78", "mlx-compile": "#2ca02c", "mlx-eager": "#98df8a",
    "floor": "#000000",
}
ORDER = ["gelu_tanh", "gelu_erf", "softmax", "layernorm", "adam", "rmsnorm", "logsumexp", "cross_entropy",
         "polynomial", "layernorm_1024x64", "layernorm_1024x256", "layernorm_1024x1024", "layernorm_1024x4096",
         "matmul_add", "forward_and_norm", "mlp", "matmul_gelu", "tiny", "first_call", "shapeless_batches",
         "recompile_batches", "sgemm", "sgemm_bf16", "copy"]


def main():
    recs = json.load(open(sys.argv[1]))
    missing = json.load(open(sys.argv[3])) if len(sys.argv) > 3 else []
    by = {(r["workload"], r["impl"]): r for r in recs}
    workloads = [w for w in ORDER if any(r["workload"] == w for r in recs) and w != "copy"]
    impls = [i for i in IMPLS if any(r["impl"] == i for r in recs)]
    width = 0.85 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(max(10, 1.3 * len(workloads)), 6))
    x = np.arange(len(workloads))
    for j, imp in enumerate(impls):
        med, lo, hi, pos = [], [], [], []
        for i, w in enumerate(workloads):
            r = by.get((w, imp))
            if r and r["median_ms"] > 0:
                pos.append(x[i] - 0.425 + width * (j + 0.5))
                med.append(r["median_ms"])
                lo.append(max(r["median_ms"] - r["p10_ms"], 0))
                hi.append(max(r["p90_ms"] - r["median_ms"], 0))
        if pos:
            ax.bar(pos, med, width, yerr=[lo, hi], label=imp, color=COLORS[imp.removesuffix("+reuse")],
                   hatch="//" if imp.endswith("+reuse") else None, capsize=1.5, error_kw={"elinewidth": 0.6})
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(workloads, rotation=30, ha="right")
    ax.set_ylabel("median time per run (ms, log scale; lower is better)")
    title = "kiln vs peers on CPU (same machine, same run)"
    gone = sorted({m["impl"] for m in missing if m["workload"] == "*"})
    if gone:
        title += "\nmissing: " + ", ".join(gone)
    ax.set_title(title)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
