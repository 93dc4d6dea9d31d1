//! Gathers, concatenation, ranges and random bits on the GPU.

use std::fmt::Write;

use crate::array::Data;
use crate::backend::cuda::driver::{Arg, Gpu};
use crate::backend::cuda::elementwise::{self, Operand};
use crate::backend::cuda::source::{self, line, offset_code, storage_type, store, PRELUDE};
use crate::backend::cuda::{dev, fresh, to_host};
use crate::dtype::{DType, Element};
use crate::error::{shape_str, Error, Result};
use crate::layout::contiguous_strides;
use crate::passes::fuse::FusedGroup;

const THREADS: u32 = 256;
const MAX_BLOCKS: usize = 8192;

fn blocks(n: usize) -> u32 {
    n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32
}

/// Gathers `x` along `axis` at the integer indices `idx` (negative ones
/// count from the end; one outside `-size..size` is an error naming it).
/// The indices are checked on the host, so a gather waits for the work
/// queued before it.
pub fn take(gpu: &'static Gpu, x: &Data, idx: &Data, axis: usize, shape: &[usize]) -> Result<Data> {
    if !idx.dtype().is_int() {
        return Err(Error::DType { op: "take", dtype: idx.dtype(), msg: "indices must be an integer array".into() });
    }
    let out = fresh(gpu, "take", x.dtype(), shape)?;
    let n: usize = shape.iter().product();
    if n == 0 {
        return Ok(out);
    }
    let l = x.layout();
    let dim = l.shape[axis] as i64;
    let host = to_host(gpu, idx)?;
    let mut norm: Vec<i64> = Vec::with_capacity(idx.layout().numel());
    crate::with_buffer!(&host, v => {
        for x in v.iter() {
            let i = x.to_i64();
            let j = if i < 0 { i + dim } else { i };
            if !(0..dim).contains(&j) {
                return Err(Error::Invalid {
                    op: "take",
                    msg: format!("index {i} is out of bounds for axis {axis} with size {dim} (valid indices are {}..{})", -dim, dim),
                });
            }
            norm.push(j);
        }
    });
    let ip = gpu.alloc("take", norm.len() * 8)?;
    let guard = FreeOnDrop(gpu, ip, norm.len() * 8);
    gpu.upload(ip, &norm)?;
    let (od, os) = (&l.shape[..axis], &l.strides[..axis]);
    let (id, is) = (&l.shape[axis + 1..], &l.strides[axis + 1..]);
    let st = storage_type(x.dtype());
    let mut s = String::from(PRELUDE);
    s.push_str("typedef long long ix;\n");
    let mut p = vec![
        format!("const {st}* __restrict__ x"),
        "const i64* __restrict__ idx".into(),
        format!("{st}* __restrict__ y"),
    ];
    p.extend(["long long n", "long long ni", "long long inner", "long long sax"].map(String::from));
    for (pre, r) in [("o", od.len()), ("i", id.len())] {
        for d in 0..r {
            p.push(format!("long long {pre}d{d}"));
        }
        for d in 0..r {
            p.push(format!("long long {pre}s{d}"));
        }
    }
    let _ = writeln!(s, "extern \"C\" __global__ void k({}) {{", p.join(", "));
    line(&mut s, "for (ix i = (ix)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (ix)gridDim.x * blockDim.x) {");
    line(&mut s, "ix row = i / inner, r = i % inner, o = row / ni, j = row % ni;");
    offset_code(&mut s, "oo", "o", "o", od.len());
    offset_code(&mut s, "io", "r", "i", id.len());
    line(&mut s, "y[i] = x[oo + idx[j] * sax + io];");
    line(&mut s, "}");
    s.push_str("}\n");
    let k = gpu.kernel(&s)?;
    let inner: usize = id.iter().product();
    let mut args = vec![
        Arg::Ptr(dev(x)?.ptr_at(l.offset)),
        Arg::Ptr(ip),
        Arg::Ptr(dev(&out)?.ptr_at(0)),
        Arg::I64(n as i64),
        Arg::I64(norm.len() as i64),
        Arg::I64(inner as i64),
        Arg::I64(l.strides[axis] as i64),
    ];
    for (d, st) in [(od, os), (id, is)] {
        args.extend(d.iter().map(|&v| Arg::I64(v as i64)));
        args.extend(st.iter().map(|&v| Arg::I64(v as i64)));
    }
    gpu.launch(k, blocks(n), THREADS, 0, &args)?;
    drop(guard);
    Ok(out)
}

