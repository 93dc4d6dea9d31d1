//! Matrix products on the GPU. Floating-point products go to cuBLAS
//! (true `f32`, or TF32 while [`crate::matmul_precision`] allows it),
//! except small ones: cuBLAS's host work per call
//! (its algorithm choice and setup) costs more than a small product
//! itself, so a product of at most [`SMALL`] multiply-adds runs in kiln's
//! own kernel, as integer products and layouts cuBLAS cannot take do:
//! `a @ b` over broadcast batch dimensions, one 16x16 output tile per
//! block through shared memory, both operands read in place through their
//! strides (transposed, sliced and broadcast views need no copy).
//! Accumulation: `f16`/`bf16` in `f32` (rounded once at the end), floats
//! by fused multiply-adds, integers wrapping (as `+` and `*` on integer
//! arrays). A compiled product's elementwise epilogue (`x @ w + b`, an
//! activation) runs inside that kernel's store when the product is small
//! ([`small_with_epilogue`]): one launch per call.

use std::fmt::Write;
use std::sync::OnceLock;

use crate::array::Data;
use crate::backend::cuda::driver::{variant, Arg, GemmOperand, Gpu, Memo};
use crate::backend::cuda::elementwise::Operand;
use crate::backend::cuda::source::{line, lit_of, load, ops_code, register_type, storage_type, store, PRELUDE};
use crate::backend::cuda::{dev, fresh};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::{collapse, contiguous_strides};
use crate::passes::fuse::FusedGroup;

/// Side of the output tile a block computes.
const TILE: usize = 16;
/// Length along the summed axis of the slices a block stages per step.
const KTILE: usize = 64;

/// Most multiply-adds (`batch * m * n * k`) of a floating-point product
/// that runs in kiln's tiled kernel rather than cuBLAS.
pub const SMALL: usize = 1 << 24;

/// An elementwise group applied to each element of a product before it is
/// stored (see [`small_with_epilogue`]): its input 0 is the product, the
/// others (`lits[k]` a literal, else read through strides over the output)
/// come after.
struct Epilogue<'a> {
    group: &'a FusedGroup,
    lits: &'a [Option<&'a str>],
}

fn source(dt: DType, batch_rank: usize, epilogue: Option<&Epilogue>) -> String {
    let acc = match dt {
        DType::F64 => "double",
        DType::F32 | DType::F16 | DType::BF16 => "float",
        _ => "u64",
    };
    let st = storage_type(dt);
    let mut s = String::from(PRELUDE);
    let mut p = vec![format!("const {st}* __restrict__ a"), format!("const {st}* __restrict__ b")];
    match epilogue {
        None => p.push(format!("{st}* __restrict__ c")),
        Some(e) => {
            for (q, &r) in e.group.outputs.iter().enumerate() {
                p.push(format!("{}* __restrict__ c{q}", storage_type(e.group.reg_dtype(r))));
            }
            for (k, dt) in e.group.inputs.iter().enumerate().skip(1).filter(|(k, _)| lit_of(e.lits, *k).is_none()) {
                p.push(format!("const {}* __restrict__ e{k}", storage_type(*dt)));
                p.push(format!("long long em{k}"));
                p.push(format!("long long en{k}"));
            }
        }
    }
    p.extend([
        "long long nb".into(),
        "long long m".into(),
        "long long n".into(),
        "long long kk".into(),
        "long long am".into(),
        "long long ak".into(),
        "long long bk".into(),
        "long long bn".into(),
    ]);
    for d in 0..batch_rank {
        p.push(format!("long long d{d}"));
        p.push(format!("long long sa{d}"));
        p.push(format!("long long sb{d}"));
    }
    let _ = writeln!(s, "extern \"C\" __global__ void k({}) {{", p.join(", "));
    line(&mut s, format!("__shared__ {acc} ta[{TILE}][{}]; __shared__ {acc} tb[{KTILE}][{}];", KTILE + 1, TILE + 1));
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
    // Each step stages a TILE x KTILE slice of a and a KTILE x TILE slice
    // of b: KTILE / TILE loads per thread and operand, all in flight at once.
    line(&mut s, format!("for (long long k0 = 0; k0 < kk; k0 += {KTILE}) {{"));
    line(&mut s, "long long i = i0 + ty, j = j0 + tx;");
    for u in 0..KTILE / TILE {
        let o = u * TILE;
        line(&mut s, format!("{{ long long k = k0 + tx + {o};"));
        let x = load(dt, "a[oa + i * am + k * ak]");
        line(&mut s, format!("ta[ty][tx + {o}] = (i < m && k < kk) ? ({acc}){x} : ({acc})0; }}"));
        line(&mut s, format!("{{ long long k = k0 + ty + {o};"));
        let x = load(dt, "b[ob + k * bk + j * bn]");
        line(&mut s, format!("tb[ty + {o}][tx] = (k < kk && j < n) ? ({acc}){x} : ({acc})0; }}"));
    }
    line(&mut s, "__syncthreads();");
    let madd = if acc == "u64" { "sum += ta[ty][q] * tb[q][tx];" } else { "sum = fma(ta[ty][q], tb[q][tx], sum);" };
    line(&mut s, format!("for (int q = 0; q < {KTILE}; q++) {madd}"));
    line(&mut s, "__syncthreads();");
    line(&mut s, "}");
    line(&mut s, "long long i = i0 + ty, j = j0 + tx;");
    let v = match dt {
        DType::F16 => "rh(sum)".to_string(),
        DType::BF16 => "rb(sum)".to_string(),
        _ => format!("({st})sum"),
    };
    match epilogue {
        None => line(&mut s, format!("if (i < m && j < n) c[(bi * m + i) * n + j] = {};", store(dt, &v))),
        Some(e) => {
            // The product as its dtype holds it, then the group's ops.
            line(&mut s, "if (i < m && j < n) {");
            line(&mut s, format!("{} r0 = {};", register_type(dt), load(dt, &store(dt, &v))));
            for (k, dt) in e.group.inputs.iter().enumerate().skip(1) {
                let x = match lit_of(e.lits, k) {
                    Some(l) => l.to_string(),
                    None => load(*dt, &format!("e{k}[i * em{k} + j * en{k}]")),
                };
                line(&mut s, format!("{} r{k} = {x};", register_type(*dt)));
            }
            ops_code(&mut s, e.group, "r", &mut 0);
            for (q, &r) in e.group.outputs.iter().enumerate() {
                line(&mut s, format!("c{q}[i * n + j] = {};", store(e.group.reg_dtype(r), &format!("r{r}"))));
            }
            line(&mut s, "}");
        }
    }
    line(&mut s, "}");
    s.push_str("}\n");
    s
}

