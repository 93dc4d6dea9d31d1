//! Matrix products on the GPU: `a @ b` over broadcast batch dimensions,
//! one 16x16 output tile per block through shared memory, both operands
//! read in place through their strides (transposed, sliced and broadcast
//! views need no copy). Accumulation: `f16`/`bf16` in `f32` (rounded once
//! at the end), integers wrapping (as `+` and `*` on integer arrays).

use std::fmt::Write;

use crate::array::Data;
use crate::backend::cuda::driver::{Arg, GemmOperand, Gpu};
use crate::backend::cuda::source::{line, load, storage_type, store, PRELUDE};
use crate::backend::cuda::{dev, fresh};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::{collapse, contiguous_strides};

/// Side of the output tile a block computes.
const TILE: usize = 16;

fn source(dt: DType, batch_rank: usize) -> String {
    let acc = match dt {
        DType::F64 => "double",
        DType::F32 | DType::F16 | DType::BF16 => "float",
        _ => "u64",
    };
    let st = storage_type(dt);
    let mut s = String::from(PRELUDE);
    let mut p = vec![
        format!("const {st}* __restrict__ a"),
        format!("const {st}* __restrict__ b"),
        format!("{st}* __restrict__ c"),
        "long long nb".into(),
        "long long m".into(),
        "long long n".into(),
        "long long kk".into(),
        "long long am".into(),
        "long long ak".into(),
        "long long bk".into(),
        "long long bn".into(),
    ];
    for d in 0..batch_rank {
        p.push(format!("long long d{d}"));
        p.push(format!("long long sa{d}"));
        p.push(format!("long long sb{d}"));
    }
    let _ = writeln!(s, "extern \"C\" __global__ void k({}) {{", p.join(", "));
    line(&mut s, format!("__shared__ {acc} ta[{TILE}][{}]; __shared__ {acc} tb[{TILE}][{}];", TILE + 1, TILE + 1));
    line(&mut s, format!("const long long tm = (m + {TILE} - 1) / {TILE}, tn = (n + {TILE} - 1) / {TILE};"));
    line(&mut s, format!("const int tx = threadIdx.x % {TILE}, ty = threadIdx.x / {TILE};"));
    line(&mut s, "for (long long t = blockIdx.x; t < nb * tm * tn; t += gridDim.x) {");
    line(&mut s, "long long bi = t / (tm * tn), rest = t % (tm * tn);");
    line(&mut s, format!("long long i0 = (rest / tn) * {TILE}, j0 = (rest % tn) * {TILE};"));
    line(&mut s, "long long oa = 0, ob = 0;");
    line(&mut s, "{ long long r = bi;");
    for d in (0..batch_rank).rev() {
        line(&mut s, format!("long long c{d} = r % d{d}; r /= d{d}; oa += c{d} * sa{d}; ob += c{d} * sb{d};"));
    }
    line(&mut s, "}");
    line(&mut s, format!("{acc} sum = 0;"));
    line(&mut s, format!("for (long long k0 = 0; k0 < kk; k0 += {TILE}) {{"));
    line(&mut s, "long long i = i0 + ty, k = k0 + tx;");
    line(
        &mut s,
        format!("ta[ty][tx] = (i < m && k < kk) ? ({acc}){} : ({acc})0;", load(dt, "a[oa + i * am + k * ak]")),
    );
    line(&mut s, "long long k2 = k0 + ty, j = j0 + tx;");
    line(
        &mut s,
        format!("tb[ty][tx] = (k2 < kk && j < n) ? ({acc}){} : ({acc})0;", load(dt, "b[ob + k2 * bk + j * bn]")),
    );
    line(&mut s, "__syncthreads();");
    line(&mut s, format!("for (int q = 0; q < {TILE}; q++) sum += ta[ty][q] * tb[q][tx];"));
    line(&mut s, "__syncthreads();");
    line(&mut s, "}");
    line(&mut s, "long long i = i0 + ty, j = j0 + tx;");
    let v = match dt {
        DType::F16 => "rh(sum)".to_string(),
        DType::BF16 => "rb(sum)".to_string(),
        _ => format!("({st})sum"),
    };
    line(&mut s, format!("if (i < m && j < n) c[(bi * m + i) * n + j] = {};", store(dt, &v)));
    line(&mut s, "}");
    s.push_str("}\n");
    s
}

