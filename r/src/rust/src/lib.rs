//! The native half of the kiln R package: kiln arrays as R external
//! pointers of class `"mlx"`, and `mlx_compile` over kiln's `compile`.
//!
//! Every function takes and returns `Robj` and converts by hand, so that
//! each failure becomes an R error with kiln's message: [`raise`] unwinds
//! (without the panic hook) to the wrapper that extendr generates, which
//! drops every Rust value on the way and then signals the R error.
//!
//! Layout: an R array of `dim` c(d1, ..., dn) is a kiln array of shape
//! [d1, ..., dn]. R stores it column-major, which is the row-major layout of
//! the reversed shape; so conversion builds the reversed-shape array over
//! R's data and transposes it (a copy into row-major order), and reading
//! transposes back. The R side (`R/*.R`) turns 1-based axes into 0-based ones
//! and R vectors into arrays before calling here.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use extendr_api::prelude::*;
use native::{wrap, Native};

mod native;
use kiln::compile::{Outputs, SliceArgs};
use kiln::ops::random;
use kiln::primitive::{BinaryOp, UnaryOp};
use kiln::{Array, Axes, CompileOptions, Compiled, DType, Operand, Scalar};

/// Ends the current call with an R error carrying `msg`. Unwinds without
/// the panic hook (no "thread panicked" noise) to extendr's wrapper, which
/// turns the payload into the R error.
fn raise(msg: impl Into<String>) -> ! {
    std::panic::resume_unwind(Box::new(msg.into()))
}

/// kiln's error as R users should read it: the tracing error names the R
/// ways to read a value and the R switch to turn compilation off.
fn message(e: &kiln::Error) -> String {
    match e {
        kiln::Error::TracingValue { what, inputs } => tracing_message(what, inputs),
        other => other.to_string(),
    }
}

/// The tracing error for `what` (the R function that tried to read values).
fn tracing_message(what: &str, inputs: &[String]) -> String {
    format!(
        "{what}: cannot read array values while tracing a function compiled by mlx_compile(): \
         this value depends on {}, a placeholder that has a shape and dtype but no data \
         (values exist only when the compiled function runs). Printing, converting to R \
         (as.matrix, as.numeric, as.vector, [[) and control flow on array values (if (x > 0)) \
         are not allowed inside a compiled function. Fix: return the array and read it after \
         the call, or call mlx_disable_compile() (or set MLX_DISABLE_COMPILE=1) to run the \
         function eagerly while debugging.",
        if inputs.is_empty() { "an input".to_string() } else { one_based(inputs).join(", ") }
    )
}

thread_local! {
    /// The formal argument names of the R function being traced on this
    /// thread (for error messages), innermost trace last.
    static TRACED_FORMALS: RefCell<Vec<Vec<String>>> = const { RefCell::new(Vec::new()) };
}

/// kiln names placeholders "argument 0 (f32[3])"; R counts arguments from 1
/// and has names for them: "argument 1 `x` (f32[3])".
fn one_based(inputs: &[String]) -> Vec<String> {
    let formals = TRACED_FORMALS.with(|t| t.borrow().last().cloned()).unwrap_or_default();
    inputs
        .iter()
        .map(|name| {
            let rest = name.strip_prefix("argument ");
            let digits = rest.map(|r| r.chars().take_while(char::is_ascii_digit).collect::<String>());
            match (rest, digits.as_deref().map(str::parse::<usize>)) {
                (Some(r), Some(Ok(i))) => {
                    let formal = match formals.get(i) {
                        Some(f) if f != "..." => format!(" `{f}`"),
                        _ => String::new(),
                    };
                    format!("argument {}{formal}{}", i + 1, &r[digits.as_ref().map_or(0, String::len)..])
                }
                _ => name.clone(),
            }
        })
        .collect()
}

trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for kiln::Result<T> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise(message(&e)))
    }
}

impl<T> OrRaise<T> for extendr_api::Result<T> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise(e.to_string()))
    }
}

/// Bytes of array data handed to R since R last collected garbage.
static HANDED_TO_R: AtomicUsize = AtomicUsize::new(0);