/// The tiled kernels of plain products, by GPU, dtype and batch rank.
static TILED: OnceLock<Memo> = OnceLock::new();

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

/// A product `a @ b` of output shape `shape` (`batch.., m, n`): both
/// operands' layouts broadcast over the batch, and the batch collapsed.
struct Product {
    dt: DType,
    m: usize,
    n: usize,
    kk: usize,
    nb: usize,
    /// Collapsed batch dims and their strides in a, b and the output.
    bd: Vec<usize>,
    bs: Vec<Vec<isize>>,
    la: crate::layout::Layout,
    lb: crate::layout::Layout,
    pa: u64,
    pb: u64,
}

impl Product {
    fn new(a: &Data, b: &Data, shape: &[usize]) -> Result<Product> {
        let dt = a.dtype();
        if dt == DType::Bool {
            return Err(Error::DType {
                op: "matmul",
                dtype: dt,
                msg: "convert bool operands to a numeric dtype".into(),
            });
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
        let out_batch = contiguous_strides(batch);
        let (bd, bs) = collapse(batch, &[&la.strides[..nd - 2], &lb.strides[..nd - 2], &out_batch]);
        let (pa, pb) = (dev(a)?.ptr_at(la.offset), dev(b)?.ptr_at(lb.offset));
        Ok(Product { dt, m, n, kk, nb: batch.iter().product(), bd, bs, la, lb, pa, pb })
    }

    /// Whether the product runs in kiln's tiled kernel: not a float, too
    /// small for cuBLAS's setup to pay, or no cuBLAS.
    fn tiled(&self) -> bool {
        !self.dt.is_float()
            || self.nb * self.m * self.n * self.kk <= small()
            || !crate::backend::cuda::driver::have_cublas()
    }

    /// The tiled kernel's launch: `pre` (the outputs, the epilogue's
    /// operands) after the operands, then sizes and strides.
    fn launch_tiled(&self, gpu: &Gpu, k: crate::backend::cuda::driver::Kernel, pre: &[Arg]) -> Result<()> {
        let nd = self.la.ndim();
        let mut args = vec![Arg::Ptr(self.pa), Arg::Ptr(self.pb)];
        args.extend_from_slice(pre);
        args.extend([
            Arg::I64(self.nb as i64),
            Arg::I64(self.m as i64),
            Arg::I64(self.n as i64),
            Arg::I64(self.kk as i64),
            Arg::I64(self.la.strides[nd - 2] as i64),
            Arg::I64(self.la.strides[nd - 1] as i64),
            Arg::I64(self.lb.strides[nd - 2] as i64),
            Arg::I64(self.lb.strides[nd - 1] as i64),
        ]);
        for (d, &size) in self.bd.iter().enumerate() {
            args.extend([Arg::I64(size as i64), Arg::I64(self.bs[0][d] as i64), Arg::I64(self.bs[1][d] as i64)]);
        }
        let tiles = self.nb * self.m.div_ceil(TILE) * self.n.div_ceil(TILE);
        gpu.launch(k, tiles.min(1 << 20) as u32, (TILE * TILE) as u32, 0, &args)
    }
}

/// [`SMALL`], or `KILN_CUDA_SMALL_PRODUCT` when set (to compare).
fn small() -> usize {
    static V: OnceLock<usize> = OnceLock::new();
    *V.get_or_init(|| std::env::var("KILN_CUDA_SMALL_PRODUCT").ok().and_then(|v| v.parse().ok()).unwrap_or(SMALL))
}

/// `a @ b` with broadcast batch dims; `shape` is the output shape
/// (`batch.., m, n`). Both operands have at least 2 dims and one dtype.
pub fn matmul(gpu: &'static Gpu, a: &Data, b: &Data, shape: &[usize]) -> Result<Data> {
    let p = Product::new(a, b, shape)?;
    let c = fresh(gpu, "matmul", p.dt, shape)?;
    if p.nb * p.m * p.n == 0 {
        return Ok(c);
    }
    let pc = dev(&c)?.ptr_at(0);
    let (m, n, kk, nb, nd) = (p.m, p.n, p.kk, p.nb, shape.len());
    if !p.tiled() {
        // Row-major C = A B is column-major C^T = B^T A^T.
        let (la, lb, bs) = (&p.la, &p.lb, &p.bs);
        let a_ = operand(lb.strides[nd - 1], lb.strides[nd - 2], n, kk, p.pb, bs.get(1));
        let b_ = operand(la.strides[nd - 1], la.strides[nd - 2], kk, m, p.pa, bs.first());
        let fits = |v: usize| v <= i32::MAX as usize;
        if let (Some(x), Some(y), true, true) = (a_, b_, p.bd.len() <= 1, fits(m) && fits(n) && fits(kk) && fits(nb)) {
            gpu.gemm(p.dt, (n as i32, m as i32, kk as i32), x, y, (pc, n as i32, (m * n) as i64), nb as i32)?;
            return Ok(c);
        }
    }
    let memo = TILED.get_or_init(Memo::default);
    let key = variant(&[gpu.ordinal as u64, p.dt as u64, p.bd.len() as u64]);
    let k = memo.kernel(gpu, key, || source(p.dt, p.bd.len(), None))?;
    p.launch_tiled(gpu, k, &[Arg::Ptr(pc)])?;
    Ok(c)
}

/// `g` applied to `a @ b` (group input 0) and `inputs` (the group's other
/// inputs, each broadcast to `shape`; those with a literal in `lits`
/// inlined), as one kernel: `Some` of the group's outputs when the product
/// is small and unbatched (see [`SMALL`]), else `None` (the caller runs
/// the product and then the group). A compiled step passes its memo.
pub fn small_with_epilogue(
    gpu: &'static Gpu,
    (a, b): (&Data, &Data),
    shape: &[usize],
    g: &FusedGroup,
    memo: &Memo,
    lits: &[Option<&str>],
    inputs: &[&Data],
) -> Result<Option<Vec<Data>>> {
    let p = Product::new(a, b, shape)?;
    if !p.tiled() || p.nb != 1 || g.inputs[0] != p.dt {
        return Ok(None);
    }
    let outs: Vec<Data> =
        g.outputs.iter().map(|&r| fresh(gpu, "matmul", g.reg_dtype(r), shape)).collect::<Result<_>>()?;
    if p.m * p.n == 0 {
        return Ok(Some(outs));
    }
    let mut pre: Vec<Arg> = outs.iter().map(|o| Ok(Arg::Ptr(dev(o)?.ptr_at(0)))).collect::<Result<_>>()?;
    let nd = shape.len();
    for (k, d) in inputs.iter().enumerate() {
        if lit_of(lits, k + 1).is_none() {
            let o = Operand::of(d, shape)?;
            pre.extend([Arg::Ptr(o.ptr), Arg::I64(o.strides[nd - 2] as i64), Arg::I64(o.strides[nd - 1] as i64)]);
        }
    }
    let e = Epilogue { group: g, lits };
    let key = variant(&[0x7469_6c65, p.dt as u64, p.bd.len() as u64]);
    let k = memo.kernel(gpu, key, || source(p.dt, p.bd.len(), Some(&e)))?;
    p.launch_tiled(gpu, k, &pre)?;
    Ok(Some(outs))
}
