"""The peers' side of the CPU benchmark: NumPy, JAX, PyTorch and MLX.

Run by scripts/bench.sh as

    peers.py --all --sizes target/bench/sizes.json --out target/bench/peers.json

which runs each framework in its own process (so thread pools do not
compete), runs first calls and the batch workloads (whose times include
compiling) in fresh processes, and writes one part
{"records": [...], "missing": [...], "notes": [...]} for `kiln-bench report`.
A framework that cannot be imported, or a workload that raises, becomes a
"missing" entry with the reason; nothing is dropped silently. bench.sh runs
it a second time with glibc set to reuse freed large blocks, as

    peers.py --all --no-fresh --suffix +reuse ...

whose impls are named torch-eager+reuse and so on (bench/README.md).

Each workload is written the idiomatic way for its library: the library's
own function where it computes exactly the workload's formula (torch's
F.gelu, F.layer_norm, torch.addmm; jax.nn.gelu, jax.nn.softmax;
mx.fast.layer_norm, mlx.nn.gelu, mx.addmm; scipy.special.erf for NumPy),
otherwise the formula written out (Adam and the polynomial are written out
everywhere; F.rms_norm, mx.fast.rms_norm, F.cross_entropy,
nn.losses.cross_entropy, the libraries' logsumexp). Compiled variants: jax.jit with
block_until_ready, torch.compile (default mode) under torch.no_grad,
mx.compile with mx.eval. Inputs are random normal float32 from NumPy.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

FRAMEWORKS = {
    "numpy": ["numpy"],
    "jax": ["jax-jit"],
    "torch": ["torch-compile", "torch-eager"],
    "mlx": ["mlx-compile", "mlx-eager"],
}
C_TANH = 0.7978845608
FRESH = ["first_call", "shapeless_batches", "recompile_batches"]
# The polynomial's coefficients, highest degree first (as kiln-bench's POLY).
POLY = [0.00390625, -0.0078125, 0.015625, -0.03125, 0.0625, -0.125, 0.25, -0.5, 1.0]
# Adam's hyperparameters: lr, beta1, beta2, eps, bias corrections at step 10.
ADAM = [1e-3, 0.9, 0.999, 1e-8, 1 - 0.9**10, 1 - 0.999**10]
LN_ROWS = [64, 256, 1024, 4096]
LN_WORKLOADS = [f"layernorm_1024x{r}" for r in LN_ROWS]
WORKLOADS = ["gelu_tanh", "gelu_erf", "softmax", "layernorm", "matmul_add", "forward_and_norm", "mlp", "tiny",
             "sgemm", "sgemm_bf16", "adam", "rmsnorm", "logsumexp", "cross_entropy", "polynomial", "transpose_add", "softmax_cols", "col_norms",
             "matmul_gelu"] + LN_WORKLOADS


class Plan:
    def __init__(self, quick=False):
        # KILN_BENCH_BUDGET_S: seconds of timed runs per row, as for kiln.
        budget = float(os.environ.get("KILN_BENCH_BUDGET_S", "2.5"))
        self.warm, self.min, self.max, self.budget = (1, 3, 5, 0.05) if quick else (3, 10, 300, budget)


def measure(plan, fn, per=1):
    """Run times of fn() in ms (divided by per), after warm-up, time-boxed."""
    for _ in range(plan.warm):
        fn()
    out = []
    start = time.perf_counter()
    while len(out) < plan.min or (len(out) < plan.max and time.perf_counter() - start < plan.budget):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3 / per)
    return out


def summarize(workload, impl, samples, cost):
    s = np.asarray(samples, dtype=np.float64)
    b, f = cost.get(workload, (0, 0))
    return {
        "workload": workload,
        "impl": impl,
        "median_ms": float(np.percentile(s, 50)),
        "p10_ms": float(np.percentile(s, 10)),
        "p90_ms": float(np.percentile(s, 90)),
        "bytes": int(b),
        "flops": int(f),
    }


class Inputs:
    """The NumPy inputs shared by every framework (random normal, seed 0)."""

    def __init__(self, sz):
        rng = np.random.default_rng(0)
        n = lambda *shape, scale=1.0: (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))
        self.sz = sz
        self.gelu = n(sz["gelu_n"])
        self.mat = n(sz["rows"], sz["cols"])
        self.gamma = 1.0 + n(sz["cols"], scale=0.1)
        self.beta = n(sz["cols"], scale=0.1)
        m, k, nn = sz["mm"]
        self.xs = [n(m, k) for _ in range(sz["calls"])]
        self.w = n(k, nn)
        self.b = n(nn)
        width = sz["mlp_width"]
        self.mlp = [n(sz["mlp_batch"], width)]
        for _ in range(sz["mlp_layers"]):
            self.mlp += [n(width, width, scale=1.0 / math.sqrt(width)), n(width, scale=0.1)]
        self.tiny = n(sz["tiny_n"])
        self.batches = [n(b, sz["batch_cols"]) for b in sz["batches"]]
        self.sgemm = [n(sz["sgemm_n"], sz["sgemm_n"]), n(sz["sgemm_n"], sz["sgemm_n"])]
        an = sz["adam_n"]
        self.adam = [n(an), n(an), n(an, scale=0.1), np.square(n(an, scale=0.1))]
        self.adam_hyper = [np.asarray(v, dtype=np.float32) for v in ADAM]
        self.rms_weight = 1.0 + n(sz["cols"], scale=0.1)
        self.labels = rng.integers(0, sz["cols"], sz["rows"], dtype=np.int64)
        self.poly = n(sz["poly_n"])
        m, k, nn = sz["mm_gelu"]
        self.mmg = [n(m, k), n(k, nn, scale=1.0 / math.sqrt(k)), n(nn, scale=0.1)]
        lc = sz["ln_cols"]
        self.ln_gamma = 1.0 + n(lc, scale=0.1)
        self.ln_beta = n(lc, scale=0.1)
        self.ln = {f"layernorm_1024x{r}": n(r, lc) for r in sz["ln_rows"]}

    def ln_calls(self, workload):
        """Calls per timed run of a layernorm_1024x<rows> workload (timed per call)."""
        return max(1, self.sz["ln_block"] // self.ln[workload].shape[0])


# ---- float64 NumPy references, for the correctness check ----


def to_bf16_grid(a):
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) & np.uint32(0xFFFF0000)).view(np.float32)


def ref(workload, inp):
    d = lambda a: np.asarray(a, dtype=np.float64)
    if workload == "gelu_tanh":
        x = d(inp.gelu)
        return 0.5 * x * (1 + np.tanh(C_TANH * (x + 0.044715 * x**3)))
    if workload == "gelu_erf":
        from scipy.special import erf

        x = d(inp.gelu)
        return x * (1 + erf(x / math.sqrt(2))) / 2
    if workload == "softmax":
        x = d(inp.mat)
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    if workload == "layernorm":
        x = d(inp.mat)
        xc = x - x.mean(-1, keepdims=True)
        return xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-5) * d(inp.gamma) + d(inp.beta)
    if workload == "matmul_add":
        return d(inp.xs[0]) @ d(inp.w) + d(inp.b)
    if workload == "forward_and_norm":
        y = d(inp.xs[0]) @ d(inp.w)
        return np.sqrt((y * y).sum())
    if workload == "mlp":
        h = d(inp.mlp[0])
        layers = (len(inp.mlp) - 1) // 2
        for i in range(layers):
            h = h @ d(inp.mlp[1 + 2 * i]) + d(inp.mlp[2 + 2 * i])
            if i + 1 < layers:
                h = np.maximum(h, 0)
        return h
    if workload == "tiny":
        return d(inp.tiny) + 1
    if workload == "sgemm":
        return d(inp.sgemm[0]) @ d(inp.sgemm[1])
    if workload == "sgemm_bf16":
        return d(to_bf16_grid(inp.sgemm[0])) @ d(to_bf16_grid(inp.sgemm[1]))
    if workload == "adam":
        p, g, m, v = map(d, inp.adam)
        lr, b1, b2, eps, bc1, bc2 = map(float, inp.adam_hyper)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        return p - lr * (m / bc1) / (np.sqrt(v / bc2) + eps)
    if workload == "rmsnorm":
        x = d(inp.mat)
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * d(inp.rms_weight)
    if workload == "logsumexp":
        x = d(inp.mat)
        mx = x.max(-1, keepdims=True)
        return (mx + np.log(np.exp(x - mx).sum(-1, keepdims=True)))[:, 0]
    if workload == "cross_entropy":
        x = d(inp.mat)
        mx = x.max(-1, keepdims=True)
        lse = (mx + np.log(np.exp(x - mx).sum(-1, keepdims=True)))[:, 0]
        return np.asarray((lse - x[np.arange(x.shape[0]), inp.labels]).mean())
    if workload == "transpose_add":
        x = d(inp.mat)
        return x + x.T
    if workload == "softmax_cols":
        x = d(inp.mat)
        e = np.exp(x - x.max(0, keepdims=True))
        return e / e.sum(0, keepdims=True)
    if workload == "col_norms":
        x = d(inp.mat)
        return np.sqrt((x * x).sum(0))
    if workload == "polynomial":
        x = d(inp.poly)
        y = POLY[0] * x + POLY[1]
        for c in POLY[2:]:
            y = y * x + c
        return y
    if workload == "matmul_gelu":
        x, w, b = map(d, inp.mmg)
        h = x @ w + b
        return 0.5 * h * (1 + np.tanh(C_TANH * (h + 0.044715 * h**3)))
    if workload in inp.ln:
        x = d(inp.ln[workload])
        xc = x - x.mean(-1, keepdims=True)
        return xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-5) * d(inp.ln_gamma) + d(inp.ln_beta)
    return None


def adam_written_out(sqrt):
    """One Adam step written out (param, grad, m, v, then the six 0-d
    hyperparameters); returns (param, m, v). `sqrt` is the library's."""

    def adam(p, g, m, v, lr, b1, b2, eps, bc1, bc2):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (g * g)
        return p - lr * (m / bc1) / (sqrt(v / bc2) + eps), m, v

    return adam