/// Handing R this many bytes of array data starts a young-generation
/// collection (half of what kiln's buffer pool keeps).
const COLLECT_AFTER_BYTES: usize = 256 << 20;

/// Counts `bytes` of array data now owned by R objects, and asks R to
/// collect garbage once they add up to [`COLLECT_AFTER_BYTES`].
///
/// Why: an mlx object is a small R object holding a large buffer that R's
/// collector does not see, so R collects too rarely when arrays are made in
/// a loop (`y <- f(x)`). Dead buffers then stay allocated, kiln's buffer pool
/// gets none back, and every new output is fresh memory whose pages the
/// kernel faults in and zeroes, which costs more than the elementwise work
/// itself. Collecting the young generation runs the dead objects'
/// finalizers, which return their buffers to the pool.
fn handed_to_r(bytes: usize) {
    let total = HANDED_TO_R.fetch_add(bytes, Ordering::Relaxed) + bytes;
    if total >= COLLECT_AFTER_BYTES {
        HANDED_TO_R.store(0, Ordering::Relaxed);
        // A failed collection only means less reuse: ignore it.
        let _ = call!("gc", verbose = false, full = false);
    }
}

fn data_bytes(a: &Array) -> usize {
    if a.is_evaluated() {
        a.size() * a.dtype().size()
    } else {
        0
    }
}

/// The kiln array inside an R object of class `"mlx"`.
fn arr(x: &Robj) -> Array {
    match native::native::<Array>(x) {
        Some(a) => a.clone(),
        None if native::is_dead::<Array>(x) => raise(
            "this mlx array is no longer valid (an mlx array saved to disk and loaded again, \
             or copied between R sessions, has no data: save as.array(x) instead)",
        ),
        None => raise(format!("expected an mlx array, got an R object of type {:?}", x.rtype())),
    }
}

/// The message of a panic payload (a `raise`d message, or a panic's).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => match p.downcast::<&'static str>() {
            Ok(s) => s.to_string(),
            Err(_) => "kiln: internal error (a panic without a message)".to_string(),
        },
    }
}

fn arrays(xs: &Robj) -> Vec<Array> {
    match xs.as_list() {
        Some(l) => l.values().map(|x| arr(&x)).collect(),
        None => raise("expected a list of mlx arrays"),
    }
}

fn dtype(name: &str) -> DType {
    match name {
        "float32" => DType::F32,
        "float64" => DType::F64,
        "float16" => DType::F16,
        "bfloat16" => DType::BF16,
        "int32" => DType::I32,
        "int64" => DType::I64,
        "uint8" => DType::U8,
        "uint32" => DType::U32,
        "bool" => DType::Bool,
        other => raise(format!(
            "unknown dtype \"{other}\": use one of float32, float64, float16, bfloat16, int32, int64, uint8, uint32, bool"
        )),
    }
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F64 => "float64",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::I32 => "int32",
        DType::I64 => "int64",
        DType::U8 => "uint8",
        DType::U32 => "uint32",
        DType::Bool => "bool",
    }
}

fn f64_of(x: &Robj, what: &str) -> f64 {
    match x.as_real().or_else(|| x.as_integer().map(f64::from)) {
        Some(v) if x.len() == 1 => v,
        _ => raise(format!("{what} must be a single number")),
    }
}

fn usize_of(x: &Robj, what: &str) -> usize {
    let v = f64_of(x, what);
    if v < 0.0 || v.fract() != 0.0 || v > 2f64.powi(53) {
        raise(format!("{what} must be a non-negative whole number, got {v}"));
    }
    v as usize
}

/// Whole numbers from an R numeric vector (sizes, axes, indices).
fn ints(x: &Robj, what: &str) -> Vec<i64> {
    if x.is_null() {
        return Vec::new();
    }
    if let Some(s) = x.as_integer_slice() {
        if s.iter().any(|v| v.is_na()) {
            raise(format!("{what} must not contain NA"));
        }
        return s.iter().map(|&v| i64::from(v)).collect();
    }
    match x.as_real_slice() {
        Some(s) => s
            .iter()
            .map(|&v| {
                if v.fract() != 0.0 || !v.is_finite() || v.abs() > 2f64.powi(53) {
                    raise(format!("{what} must hold whole numbers, got {v}"));
                }
                v as i64
            })
            .collect(),
        None => raise(format!("{what} must be a numeric vector")),
    }
}