/// A row-major operand of strides (`inner`, `outer`) (along its last and
/// second-to-last axes) as cuBLAS's column-major `rows x cols` matrix
/// (its transpose): in place when one stride is 1 and the other a valid
/// leading dimension, with batch stride `batch` (elements, from the
/// collapsed batch strides; none for a single product). `None` when the
/// layout needs the tiled kernel (broadcast or negative strides).
fn operand(
    inner: isize,
    outer: isize,
    rows: usize,
    cols: usize,
    ptr: u64,
    batch: Option<&Vec<isize>>,
) -> Option<GemmOperand> {
    let stride = match batch.map(|b| b.first().copied().unwrap_or(0)) {
        None => 0,
        Some(s) if s >= 0 => s as i64,
        Some(_) => return None,
    };
    let ok_ld = |ld: isize, need: usize| ld >= need.max(1) as isize && ld <= i32::MAX as isize;
    // Element (r, c) of the column-major matrix is row-major (c, r).
    if inner == 1 && ok_ld(outer, rows) {
        Some(GemmOperand { ptr, ld: outer as i32, trans: false, stride })
    } else if outer == 1 && ok_ld(inner, cols) {
        Some(GemmOperand { ptr, ld: inner as i32, trans: true, stride })
    } else {
        None
    }
}

/// `a @ b` with broadcast batch dims; `shape` is the output shape
/// (`batch.., m, n`). Both operands have at least 2 dims and one dtype.
pub fn matmul(gpu: &'static Gpu, a: &Data, b: &Data, shape: &[usize]) -> Result<Data> {
    let dt = a.dtype();
    if dt == DType::Bool {
        return Err(Error::DType { op: "matmul", dtype: dt, msg: "convert bool operands to a numeric dtype".into() });
    }
    let nd = shape.len();
    let (m, n) = (shape[nd - 2], shape[nd - 1]);
    let kk = a.layout().shape[a.layout().ndim() - 1];
    let batch = &shape[..nd - 2];
    let mut ashape = batch.to_vec();
    ashape.extend([m, kk]);
    let mut bshape = batch.to_vec();
    bshape.extend([kk, n]);
    let la = a.layout().broadcast_to(&ashape);
    let lb = b.layout().broadcast_to(&bshape);
    let c = fresh(gpu, "matmul", dt, shape)?;
    let nb: usize = batch.iter().product();
    if nb * m * n == 0 {
        return Ok(c);
    }
    let out_batch = contiguous_strides(batch);
    let (bd, bs) = collapse(batch, &[&la.strides[..nd - 2], &lb.strides[..nd - 2], &out_batch]);
    let (pa, pb, pc) = (dev(a)?.ptr_at(la.offset), dev(b)?.ptr_at(lb.offset), dev(&c)?.ptr_at(0));
    if dt.is_float() && crate::backend::cuda::driver::have_cublas() {
        // Row-major C = A B is column-major C^T = B^T A^T.
        let a_ = operand(lb.strides[nd - 1], lb.strides[nd - 2], n, kk, pb, bs.get(1));
        let b_ = operand(la.strides[nd - 1], la.strides[nd - 2], kk, m, pa, bs.first());
        let fits = |v: usize| v <= i32::MAX as usize;
        if let (Some(x), Some(y), true, true) = (a_, b_, bd.len() <= 1, fits(m) && fits(n) && fits(kk) && fits(nb)) {
            gpu.gemm(dt, (n as i32, m as i32, kk as i32), x, y, (pc, n as i32, (m * n) as i64), nb as i32)?;
            return Ok(c);
        }
    }
    let k = gpu.kernel(&source(dt, bd.len()))?;
    let mut args = vec![
        Arg::Ptr(pa),
        Arg::Ptr(pb),
        Arg::Ptr(pc),
        Arg::I64(nb as i64),
        Arg::I64(m as i64),
        Arg::I64(n as i64),
        Arg::I64(kk as i64),
        Arg::I64(la.strides[nd - 2] as i64),
        Arg::I64(la.strides[nd - 1] as i64),
        Arg::I64(lb.strides[nd - 2] as i64),
        Arg::I64(lb.strides[nd - 1] as i64),
    ];
    for (d, &size) in bd.iter().enumerate() {
        args.extend([Arg::I64(size as i64), Arg::I64(bs[0][d] as i64), Arg::I64(bs[1][d] as i64)]);
    }
    let tiles = nb * m.div_ceil(TILE) * n.div_ceil(TILE);
    gpu.launch(k, tiles.min(1 << 20) as u32, (TILE * TILE) as u32, 0, &args)?;
    Ok(c)
}
