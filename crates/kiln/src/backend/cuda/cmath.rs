//! The `f32` transcendental functions of
//! [`simd_math`](crate::backend::simd_math) printed as CUDA C: a
//! `Vf32` whose every operation appends one statement to a kernel body
//! instead of computing, so the GPU evaluates the CPU's own approximation
//! (the same polynomials, the same range reduction) and both backends
//! agree to the functions' stated ulp bounds. Each operation rounds as its
//! CPU counterpart does: kernels are compiled without contraction of
//! `a * b + c` (`--fmad=false`), `fmaf` is one rounding, division and
//! square root are IEEE, and `1 / x` stands for the CPU's refined
//! reciprocal estimate (within its one-ulp contract).

use std::cell::RefCell;
use std::fmt::Write;

use crate::backend::simd_math::{eval_reduced, Func, Vf32, TRIG_LIMIT};

thread_local! {
    /// The statements printed so far and the next temporary's number.
    static OUT: RefCell<(String, usize)> = const { RefCell::new((String::new(), 0)) };
}

/// A printed `float` temporary.
#[derive(Clone, Copy, Debug)]
pub struct CF(usize);

/// A printed `bool` temporary.
#[derive(Clone, Copy, Debug)]
pub struct CM(usize);

fn emit(ty: &str, expr: std::fmt::Arguments) -> usize {
    OUT.with(|o| {
        let (s, n) = &mut *o.borrow_mut();
        let id = *n;
        *n += 1;
        let _ = writeln!(s, "    {ty} m{id} = {expr};");
        id
    })
}

fn f(e: std::fmt::Arguments) -> CF {
    CF(emit("float", e))
}

fn m(e: std::fmt::Arguments) -> CM {
    CM(emit("bool", e))
}

impl std::fmt::Display for CF {
    fn fmt(&self, fm: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(fm, "m{}", self.0)
    }
}

impl std::fmt::Display for CM {
    fn fmt(&self, fm: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(fm, "m{}", self.0)
    }
}

/// An `f32` literal with its exact bits.
pub fn lit(v: f32) -> String {
    format!("__uint_as_float(0x{:08x}u)", v.to_bits())
}

impl Vf32 for CF {
    type M = CM;
    fn splat(v: f32) -> Self {
        f(format_args!("{}", lit(v)))
    }
    fn add(self, o: Self) -> Self {
        f(format_args!("{self} + {o}"))
    }
    fn sub(self, o: Self) -> Self {
        f(format_args!("{self} - {o}"))
    }
    fn mul(self, o: Self) -> Self {
        f(format_args!("{self} * {o}"))
    }
    fn div(self, o: Self) -> Self {
        f(format_args!("{self} / {o}"))
    }
    fn recip(self) -> Self {
        f(format_args!("1.0f / {self}"))
    }
    fn fma(self, b: Self, c: Self) -> Self {
        f(format_args!("fmaf({self}, {b}, {c})"))
    }
    fn min(self, o: Self) -> Self {
        f(format_args!("fminf({self}, {o})"))
    }
    fn max(self, o: Self) -> Self {
        f(format_args!("fmaxf({self}, {o})"))
    }
    fn round(self) -> Self {
        f(format_args!("rintf({self})"))
    }
    fn floor(self) -> Self {
        f(format_args!("floorf({self})"))
    }
    fn and_bits(self, mask: u32) -> Self {
        f(format_args!("__uint_as_float(__float_as_uint({self}) & 0x{mask:08x}u)"))
    }
    fn xor(self, o: Self) -> Self {
        f(format_args!("__uint_as_float(__float_as_uint({self}) ^ __float_as_uint({o}))"))
    }
    fn iadd(self, k: i32) -> Self {
        f(format_args!("__uint_as_float(__float_as_uint({self}) + 0x{:08x}u)", k as u32))
    }
    fn sra23(self) -> Self {
        f(format_args!("(float)(__float_as_int({self}) >> 23)"))
    }
    fn pow2i(n: Self) -> Self {
        f(format_args!("__int_as_float(((int){n} + 127) << 23)"))
    }
    fn lt(self, o: Self) -> CM {
        m(format_args!("{self} < {o}"))
    }
    fn gt(self, o: Self) -> CM {
        m(format_args!("{self} > {o}"))
    }
    fn ge(self, o: Self) -> CM {
        m(format_args!("{self} >= {o}"))
    }
    fn eq(self, o: Self) -> CM {
        m(format_args!("{self} == {o}"))
    }
    fn is_nan(self) -> CM {
        m(format_args!("{self} != {self}"))
    }
    fn mand(a: CM, b: CM) -> CM {
        m(format_args!("{a} && {b}"))
    }
    fn mor(a: CM, b: CM) -> CM {
        m(format_args!("{a} || {b}"))
    }
    fn select(c: CM, a: Self, b: Self) -> Self {
        f(format_args!("{c} ? {a} : {b}"))
    }
}

/// Statements computing `func(x)` for the `float` expression `x`, and the
/// name of the temporary holding the result. Temporaries are numbered
/// from `*next` (advanced past them), so several calls share one body.
pub fn print(func: Func, x: &str, next: &mut usize) -> (String, String) {
    OUT.with(|o| *o.borrow_mut() = (String::new(), *next));
    let arg = f(format_args!("{x}"));
    let mut r = eval_reduced(func, arg);
    if matches!(func, Func::Sin | Func::Cos) {
        // Lanes beyond the reduction's range (and infinities) in f64.
        let name = if func == Func::Sin { "sin" } else { "cos" };
        r = f(format_args!("fabsf({arg}) > {} ? (float){name}((double){arg}) : {r}", lit(TRIG_LIMIT)));
    }
    OUT.with(|o| {
        let (s, n) = std::mem::take(&mut *o.borrow_mut());
        *next = n;
        (s, r.to_string())
    })
}