fn dims(x: &Robj, what: &str) -> Vec<usize> {
    ints(x, what)
        .into_iter()
        .map(|d| usize::try_from(d).unwrap_or_else(|_| raise(format!("{what} must not be negative, got {d}"))))
        .collect()
}

fn axes(x: &Robj) -> Vec<isize> {
    ints(x, "axes").into_iter().map(|a| a as isize).collect()
}

fn int_robj(v: impl IntoIterator<Item = usize>) -> Robj {
    let v: Vec<i32> = v.into_iter().map(|d| i32::try_from(d).unwrap_or(i32::MAX)).collect();
    Robj::from(v)
}

/// An operand of a binary op: an mlx array, or a single R number or logical
/// (weakly typed, as a Rust scalar: `f16 array * 2` stays f16).
fn operand(x: &Robj) -> Operand {
    if x.is_external_pointer() {
        return Operand::Array(arr(x));
    }
    if x.len() == 1 {
        if let Some(s) = x.as_logical_slice() {
            if s[0].is_na() {
                raise("NA cannot be used as an mlx operand");
            }
            return Operand::Scalar(Scalar::Bool(s[0].is_true()));
        }
        if let Some(s) = x.as_integer_slice() {
            if s[0].is_na() {
                raise("NA_integer_ cannot be used as an mlx operand");
            }
            return Operand::Scalar(Scalar::Int(i64::from(s[0])));
        }
        if let Some(s) = x.as_real_slice() {
            return Operand::Scalar(Scalar::Float(s[0]));
        }
    }
    raise("expected an mlx array or a single number")
}

/// An R vector (double, integer or logical) of dimensions `shape`, in R's
/// column-major order, as a row-major array of `dtype` holding its data.
fn from_r(data: &Robj, shape: &[usize], target: DType) -> Array {
    let rev: Vec<usize> = shape.iter().rev().copied().collect();
    let raw = if let Some(s) = data.as_real_slice() {
        Array::from_slice(s, &rev)
    } else if let Some(s) = data.as_integer_slice() {
        Array::from_slice(s, &rev)
    } else if let Some(s) = data.as_logical_slice() {
        if s.iter().any(|v| v.is_na()) {
            raise("logical NA cannot be stored in an mlx array");
        }
        let v: Vec<bool> = s.iter().map(|v| v.is_true()).collect();
        Array::from_vec(v, &rev)
    } else {
        raise(format!("cannot convert an R object of type {:?} to an mlx array", data.rtype()))
    }
    .or_raise();
    let x = if shape.len() < 2 {
        raw
    } else {
        let perm: Vec<isize> = (0..shape.len() as isize).rev().collect();
        kiln::contiguous(&raw.permute(&perm).or_raise()).or_raise()
    };
    let x = x.astype(target).or_raise();
    x.eval().or_raise();
    x
}

#[extendr]
fn kiln_from_r(data: Robj, dim: Robj, dtype_name: &str) -> Robj {
    wrap(from_r(&data, &dims(&dim, "dim"), dtype(dtype_name)))
}

/// An argument of a compiled call: an mlx array, or R data converted as
/// `as_mlx()` does by default (float32; logicals to bool).
fn argument(x: &Robj) -> Array {
    if x.is_external_pointer() {
        return arr(x);
    }
    let shape = match x.get_attrib("dim") {
        Some(d) => dims(&d, "dim"),
        None => vec![x.len()],
    };
    let dt = if x.as_logical_slice().is_some() { DType::Bool } else { DType::F32 };
    from_r(x, &shape, dt)
}