def horner(x):
    y = x * POLY[0] + POLY[1]
    for c in POLY[2:]:
        y = y * x + c
    return y


def with_ln(fns, layernorm):
    """Adds the layernorm_1024x<rows> workloads (the layernorm function)."""
    for w in LN_WORKLOADS:
        fns[w] = layernorm
    return fns


# ---- per-framework implementations ----
# Each returns (to_dev, sync, impls) where impls maps impl name -> dict of
# workload -> function of device arrays; sync(out) waits for the result and
# to_host(out) gives NumPy for the check.


def numpy_impls():
    from scipy.special import erf

    def gelu_tanh(x):
        return 0.5 * x * (1 + np.tanh(np.float32(C_TANH) * (x + np.float32(0.044715) * (x * x * x))))

    def gelu_erf(x):
        return x * (1 + erf(x * np.float32(1 / math.sqrt(2)))) * np.float32(0.5)

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def layernorm(x, g, b):
        xc = x - x.mean(-1, keepdims=True)
        return xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + np.float32(1e-5)) * g + b

    def mlp(x, *p):
        layers = len(p) // 2
        for i in range(layers):
            x = x @ p[2 * i] + p[2 * i + 1]
            if i + 1 < layers:
                x = np.maximum(x, 0)
        return x

    def logsumexp(x):
        m = x.max(-1, keepdims=True)
        return (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[:, 0]

    fns = dict(
        gelu_tanh=gelu_tanh,
        gelu_erf=gelu_erf,
        softmax=softmax,
        layernorm=layernorm,
        matmul_add=lambda x, w, b: x @ w + b,
        forward_and_norm=lambda x, w: (lambda y: (y, np.sqrt(np.sum(y * y))))(x @ w),
        mlp=mlp,
        tiny=lambda x: x + np.float32(1),
        sgemm=lambda a, b: a @ b,
        adam=adam_written_out(np.sqrt),
        rmsnorm=lambda x, w: x / np.sqrt((x * x).mean(-1, keepdims=True) + np.float32(1e-6)) * w,
        logsumexp=logsumexp,
        cross_entropy=lambda x, lab: np.mean(logsumexp(x) - x[np.arange(x.shape[0]), lab]),
        polynomial=horner,
        transpose_add=lambda x: x + x.T,
        softmax_cols=lambda x: (lambda e: e / e.sum(0, keepdims=True))(np.exp(x - x.max(0, keepdims=True))),
        col_norms=lambda x: np.sqrt((x * x).sum(0)),
        matmul_gelu=lambda x, w, b: gelu_tanh(x @ w + b),
    )
    with_ln(fns, layernorm)
    return dict(
        name="numpy",
        to_dev=lambda a: a,
        sync=lambda out: out,
        to_host=np.asarray,
        eager={"numpy": fns},
        compiled={},
        make_batches=None,
    )


def jax_impls():
    import jax
    import jax.numpy as jnp

    def layernorm(x, g, b):
        mean = jnp.mean(x, -1, keepdims=True)
        xc = x - mean
        var = jnp.mean(xc * xc, -1, keepdims=True)
        return xc * jax.lax.rsqrt(var + 1e-5) * g + b

    def mlp(x, *p):
        layers = len(p) // 2
        for i in range(layers):
            x = x @ p[2 * i] + p[2 * i + 1]
            if i + 1 < layers:
                x = jax.nn.relu(x)
        return x

    def fns():
        return dict(
            gelu_tanh=lambda x: jax.nn.gelu(x, approximate=True),
            gelu_erf=lambda x: jax.nn.gelu(x, approximate=False),
            softmax=lambda x: jax.nn.softmax(x, axis=-1),
            layernorm=layernorm,
            matmul_add=lambda x, w, b: x @ w + b,
            forward_and_norm=lambda x, w: (lambda y: (y, jnp.sqrt(jnp.sum(y * y))))(x @ w),
            mlp=mlp,
            tiny=lambda x: x + 1.0,
            sgemm=lambda a, b: a @ b,
            sgemm_bf16=lambda a, b: a @ b,
            adam=adam_written_out(jnp.sqrt),
            rmsnorm=lambda x, w: x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * w,
            logsumexp=lambda x: jax.nn.logsumexp(x, axis=-1),
            cross_entropy=lambda x, lab: jnp.mean(
                jax.nn.logsumexp(x, axis=-1) - jnp.take_along_axis(x, lab[:, None], axis=-1)[:, 0]),
            polynomial=horner,
            transpose_add=lambda x: x + x.T,
            softmax_cols=lambda x: jax.nn.softmax(x, axis=0),
            col_norms=lambda x: jnp.sqrt((x * x).sum(0)),
            matmul_gelu=lambda x, w, b: jax.nn.gelu(x @ w + b, approximate=True),
        ) | {w: layernorm for w in LN_WORKLOADS}

    def make_batches(shapeless):
        # jax has no shapeless mode: a fresh jit retraces and recompiles per shape.
        return jax.jit(lambda x: jax.nn.gelu(x, approximate=True))

    return dict(
        name="jax",
        to_dev=lambda a: jax.device_put(a),
        bf16=lambda a: jax.block_until_ready(a.astype(jnp.bfloat16)),
        sync=jax.block_until_ready,
        to_host=np.asarray,
        eager={},
        compiled={"jax-jit": {k: jax.jit(f) for k, f in fns().items()}},
        make_batches=make_batches,
        make_first=lambda: jax.jit(layernorm),
    )


def torch_impls():
    import torch
    import torch.nn.functional as F

    torch.set_grad_enabled(False)

    def layernorm(x, g, b):
        return F.layer_norm(x, (x.shape[-1],), g, b, 1e-5)

    def mlp(x, *p):
        layers = len(p) // 2
        for i in range(layers):
            x = torch.addmm(p[2 * i + 1], x, p[2 * i])
            if i + 1 < layers:
                x = torch.relu(x)
        return x

    def fns():
        return dict(
            gelu_tanh=lambda x: F.gelu(x, approximate="tanh"),
            gelu_erf=lambda x: F.gelu(x),
            softmax=lambda x: torch.softmax(x, -1),
            layernorm=layernorm,
            matmul_add=lambda x, w, b: torch.addmm(b, x, w),
            forward_and_norm=lambda x, w: (lambda y: (y, torch.sqrt(torch.sum(y * y))))(x @ w),
            mlp=mlp,
            tiny=lambda x: x + 1,
            sgemm=lambda a, b: a @ b,
            sgemm_bf16=lambda a, b: a @ b,
            adam=adam_written_out(torch.sqrt),
            rmsnorm=lambda x, w: F.rms_norm(x, (x.shape[-1],), w, 1e-6),
            logsumexp=lambda x: torch.logsumexp(x, -1),
            cross_entropy=lambda x, lab: F.cross_entropy(x, lab),
            polynomial=horner,
            transpose_add=lambda x: x + x.t(),
            softmax_cols=lambda x: torch.softmax(x, 0),
            col_norms=lambda x: torch.sqrt((x * x).sum(0)),
            matmul_gelu=lambda x, w, b: F.gelu(torch.addmm(b, x, w), approximate="tanh"),
        ) | {w: layernorm for w in LN_WORKLOADS}

    def make_batches(shapeless):
        torch._dynamo.reset()
        f = lambda x: F.gelu(x, approximate="tanh")
        return torch.compile(f, dynamic=True) if shapeless else torch.compile(f)

    def make_first():
        torch._dynamo.reset()
        return torch.compile(layernorm)

    return dict(
        name="torch",
        to_dev=lambda a: torch.from_numpy(np.ascontiguousarray(a)),
        bf16=lambda t: t.to(torch.bfloat16),
        sync=lambda out: out,
        to_host=lambda t: (t.float() if t.dtype == torch.bfloat16 else t).numpy(),
        eager={"torch-eager": fns()},
        compiled={"torch-compile": {k: torch.compile(f) for k, f in fns().items()}},
        make_batches=make_batches,
        make_first=make_first,
        # dynamo keeps its compiled code on the Python function: the
        # layernorm rows share one function at five shapes, and a second
        # shape makes it recompile for dynamic shapes. A reset before each
        # workload gives every row its own static compile.
        reset=torch._dynamo.reset,
    )


def mlx_impls():
    import mlx.core as mx
    import mlx.nn as nn

    def gelu_tanh(x):
        return 0.5 * x * (1 + mx.tanh(C_TANH * (x + 0.044715 * (x * x * x))))

    def layernorm(x, g, b):
        return mx.fast.layer_norm(x, g, b, 1e-5)

    def mlp(x, *p):
        layers = len(p) // 2
        for i in range(layers):
            x = mx.addmm(p[2 * i + 1], x, p[2 * i])
            if i + 1 < layers:
                x = nn.relu(x)
        return x

    def fns():
        return dict(
            gelu_tanh=gelu_tanh,
            gelu_erf=nn.gelu,
            softmax=lambda x: mx.softmax(x, axis=-1),
            layernorm=layernorm,
            matmul_add=lambda x, w, b: mx.addmm(b, x, w),
            forward_and_norm=lambda x, w: (lambda y: (y, mx.sqrt(mx.sum(y * y))))(x @ w),
            mlp=mlp,
            tiny=lambda x: x + 1,
            sgemm=lambda a, b: a @ b,
            sgemm_bf16=lambda a, b: a @ b,
            adam=adam_written_out(mx.sqrt),
            rmsnorm=lambda x, w: mx.fast.rms_norm(x, w, 1e-6),
            logsumexp=lambda x: mx.logsumexp(x, axis=-1),
            cross_entropy=lambda x, lab: nn.losses.cross_entropy(x, lab, reduction="mean"),
            polynomial=horner,
            transpose_add=lambda x: x + x.T,
            softmax_cols=lambda x: mx.softmax(x, axis=0),
            col_norms=lambda x: mx.sqrt((x * x).sum(0)),
            matmul_gelu=lambda x, w, b: gelu_tanh(mx.addmm(b, x, w)),
        ) | {w: layernorm for w in LN_WORKLOADS}

    def sync(out):
        mx.eval(out)
        return out

    def make_batches(shapeless):
        return mx.compile(lambda x: gelu_tanh(x), shapeless=shapeless)

    def to_dev(a):
        a = mx.array(a)
        mx.eval(a)
        return a

    return dict(
        name="mlx",
        to_dev=to_dev,
        bf16=lambda a: sync(a.astype(mx.bfloat16)),
        sync=sync,
        to_host=lambda a: np.array(a.astype(mx.float32)) if a.dtype == mx.bfloat16 else np.array(a),
        eager={"mlx-eager": fns()},
        compiled={"mlx-compile": {k: mx.compile(f) for k, f in fns().items()}},
        make_batches=make_batches,
        make_first=lambda: mx.compile(layernorm),
    )


LOADERS = {"numpy": numpy_impls, "jax": jax_impls, "torch": torch_impls, "mlx": mlx_impls}


def versions(fw):
    if fw == "numpy":
        note = f"numpy {np.__version__}"
        try:
            from threadpoolctl import threadpool_info

            for p in threadpool_info():
                note += f"; {p.get('internal_api')} {p.get('version')} {p.get('architecture')} x{p.get('num_threads')}"
        except Exception as e:  # noqa: BLE001
            note += f" (threadpoolctl: {e})"
        return note
    if fw == "jax":
        import jax

        return f"jax {jax.__version__}, devices {jax.devices()}"
    if fw == "torch":
        import torch

        return f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    if fw == "mlx":
        import mlx.core as mx

        return f"mlx {mx.__version__ if hasattr(mx, '__version__') else '?'}, device {mx.default_device()}"
    return fw


def args_for(workload, inp, dev, bf16=None):
    if workload in ("gelu_tanh", "gelu_erf"):
        return [dev(inp.gelu)]
    if workload == "softmax":
        return [dev(inp.mat)]
    if workload == "layernorm":
        return [dev(inp.mat), dev(inp.gamma), dev(inp.beta)]
    if workload == "mlp":
        return [dev(a) for a in inp.mlp]
    if workload == "tiny":
        return [dev(inp.tiny)]
    if workload == "sgemm":
        return [dev(a) for a in inp.sgemm]
    if workload == "sgemm_bf16":
        return [bf16(dev(a)) for a in inp.sgemm]
    if workload == "adam":
        return [dev(a) for a in inp.adam + inp.adam_hyper]
    if workload in ("transpose_add", "softmax_cols", "col_norms"):
        return [dev(inp.mat)]
    if workload in ("rmsnorm", "logsumexp", "cross_entropy"):
        return [dev(inp.mat)] + {"rmsnorm": [dev(inp.rms_weight)], "logsumexp": [],
                                 "cross_entropy": [dev(inp.labels)]}[workload]
    if workload == "polynomial":
        return [dev(inp.poly)]
    if workload == "matmul_gelu":
        return [dev(a) for a in inp.mmg]
    if workload in inp.ln:
        return [dev(inp.ln[workload]), dev(inp.ln_gamma), dev(inp.ln_beta)]
    raise KeyError(workload)


def check(part, workload, impl, got, inp, to_host):
    want = ref(workload, inp)
    if want is None:
        return
    if isinstance(got, (tuple, list)):
        got = got[1] if workload == "forward_and_norm" else got[0]
    g = np.asarray(to_host(got), dtype=np.float64)
    err = float(np.max(np.abs(g - want)) / max(float(np.max(np.abs(want))), 1e-30))
    # bf16 results round each element to 8 bits (2^-9 relative).
    if not err <= (1e-2 if workload.endswith("_bf16") else 1e-3):
        part["notes"].append(f"CHECK {workload}/{impl}: relative max error vs float64 NumPy {err:.2e}")


def run_framework(fw, sizes, plan):
    """Measure every in-process workload of one framework; return a part."""
    part = {"records": [], "missing": [], "notes": []}
    cost = {k: tuple(v) for k, v in sizes["cost"].items()}
    try:
        lib = LOADERS[fw]()
        part["notes"].append(versions(fw))
    except Exception as e:  # noqa: BLE001
        for impl in FRAMEWORKS[fw]:
            part["missing"].append({"impl": impl, "workload": "*", "reason": f"cannot import: {e!r} (install log: target/bench/install.log)"})
        return part
    inp = Inputs(sizes)
    dev, sync = lib["to_dev"], lib["sync"]
    variants = list(lib["eager"].items()) + list(lib["compiled"].items())
    for impl, fns in variants:
        for workload in WORKLOADS:
            try:
                if impl in lib["compiled"] and lib.get("reset"):
                    lib["reset"]()
                f = fns.get(workload)
                if f is None:
                    part["missing"].append({"impl": impl, "workload": workload, "reason": "not supported (no bfloat16)"})
                    continue
                if workload in ("matmul_add", "forward_and_norm"):
                    xs = [dev(x) for x in inp.xs]
                    w, b = dev(inp.w), dev(inp.b)
                    extra = [w, b] if workload == "matmul_add" else [w]

                    def block(xs=xs, extra=extra, f=f):
                        for x in xs:
                            sync(f(x, *extra))

                    samples = measure(plan, block, per=len(xs))
                    got = sync(f(xs[0], *extra))
                elif workload == "tiny":
                    (x,) = args_for(workload, inp, dev)
                    calls = sizes["tiny_calls"]

                    def block(x=x, f=f, calls=calls):
                        for _ in range(calls):
                            sync(f(x))

                    samples = measure(plan, block, per=calls)
                    got = sync(f(x))
                elif workload in inp.ln:
                    a = args_for(workload, inp, dev)
                    calls = inp.ln_calls(workload)

                    def block(a=a, f=f, calls=calls):
                        for _ in range(calls):
                            sync(f(*a))

                    samples = measure(plan, block, per=calls)
                    got = sync(f(*a))
                else:
                    a = args_for(workload, inp, dev, lib.get("bf16"))
                    samples = measure(plan, lambda a=a, f=f: sync(f(*a)))
                    got = sync(f(*a))
                part["records"].append(summarize(workload, impl, samples, cost))
                print(f"  {workload:<18} {impl:<14} {np.median(samples):.4f} ms", file=sys.stderr, flush=True)
                check(part, workload, impl, got, inp, lib["to_host"])
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                part["missing"].append({"impl": impl, "workload": workload, "reason": f"error: {e!r}"[:300]})
    # shapeless_batches for the eager variants (no compile to include).
    for impl, fns in lib["eager"].items():
        try:
            f = fns["gelu_tanh"]
            xs = [dev(x) for x in inp.batches]
            samples = measure(Plan(sizes["quick"]), lambda: [sync(f(x)) for x in xs])
            part["records"].append(summarize("shapeless_batches", impl, samples, cost))
        except Exception as e:  # noqa: BLE001
            part["missing"].append({"impl": impl, "workload": "shapeless_batches", "reason": f"error: {e!r}"[:300]})
    return part


def fresh_once(fw, workload, sizes):
    """One fresh-process measurement (first call, or the batch loop with compiles), in ms."""
    lib = LOADERS[fw]()
    inp = Inputs(sizes)
    dev, sync = lib["to_dev"], lib["sync"]
    if workload == "first_call":
        a = args_for("layernorm", inp, dev)
        sync(a)
        t = time.perf_counter()
        f = lib["make_first"]()
        sync(f(*a))
        return (time.perf_counter() - t) * 1e3
    xs = [dev(x) for x in inp.batches]
    sync(xs)
    t = time.perf_counter()
    f = lib["make_batches"](workload == "shapeless_batches")
    for x in xs:
        sync(f(x))
    return (time.perf_counter() - t) * 1e3


def allocator_note():
    """The glibc malloc settings of this process's environment, in words."""
    keys = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES"]
    set_ = [f"{k}={os.environ[k]}" for k in keys if k in os.environ]
    return ", ".join(set_) if set_ else "glibc malloc defaults"


def run_all(sizes_path, out, timeout, suffix="", fresh=True):
    sizes = json.load(open(sizes_path))
    cost = {k: tuple(v) for k, v in sizes["cost"].items()}
    part = {"records": [], "missing": [], "notes": []}
    me = [sys.executable, os.path.abspath(__file__), "--sizes", sizes_path, "--only", ",".join(WORKLOADS)]
    tmp = tempfile.mkdtemp(prefix="kiln-bench-peers-")
    importable = {}
    for fw in FRAMEWORKS:
        print(f"peers: {fw}", file=sys.stderr, flush=True)
        p = os.path.join(tmp, fw + ".json")
        try:
            r = subprocess.run(me + ["--impl", fw, "--out", p], timeout=timeout)
            sub = json.load(open(p)) if r.returncode == 0 else None
            why = f"process exited with {r.returncode}"
        except subprocess.TimeoutExpired:
            sub, why = None, f"timed out after {timeout} s"
        if sub is None:
            for impl in FRAMEWORKS[fw]:
                part["missing"].append({"impl": impl, "workload": "*", "reason": why})
            importable[fw] = False
            continue
        importable[fw] = not any(m["workload"] == "*" for m in sub["missing"])
        for k in part:
            part[k] += sub[k]
    # Fresh-process workloads: first call, and the batch loops including compiles.
    for fw, impls in FRAMEWORKS.items():
        compiled = impls[0]
        if fw == "numpy" or not importable.get(fw):
            continue
        if not fresh:
            for workload in FRESH:
                part["missing"].append({"impl": compiled, "workload": workload,
                                        "reason": "fresh-process workloads run only with the default allocator"})
            continue
        for workload in FRESH:
            # torch's cold inductor compile takes tens of seconds here: two runs.
            reps = sizes["first_call_reps"] if fw != "torch" else min(2, sizes["first_call_reps"])
            samples, err = [], None
            start = time.perf_counter()
            for _ in range(reps):
                # A fresh TMPDIR per process: mlx keeps compiled CPU kernels under
                # $TMPDIR/mlx, torch's inductor under $TMPDIR/torchinductor_*.
                fresh_tmp = tempfile.mkdtemp(prefix="kiln-bench-fresh-")
                env = dict(os.environ, TMPDIR=fresh_tmp, TORCHINDUCTOR_CACHE_DIR=os.path.join(fresh_tmp, "inductor"))
                try:
                    r = subprocess.run(me + ["--fresh", workload, "--impl", fw], capture_output=True, text=True,
                                       timeout=timeout, env=env)
                    if r.returncode != 0:
                        err = (r.stderr.strip().splitlines() or ["?"])[-1]
                        break
                    samples.append(float(r.stdout.strip().splitlines()[-1]))
                except subprocess.TimeoutExpired:
                    err = f"timed out after {timeout} s"
                    break
                finally:
                    shutil.rmtree(fresh_tmp, ignore_errors=True)
                if time.perf_counter() - start > 120:
                    break
            if samples:
                part["records"].append(summarize(workload, compiled, samples, cost))
                print(f"  {workload:<18} {compiled:<14} {np.median(samples):.1f} ms ({len(samples)} fresh processes)",
                      file=sys.stderr, flush=True)
            else:
                part["missing"].append({"impl": compiled, "workload": workload, "reason": f"error: {err}"[:300]})
    if fresh:
        part["notes"].append(
            "first_call, shapeless_batches and recompile_batches of compiled impls: one fresh process per run "
            "with an empty TMPDIR and inductor cache dir each time, so no persistent compile cache is hit")
    if suffix:
        # The second run of bench.sh: its impls are named apart (torch-eager+reuse).
        for r in part["records"] + part["missing"]:
            r["impl"] += suffix
        part["notes"] = [f"({suffix}) {n}" for n in part["notes"]]
    part["notes"].append(f"peers{' ' + suffix if suffix else ''}: allocator {allocator_note()}")
    json.dump(part, open(out, "w"), indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", required=True)
    ap.add_argument("--out")
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--impl", choices=list(FRAMEWORKS))
    ap.add_argument("--fresh", choices=FRESH)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--suffix", default="", help="appended to every impl name (--all), e.g. +reuse")
    ap.add_argument("--no-fresh", action="store_true", help="skip the fresh-process workloads (--all)")
    ap.add_argument("--only", help="comma-separated workloads to run in process (default: all)")
    a = ap.parse_args()
    if a.only:
        WORKLOADS[:] = [w for w in WORKLOADS if w in a.only.split(",")]
    if a.all:
        run_all(a.sizes, a.out, a.timeout, a.suffix, not a.no_fresh)
        return
    sizes = json.load(open(a.sizes))
    if a.fresh:
        print(fresh_once(a.impl, a.fresh, sizes))
        return
    part = run_framework(a.impl, sizes, Plan(sizes["quick"]))
    json.dump(part, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