/// Device memory freed when dropped (stream-ordered, after queued work).
struct FreeOnDrop(&'static Gpu, u64, usize);

impl Drop for FreeOnDrop {
    fn drop(&mut self) {
        self.0.free(self.1, self.2);
    }
}

/// Concatenation of `xs` (one dtype) along `axis` into an array of `shape`:
/// each input is copied into its part of the output.
pub fn concatenate(gpu: &'static Gpu, xs: &[&Data], axis: usize, shape: &[usize]) -> Result<Data> {
    let first = xs.first().ok_or(Error::Invalid { op: "concatenate", msg: "needs at least one array".into() })?;
    if let Some(bad) = xs.iter().find(|x| x.dtype() != first.dtype()) {
        return Err(Error::Invalid {
            op: "concatenate",
            msg: format!("inputs have different dtypes {} and {}", first.dtype(), bad.dtype()),
        });
    }
    let out = fresh(gpu, "concatenate", first.dtype(), shape)?;
    let strides = contiguous_strides(shape);
    let base = dev(&out)?;
    let copy = FusedGroup { inputs: vec![first.dtype()], ops: vec![], outputs: vec![0] };
    let mut at = 0usize;
    for x in xs {
        let xshape = x.layout().shape.to_vec();
        let dst = Operand { ptr: base.ptr_at(at * strides[axis].max(0) as usize), strides: strides.clone() };
        elementwise::launch(gpu, &copy, None, &[], &[Operand::of(x, &xshape)?], &[dst], &xshape)?;
        at += xshape[axis];
    }
    Ok(out)
}

/// `start + i * step` for `i` in `0..len`, computed in `f64` and converted
/// to `dtype` (`as` semantics).
pub fn arange(gpu: &'static Gpu, start: f64, step: f64, len: usize, dtype: DType) -> Result<Data> {
    let out = fresh(gpu, "arange", dtype, &[len])?;
    if len == 0 {
        return Ok(out);
    }
    let mut s = String::from(PRELUDE);
    let _ = writeln!(
        s,
        "extern \"C\" __global__ void k({}* __restrict__ y, long long n, double start, double step) {{",
        storage_type(dtype)
    );
    line(&mut s, "for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {");
    line(&mut s, "double v = start + (double)i * step;");
    line(&mut s, format!("y[i] = {};", store(dtype, &source::cast("v", DType::F64, dtype))));
    line(&mut s, "}");
    s.push_str("}\n");
    let k = gpu.kernel(&s)?;
    let args = [Arg::Ptr(dev(&out)?.ptr_at(0)), Arg::I64(len as i64), Arg::F64(start), Arg::F64(step)];
    gpu.launch(k, blocks(len), THREADS, 0, &args)?;
    Ok(out)
}

/// Threefry-2x32 (20 rounds) in C: `crate::ops::random::threefry2x32`.
const THREEFRY: &str = r#"__device__ __forceinline__ u32 rotl(u32 x, int r) { return (x << r) | (x >> (32 - r)); }
__device__ __forceinline__ void threefry(u32 k0, u32 k1, u32 c0, u32 c1, u32* o0, u32* o1) {
    const u32 ks[3] = {k0, k1, k0 ^ k1 ^ 0x1BD11BDAu};
    u32 x0 = c0 + ks[0], x1 = c1 + ks[1];
    const int R[2][4] = {{13, 15, 26, 6}, {17, 29, 16, 24}};
    #pragma unroll
    for (int s = 1; s <= 5; s++) {
        const int* r = R[(s - 1) % 2];
        #pragma unroll
        for (int q = 0; q < 4; q++) { x0 += x1; x1 = rotl(x1, r[q]) ^ x0; }
        x0 += ks[s % 3];
        x1 += ks[(s + 1) % 3] + (u32)s;
    }
    *o0 = x0; *o1 = x1;
}
"#;

/// `u32` random bits of `shape` from a `u32[2]` key: element `i` is word
/// `i % 2` of the Threefry block of counter `i / 2`, as on the CPU.
pub fn random_bits(gpu: &'static Gpu, key: &Data, shape: &[usize]) -> Result<Data> {
    let kl = key.layout();
    if key.dtype() != DType::U32 || kl.shape[..] != [2] {
        return Err(Error::Invalid {
            op: "random_bits",
            msg: format!("a key is a u32 array of shape (2), got {}{}", key.dtype(), shape_str(&kl.shape)),
        });
    }
    let n: usize = shape.iter().product();
    let out = fresh(gpu, "random_bits", DType::U32, shape)?;
    if n == 0 {
        return Ok(out);
    }
    let mut s = String::from(PRELUDE);
    s.push_str(THREEFRY);
    let _ = writeln!(s, "extern \"C\" __global__ void k(const u32* __restrict__ key, long long ks, u32* __restrict__ y, long long n) {{");
    line(&mut s, "const u32 k0 = key[0], k1 = key[ks];");
    line(&mut s, "for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; 2 * j < n; j += (long long)gridDim.x * blockDim.x) {");
    line(&mut s, "u32 a, b; threefry(k0, k1, (u32)j, (u32)((u64)j >> 32), &a, &b);");
    line(&mut s, "y[2 * j] = a; if (2 * j + 1 < n) y[2 * j + 1] = b;");
    line(&mut s, "}");
    s.push_str("}\n");
    let k = gpu.kernel(&s)?;
    let args = [
        Arg::Ptr(dev(key)?.ptr_at(kl.offset)),
        Arg::I64(kl.strides[0] as i64),
        Arg::Ptr(dev(&out)?.ptr_at(0)),
        Arg::I64(n as i64),
    ];
    gpu.launch(k, blocks(n.div_ceil(2)), THREADS, 0, &args)?;
    Ok(out)
}