/// The elements of `x` in R's column-major order, as a double, integer or
/// logical vector (int64 and uint32 as doubles). `what` names the R
/// function for the tracing error.
#[extendr]
fn kiln_to_r(x: Robj, what: &str) -> Robj {
    let a = arr(&x);
    let t = if a.ndim() < 2 {
        a.clone()
    } else {
        let perm: Vec<isize> = (0..a.ndim() as isize).rev().collect();
        a.permute(&perm).or_raise()
    };
    let read = |r: kiln::Result<Robj>| match r {
        Err(kiln::Error::TracingValue { inputs, .. }) => raise(tracing_message(what, &inputs)),
        other => other.or_raise(),
    };
    match a.dtype() {
        DType::Bool => read(t.to_vec::<bool>().map(Robj::from)),
        DType::I32 => read(t.to_vec::<i32>().map(Robj::from)),
        DType::U8 => read(t.astype(DType::I32).and_then(|t| t.to_vec::<i32>()).map(Robj::from)),
        DType::F64 => read(t.to_vec::<f64>().map(Robj::from)),
        _ => read(t.astype(DType::F64).and_then(|t| t.to_vec::<f64>()).map(Robj::from)),
    }
}

/// A device by its R name: `"cpu"`, or `"gpu"` (GPU 0).
fn device_of(name: &str) -> kiln::Device {
    match name {
        "cpu" => kiln::Device::Cpu,
        "gpu" => kiln::Device::Cuda(0),
        other => raise(format!("device: \"cpu\" or \"gpu\", not \"{other}\"")),
    }
}

fn device_name(d: kiln::Device) -> &'static str {
    match d {
        kiln::Device::Cpu => "cpu",
        kiln::Device::Cuda(_) => "gpu",
    }
}

/// A GPU error with how to get one: the package is built without the
/// CUDA backend unless `KILN_FEATURES=cuda` was set at install.
fn or_raise_device<T>(r: kiln::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) if !cfg!(feature = "cuda") => raise(format!(
            "{}; this kiln package was built without GPU support: reinstall it with the environment variable KILN_FEATURES=cuda on a machine with an NVIDIA GPU",
            message(&e)
        )),
        Err(e) => raise(message(&e)),
    }
}

#[extendr]
fn kiln_default_device() -> &'static str {
    device_name(kiln::default_device())
}

#[extendr]
fn kiln_set_default_device(name: &str) {
    or_raise_device(kiln::set_default_device(device_of(name)))
}

#[extendr]
fn kiln_device(x: Robj) -> &'static str {
    device_name(arr(&x).device())
}

#[extendr]
fn kiln_to_device(x: Robj, name: &str) -> Robj {
    wrap(or_raise_device(arr(&x).to_device(device_of(name))))
}

