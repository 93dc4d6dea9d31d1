"""The GPU peers of `kiln-bench cuda`: torch eager, torch.compile and
jax.jit on the same rows, timed the same way (synchronize before reading
the clock, warm-up, median of repeats, random normal inputs). Prints a
Markdown table and writes JSON to the path given as the first argument.
Run by `scripts/gpu.sh bench` on the GPU machine (its Python has torch and
jax).

`--first gelu|layernorm CACHE_DIR` instead times jax.jit's first call in
this (fresh) process, with its persistent compilation cache in CACHE_DIR
(empty: a cold compile; filled by an earlier run: the disk cache), on
inputs made before the clock starts, and prints milliseconds."""
import json
import math
import sys
import time

QUICK = "--quick" in sys.argv
BIG = 1 << 22 if QUICK else 1 << 28
SIDE = 2048 if QUICK else 16384
REPS = 3 if QUICK else 9
rows = []


def timed(sync, f, calls=1):
    for _ in range(3):
        f()
    sync()
    piped, synced = [], []
    for _ in range(REPS):
        t = time.perf_counter()
        for _ in range(calls):
            f()
        sync()
        piped.append((time.perf_counter() - t) / calls)
        t = time.perf_counter()
        for _ in range(calls):
            f()
            sync()
        synced.append((time.perf_counter() - t) / calls)
    return sorted(piped)[len(piped) // 2], sorted(synced)[len(synced) // 2]


def torch_rows():
    import torch

    dev = "cuda"
    sync = torch.cuda.synchronize
    torch.backends.cuda.matmul.allow_tf32 = False

    def gelu_tanh(x):
        return 0.5 * x * (1 + torch.tanh(0.7978846 * (x + 0.044715 * x * x * x)))

    def gelu_erf(x):
        return 0.5 * x * (1 + torch.erf(x * 0.70710678))

    def softmax(x):
        return torch.softmax(x, -1)

    def layernorm(x, g, b):
        m = x.mean(-1, keepdim=True)
        xc = x - m
        v = (xc * xc).mean(-1, keepdim=True)
        return xc * torch.rsqrt(v + 1e-5) * g + b

    def matmul_add(x, w, b):
        return x @ w + b

    def forward_and_norm(x, w):
        y = x @ w
        return y, (y * y).sum().sqrt()

    def mlp(x, *p):
        for i in range(3):
            x = x @ p[2 * i] + p[2 * i + 1]
            if i < 2:
                x = torch.relu(x)
        return x

    x = torch.randn(BIG, device=dev)
    xs = torch.randn(SIDE, SIDE, device=dev)
    g = torch.randn(SIDE, device=dev) * 0.1 + 1
    b = torch.randn(SIDE, device=dev) * 0.1
    mx = [torch.randn(32, 128, device=dev) for _ in range(64)]
    w = torch.randn(128, 256, device=dev)
    mb = torch.randn(256, device=dev)
    t = torch.randn(16, device=dev)
    bw = 512 if QUICK else 4096
    px = torch.randn(bw, bw, device=dev)
    pp = []
    for _ in range(3):
        pp += [torch.randn(bw, bw, device=dev) / math.sqrt(bw), torch.randn(bw, device=dev) * 0.1]
    for mode in ["torch-eager", "torch-compile"]:
        wrap = (lambda f: f) if mode == "torch-eager" else (lambda f: torch.compile(f))
        cases = [
            ("gelu_tanh", wrap(gelu_tanh), (x,), 1),
            ("gelu_erf", wrap(gelu_erf), (x,), 1),
            ("softmax", wrap(softmax), (xs,), 1),
            ("layernorm", wrap(layernorm), (xs, g, b), 1),
            ("tiny x + 1 per call", wrap(lambda a: a + 1), (t,), 1000),
            ("mlp (fp32)", wrap(mlp), [px] + pp, 1),
        ]
        for name, f, args, calls in cases:
            p, s = timed(sync, lambda: f(*args), calls)
            rows.append({"peer": mode, "row": name, "pipelined_s": p, "synced_s": s})
        # TF32 products, asked for (a fresh compile: the setting is part of
        # what torch.compile traces).
        torch.backends.cuda.matmul.allow_tf32 = True
        f = wrap(mlp)
        p, s = timed(sync, lambda: f(px, *pp), 1)
        rows.append({"peer": mode, "row": "mlp (tf32)", "pipelined_s": p, "synced_s": s})
        torch.backends.cuda.matmul.allow_tf32 = False
        f = wrap(matmul_add)
        i = [0]

        def call():
            i[0] += 1
            return f(mx[i[0] % 64], w, mb)

        p, s = timed(sync, call, 200)
        rows.append({"peer": mode, "row": "matmul_add per call", "pipelined_s": p, "synced_s": s})
        f2 = wrap(forward_and_norm)

        def call2():
            i[0] += 1
            return f2(mx[i[0] % 64], w)

        p, s = timed(sync, call2, 200)
        rows.append({"peer": mode, "row": "forward_and_norm per call", "pipelined_s": p, "synced_s": s})
    # The device-to-device copy: the floor.
    y = torch.empty_like(x)
    p, s = timed(sync, lambda: y.copy_(x), 1)
    rows.append({"peer": "copy floor", "row": "device copy", "pipelined_s": p, "synced_s": s, "bytes": 8.0 * BIG})


def jax_fns():
    import jax
    import jax.numpy as jnp

    def gelu_tanh(x):
        return 0.5 * x * (1 + jnp.tanh(0.7978846 * (x + 0.044715 * x * x * x)))

    def gelu_erf(x):
        return 0.5 * x * (1 + jax.scipy.special.erf(x * 0.70710678))

    def layernorm(x, g, b):
        return (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5) * g + b

    def mlp_at(precision):
        def mlp(x, *p):
            for i in range(3):
                x = jnp.dot(x, p[2 * i], precision=precision) + p[2 * i + 1]
                if i < 2:
                    x = jax.nn.relu(x)
            return x

        return mlp

    def forward_and_norm(x, w):
        y = jnp.dot(x, w, precision="highest")
        return y, jnp.sqrt((y * y).sum())

    return {
        "gelu_tanh": gelu_tanh,
        "gelu_erf": gelu_erf,
        "softmax": lambda x: jax.nn.softmax(x, -1),
        "layernorm": layernorm,
        "matmul_add": lambda x, w, b: jnp.dot(x, w, precision="highest") + b,
        "forward_and_norm": forward_and_norm,
        "mlp": mlp_at("highest"),
        "mlp_tf32": mlp_at("tensorfloat32"),
        "tiny": lambda x: x + 1,
    }


def jax_rows():
    import jax

    fns = jax_fns()
    key = jax.random.PRNGKey(0)
    k = jax.random.split(key, 8)
    x = jax.random.normal(k[0], (BIG,))
    xs = jax.random.normal(k[1], (SIDE, SIDE))
    g = jax.random.normal(k[2], (SIDE,)) * 0.1 + 1
    b = jax.random.normal(k[3], (SIDE,)) * 0.1
    mx = [jax.random.normal(jax.random.PRNGKey(10 + j), (32, 128)) for j in range(64)]
    w = jax.random.normal(k[4], (128, 256))
    mb = jax.random.normal(k[5], (256,))
    t = jax.random.normal(k[6], (16,))
    bw = 512 if QUICK else 4096
    pp = [jax.random.normal(k[7], (bw, bw))]
    for j in range(3):
        pp += [jax.random.normal(jax.random.PRNGKey(20 + j), (bw, bw)) / math.sqrt(bw), jax.random.normal(jax.random.PRNGKey(30 + j), (bw,)) * 0.1]
    i = [0]
    cases = [
        ("gelu_tanh", fns["gelu_tanh"], lambda: (x,), 1),
        ("gelu_erf", fns["gelu_erf"], lambda: (x,), 1),
        ("softmax", fns["softmax"], lambda: (xs,), 1),
        ("layernorm", fns["layernorm"], lambda: (xs, g, b), 1),
        ("tiny x + 1 per call", fns["tiny"], lambda: (t,), 1000),
        ("mlp (fp32)", fns["mlp"], lambda: pp, 1),
        ("mlp (tf32)", fns["mlp_tf32"], lambda: pp, 1),
        ("matmul_add per call", fns["matmul_add"], lambda: (mx[i[0] % 64], w, mb), 200),
        ("forward_and_norm per call", fns["forward_and_norm"], lambda: (mx[i[0] % 64], w), 200),
    ]
    for name, f, args, calls in cases:
        f = jax.jit(f)
        out = [None]

        def call():
            i[0] += 1
            out[0] = f(*args())

        def block():
            jax.block_until_ready(out[0])

        p, s = timed(block, call, calls)
        rows.append({"peer": "jax-jit", "row": name, "pipelined_s": p, "synced_s": s})


def jax_first(which, cache):
    import jax

    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    fns = jax_fns()
    key = jax.random.PRNGKey(0)
    args = (jax.random.normal(key, (4096, 4096)),)
    if which == "layernorm":
        args += (jax.random.normal(key, (4096,)), jax.random.normal(key, (4096,)))
    jax.block_until_ready(args)
    t = time.perf_counter()
    jax.block_until_ready(jax.jit(fns["gelu_tanh" if which == "gelu" else "layernorm"])(*args))
    print(f"{(time.perf_counter() - t) * 1e3:.1f}")


if "--first" in sys.argv:
    a = sys.argv.index("--first")
    jax_first(sys.argv[a + 1], sys.argv[a + 2])
    sys.exit(0)

for part in (torch_rows, jax_rows):
    try:
        part()
    except Exception as e:  # a missing peer is reported, not fatal
        print(f"{part.__name__}: {e}", file=sys.stderr)

print("| peer | row | pipelined | synced |\n|---|---|---|---|")
for r in rows:
    f = lambda v: f"{v * 1e6:.1f} us" if v < 1e-3 else f"{v * 1e3:.3f} ms"
    print(f"| {r['peer']} | {r['row']} | {f(r['pipelined_s'])} | {f(r['synced_s'])} |")
out = [a for a in sys.argv[1:] if not a.startswith("--")]
if out:
    with open(out[0], "w") as fh:
        json.dump(rows, fh, indent=1)