#[extendr]
fn kiln_has_gpu() -> bool {
    #[cfg(feature = "cuda")]
    {
        kiln::backend::cuda::available()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

#[extendr]
fn kiln_synchronize(name: &str) {
    or_raise_device(kiln::synchronize(device_of(name)))
}

#[extendr]
fn kiln_shape(x: Robj) -> Robj {
    int_robj(arr(&x).shape().iter().copied())
}

#[extendr]
fn kiln_dtype(x: Robj) -> &'static str {
    dtype_name(arr(&x).dtype())
}

#[extendr]
fn kiln_eval(xs: Robj) {
    let v = arrays(&xs);
    let refs: Vec<&Array> = v.iter().collect();
    kiln::eval(&refs).or_raise();
    handed_to_r(v.iter().map(data_bytes).sum());
}

#[extendr]
fn kiln_astype(x: Robj, dtype_name: &str) -> Robj {
    wrap(arr(&x).astype(dtype(dtype_name)).or_raise())
}

#[extendr]
fn kiln_full(dim: Robj, value: Robj, dtype_name: &str) -> Robj {
    let shape = dims(&dim, "dim");
    let v = match operand(&value) {
        Operand::Scalar(s) => s,
        Operand::Array(_) => raise("mlx_full: value must be a single number"),
    };
    wrap(kiln::full(&shape, v, dtype(dtype_name)).or_raise())
}

#[extendr]
fn kiln_eye(n: Robj, m: Robj, k: Robj, dtype_name: &str) -> Robj {
    let k = f64_of(&k, "k") as isize;
    wrap(kiln::eye(usize_of(&n, "n"), usize_of(&m, "m"), k, dtype(dtype_name)).or_raise())
}

#[extendr]
fn kiln_arange(start: f64, stop: f64, step: f64, dtype_name: &str) -> Robj {
    wrap(kiln::arange(start, stop, step, dtype(dtype_name)).or_raise())
}

#[extendr]
fn kiln_linspace(start: f64, stop: f64, num: Robj, dtype_name: &str) -> Robj {
    wrap(kiln::linspace(start, stop, usize_of(&num, "num"), dtype(dtype_name)).or_raise())
}

#[extendr]
fn kiln_unary(op: &str, x: Robj) -> Robj {
    let u = UnaryOp::from_name(op).unwrap_or_else(|| raise(format!("unknown unary op {op}")));
    wrap(kiln::unary(u, &arr(&x)).or_raise())
}

#[extendr]
fn kiln_binary(op: &str, a: Robj, b: Robj) -> Robj {
    let o = BinaryOp::from_name(op).unwrap_or_else(|| raise(format!("unknown binary op {op}")));
    wrap(kiln::binary(o, operand(&a), operand(&b)).or_raise())
}

#[extendr]
fn kiln_where(cond: Robj, a: Robj, b: Robj) -> Robj {
    wrap(kiln::where_(operand(&cond), operand(&a), operand(&b)).or_raise())
}

#[extendr]
fn kiln_clip(x: Robj, lo: Robj, hi: Robj) -> Robj {
    let lo = (!lo.is_null()).then(|| operand(&lo));
    let hi = (!hi.is_null()).then(|| operand(&hi));
    wrap(kiln::clip(&arr(&x), lo, hi).or_raise())
}

fn axes_of(x: &Robj) -> Axes {
    if x.is_null() {
        Axes::All
    } else {
        Axes::Some(axes(x))
    }
}

/// Reductions: `axes` NULL for all, else 0-based axes.
#[extendr]
fn kiln_reduce(op: &str, x: Robj, ax: Robj, keepdims: bool, ddof: Robj) -> Robj {
    let a = arr(&x);
    let ax = axes_of(&ax);
    let r = match op {
        "sum" => a.sum(ax, keepdims),
        "prod" => a.prod(ax, keepdims),
        "max" => a.max(ax, keepdims),
        "min" => a.min(ax, keepdims),
        "mean" => a.mean(ax, keepdims),
        "all" => a.all(ax, keepdims),
        "any" => a.any(ax, keepdims),
        "logsumexp" => a.logsumexp(ax, keepdims),
        "var" => a.var(ax, keepdims, usize_of(&ddof, "ddof")),
        "std" => a.std(ax, keepdims, usize_of(&ddof, "ddof")),
        other => raise(format!("unknown reduction {other}")),
    };
    wrap(r.or_raise())
}

#[extendr]
fn kiln_argreduce(op: &str, x: Robj, axis: Robj, keepdims: bool) -> Robj {
    let a = arr(&x);
    let axis = (!axis.is_null()).then(|| f64_of(&axis, "axis") as isize);
    let r = if op == "argmax" { a.argmax(axis, keepdims) } else { a.argmin(axis, keepdims) };
    wrap(r.or_raise())
}

#[extendr]
fn kiln_softmax(x: Robj, axis: Robj) -> Robj {
    wrap(arr(&x).softmax(f64_of(&axis, "axis") as isize).or_raise())
}

#[extendr]
fn kiln_matmul(a: Robj, b: Robj) -> Robj {
    wrap(arr(&a).matmul(&arr(&b)).or_raise())
}

#[extendr]
fn kiln_permute(x: Robj, perm: Robj) -> Robj {
    wrap(arr(&x).permute(&axes(&perm)).or_raise())
}

/// Reshape in kiln's (row-major) element order; `shape` may hold one -1.
#[extendr]
fn kiln_reshape(x: Robj, shape: Robj) -> Robj {
    wrap(arr(&x).reshape(&axes(&shape)).or_raise())
}

#[extendr]
fn kiln_squeeze(x: Robj, ax: Robj) -> Robj {
    let ax = (!ax.is_null()).then(|| axes(&ax));
    wrap(kiln::squeeze(&arr(&x), ax.as_deref()).or_raise())
}

#[extendr]
fn kiln_expand_dims(x: Robj, ax: Robj) -> Robj {
    wrap(kiln::expand_dims(&arr(&x), &axes(&ax)).or_raise())
}

#[extendr]
fn kiln_broadcast_to(x: Robj, shape: Robj) -> Robj {
    wrap(arr(&x).broadcast_to(&dims(&shape, "shape")).or_raise())
}

#[extendr]
fn kiln_concatenate(xs: Robj, axis: Robj) -> Robj {
    wrap(kiln::concatenate(&arrays(&xs), f64_of(&axis, "axis") as isize).or_raise())
}

#[extendr]
fn kiln_stack(xs: Robj, axis: Robj) -> Robj {
    wrap(kiln::stack(&arrays(&xs), f64_of(&axis, "axis") as isize).or_raise())
}

/// Splits into `sections` equal parts, or at the 0-based `indices`.
#[extendr]
fn kiln_split(x: Robj, sections: Robj, indices: Robj, axis: Robj) -> Robj {
    let a = arr(&x);
    let axis = f64_of(&axis, "axis") as isize;
    let parts = if indices.is_null() {
        kiln::split(&a, usize_of(&sections, "sections"), axis)
    } else {
        kiln::split_at(&a, &dims(&indices, "indices"), axis)
    };
    List::from_values(parts.or_raise().into_iter().map(wrap)).into()
}

/// A slice along one 0-based axis: `start:stop:step` in Python's form.
#[extendr]
fn kiln_slice_axis(x: Robj, axis: Robj, start: Robj, stop: Robj, step: Robj) -> Robj {
    let opt = |r: &Robj, what: &str| (!r.is_null()).then(|| f64_of(r, what) as isize);
    let a = arr(&x);
    let r = kiln::slice_axis(
        &a,
        f64_of(&axis, "axis") as isize,
        opt(&start, "start"),
        opt(&stop, "stop"),
        f64_of(&step, "step") as isize,
    );
    wrap(r.or_raise())
}

/// Gathers along a 0-based axis at 0-based `indices` (an R integer vector).
#[extendr]
fn kiln_take(x: Robj, indices: Robj, axis: Robj) -> Robj {
    let idx: Vec<i32> = ints(&indices, "indices").into_iter().map(|i| i as i32).collect();
    let n = idx.len();
    let idx = Array::from_vec(idx, &[n]).or_raise();
    wrap(kiln::take(&arr(&x), &idx, f64_of(&axis, "axis") as isize).or_raise())
}

fn key_of(key: &Robj) -> Option<Array> {
    (!key.is_null()).then(|| arr(key))
}

#[extendr]
fn kiln_key(seed: Robj) -> Robj {
    wrap(random::key(f64_of(&seed, "seed") as u64))
}

#[extendr]
fn kiln_key_split(key: Robj, n: Robj) -> Robj {
    let keys = random::split(&arr(&key), usize_of(&n, "num")).or_raise();
    List::from_values(keys.into_iter().map(wrap)).into()
}

#[extendr]
fn kiln_seed(seed: Robj) {
    random::seed(f64_of(&seed, "seed") as u64);
}

#[extendr]
fn kiln_random(kind: &str, dim: Robj, a: f64, b: f64, dtype_name: &str, key: Robj) -> Robj {
    let shape = dims(&dim, "dim");
    let key = key_of(&key);
    let d = dtype(dtype_name);
    let r = match kind {
        "normal" => random::normal(&shape, d, a, b, key.as_ref()),
        "uniform" => random::uniform(a, b, &shape, d, key.as_ref()),
        "bernoulli" => random::bernoulli(a, &shape, key.as_ref()),
        "randint" => random::randint(a as i64, b as i64, &shape, d, key.as_ref()),
        other => raise(format!("unknown distribution {other}")),
    };
    wrap(r.or_raise())
}

/// What an R function returned besides its arrays: a bare mlx array, or a
/// list (with its names).
struct RTree {
    list: bool,
    names: Option<Vec<String>>,
}

/// An R function's result while tracing (or running eagerly).
struct ROut(kiln::Result<(Vec<Array>, Arc<RTree>)>);

impl Outputs for ROut {
    type Value = (Vec<Array>, Arc<RTree>);
    type Tree = Arc<RTree>;
    fn into_arrays(self) -> kiln::Result<(Vec<Array>, Arc<RTree>)> {
        self.0
    }
    fn from_arrays(v: Vec<Array>, tree: &Arc<RTree>) -> Self::Value {
        (v, Arc::clone(tree))
    }
}

type RFn = Box<dyn Fn(&[Array]) -> ROut>;

/// A compiled R function: kiln's compiled function over a Rust closure that
/// calls the R function (through the package's R-side tracer, which turns R
/// errors into values so that they never unwind through Rust).
struct RCompiled {
    compiled: Compiled<RFn, SliceArgs>,
}

impl Native for RCompiled {
    const TAG: &'static std::ffi::CStr = c"kiln_compiled";
    const SLOT: usize = 1;
}

fn function_error(msg: String) -> kiln::Error {
    kiln::Error::Function { msg }
}

/// Converts what the R function returned into arrays and their structure.
fn outputs(value: Robj) -> kiln::Result<(Vec<Array>, Arc<RTree>)> {
    if value.inherits("mlx") {
        return Ok((vec![arr(&value)], Arc::new(RTree { list: false, names: None })));
    }
    let describe = |r: &Robj| match r.class() {
        Some(c) => c.collect::<Vec<_>>().join("/"),
        None => match r.rtype() {
            Rtype::Doubles => "numeric",
            Rtype::Integers => "integer",
            Rtype::Logicals => "logical",
            Rtype::Strings => "character",
            Rtype::Null => "NULL",
            Rtype::Function => "function",
            Rtype::List => "list",
            _ => "an R object",
        }
        .to_string(),
    };
    let Some(list) = value.as_list() else {
        return Err(function_error(format!(
            "mlx_compile: the compiled function must return an mlx array or a list of mlx arrays, \
             it returned an object of class {}",
            describe(&value)
        )));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.values().enumerate() {
        if !v.inherits("mlx") {
            return Err(function_error(format!(
                "mlx_compile: element {} of the returned list is an object of class {}, not an mlx array \
                 (a compiled function must return an mlx array or a list of mlx arrays)",
                i + 1,
                describe(&v)
            )));
        }
        out.push(arr(&v));
    }
    let names = value.names().map(|n| n.map(|s| s.to_string()).collect());
    Ok((out, Arc::new(RTree { list: true, names })))
}

/// Compiles the R function `f`. `tracer(f, args)` is the package's R helper
/// that calls `f` on a list of mlx arrays and returns `list(value)`, or the
/// condition that `f` signalled.
#[extendr]
fn kiln_compile(f: Robj, tracer: Robj, shapeless: bool) -> Robj {
    let (Some(f), Some(tracer)) = (f.as_function(), tracer.as_function()) else {
        raise("mlx_compile: f must be a function");
    };
    let formals: Vec<String> = f.formals().map(|p| p.names().map(str::to_string).collect()).unwrap_or_default();
    let call: RFn = Box::new(move |args: &[Array]| {
        let list: Robj = List::from_values(args.iter().cloned().map(wrap)).into();
        TRACED_FORMALS.with(|t| t.borrow_mut().push(formals.clone()));
        let res = tracer.call(Pairlist::from_pairs([("", Robj::from(f.clone())), ("", list)]));
        TRACED_FORMALS.with(|t| t.borrow_mut().pop());
        let res = match res {
            Ok(r) => r,
            Err(e) => return ROut(Err(function_error(format!("mlx_compile: calling the R function failed: {e}")))),
        };
        if res.inherits("condition") {
            let msg = res
                .as_list()
                .and_then(|l| l.iter().find(|(n, _)| *n == "message").and_then(|(_, v)| v.as_str()))
                .unwrap_or("an R error")
                .to_string();
            return ROut(Err(function_error(msg)));
        }
        let value = res.as_list().and_then(|l| l.values().next()).unwrap_or_else(|| Robj::from(()));
        ROut(outputs(value))
    });
    let options = CompileOptions { shapeless, ..CompileOptions::default() };
    native::to_robj(RCompiled { compiled: kiln::compile_with(call, options) })
}

fn compiled(cf: &Robj) -> &RCompiled {
    native::native(cf).unwrap_or_else(|| raise("expected a compiled function's handle"))
}

#[extendr]
fn kiln_compile_stats(cf: Robj) -> Robj {
    let s = compiled(&cf).compiled.stats();
    let mut r = int_robj([s.traces, s.hits, s.misses, s.entries]);
    r.set_names(["traces", "hits", "misses", "entries"]).or_raise();
    r
}

#[extendr]
fn kiln_compile_explain(cf: Robj, args: Robj) -> String {
    let args = arrays(&args);
    compiled(&cf).compiled.explain(&args[..]).or_raise()
}

#[extendr]
fn kiln_compile_clear(cf: Robj) {
    compiled(&cf).compiled.clear_cache();
}

#[extendr]
fn kiln_set_compile(enabled: bool) {
    if enabled {
        kiln::enable_compile();
    } else {
        kiln::disable_compile();
    }
}

#[extendr]
fn kiln_compile_enabled() -> bool {
    !kiln::compile::compile_disabled()
}

/// Called when the package loads: R frees dead arrays in batches (at each
/// collection), so the C allocator keeps freed memory for the next outputs.
/// It keeps twice what one collection frees: a batch that fills the top of
/// the heap must not reach the trim threshold, or the next batch of outputs
/// faults its pages in again.
#[extendr]
fn kiln_on_load() {
    kiln::retain_freed_memory(2 * COLLECT_AFTER_BYTES);
}

#[extendr]
fn kiln_set_threads(n: Robj) -> Robj {
    kiln::set_threads(usize_of(&n, "n")).or_raise();
    int_robj([kiln::threads()])
}

#[extendr]
fn kiln_matmul_precision() -> &'static str {
    kiln::matmul_precision().name()
}

#[extendr]
fn kiln_set_matmul_precision(name: &str) -> &'static str {
    kiln::set_matmul_precision(kiln::MatmulPrecision::parse(name).or_raise()).name()
}

#[extendr]
fn kiln_release_memory() -> f64 {
    kiln::release_memory() as f64
}

extendr_module! {
    mod kiln;
    fn kiln_on_load;
    fn kiln_set_threads;
    fn kiln_release_memory;
    fn kiln_matmul_precision;
    fn kiln_set_matmul_precision;
    fn kiln_from_r;
    fn kiln_to_r;
    fn kiln_shape;
    fn kiln_default_device;
    fn kiln_set_default_device;
    fn kiln_device;
    fn kiln_to_device;
    fn kiln_has_gpu;
    fn kiln_synchronize;
    fn kiln_dtype;
    fn kiln_eval;
    fn kiln_astype;
    fn kiln_full;
    fn kiln_eye;
    fn kiln_arange;
    fn kiln_linspace;
    fn kiln_unary;
    fn kiln_binary;
    fn kiln_where;
    fn kiln_clip;
    fn kiln_reduce;
    fn kiln_argreduce;
    fn kiln_softmax;
    fn kiln_matmul;
    fn kiln_permute;
    fn kiln_reshape;
    fn kiln_squeeze;
    fn kiln_expand_dims;
    fn kiln_broadcast_to;
    fn kiln_concatenate;
    fn kiln_stack;
    fn kiln_split;
    fn kiln_slice_axis;
    fn kiln_take;
    fn kiln_key;
    fn kiln_key_split;
    fn kiln_seed;
    fn kiln_random;
    fn kiln_compile;
    fn kiln_compile_stats;
    fn kiln_compile_explain;
    fn kiln_compile_clear;
    fn kiln_set_compile;
    fn kiln_compile_enabled;
}
