//! The `f32` transcendental functions on the GPU. Where CUDA's own
//! single-precision function (`expf`, `tanhf`, ...; NVRTC declares them
//! without headers) is markedly shorter than the CPU's approximation, kernels
//! call it ([`cuda_function`], with CUDA's documented bound); the others
//! (`expm1`, `sigmoid`, `sin`, `cos`) print the `f32` functions of
//! [`simd_math`](crate::backend::simd_math) as CUDA C: a `Vf32` whose every
//! operation appends one statement to a kernel body instead of computing, so
//! the GPU evaluates the CPU's own approximation (the same polynomials, the
//! same range reduction). Each printed operation rounds as its CPU
//! counterpart does: kernels are compiled without contraction of
//! `a * b + c` (`--fmad=false`), `fmaf` is one rounding, division and
//! square root are IEEE, and `1 / x` stands for the CPU's refined
//! reciprocal estimate (within its one-ulp contract).
//!
//! Why not print every function: the printed approximations are written for
//! 16-lane vectors, where both branches of a function are computed anyway
//! and the range reduction avoids slow instructions; on the GPU, CUDA's
//! functions use its special-function unit (`ex2`, `rcp`, `lg2`) and cost
//! far fewer instructions per element (sm_90 SASS, loop included: `exp`
//! 29 -> 15, `tanh` 59 -> 22, `erf` 59 -> 35, `log` 51 -> 32, `log1p` 71
//! -> 37), which decides whether the GPU's elementwise kernels run at
//! memory speed. Both backends stay within their stated bounds of the true
//! value, so they agree within the sum of the two.

use std::cell::RefCell;
use std::fmt::Write;

use crate::backend::simd_math::{eval_reduced, Func, Table, Vf32, TRIG_LIMIT};

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
    fn lookup(self, table: Table) -> Self {
        // A chain of selects on the index's three bits (no arrays needed).
        let t = table.values();
        let i = format!("(__float_as_uint({self}) & 7u)");
        let mut e = lit(t[7]);
        for k in (0..7).rev() {
            e = format!("({i} == {k}u ? {} : {e})", lit(t[k]));
        }
        f(format_args!("{e}"))
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

/// CUDA's single-precision function kernels call for `func`, and its
/// maximum error in ulps as CUDA documents it (CUDA Math API, "Mathematical
/// Functions" appendix), where kiln uses it; `None` where the GPU prints the
/// CPU's approximation ([`print()`]).
pub fn cuda_function(func: Func) -> Option<(&'static str, f64)> {
    match func {
        Func::Exp => Some(("expf", 2.0)),
        Func::Log => Some(("logf", 1.0)),
        Func::Log1p => Some(("log1pf", 1.0)),
        Func::Tanh => Some(("tanhf", 2.0)),
        Func::Erf => Some(("erff", 2.0)),
        // CUDA's sigmoid would be a composition (its bound a sum), its
        // sinf/cosf carry a long reduction, and its expm1f is barely
        // shorter (and measured 1.34 ulp, above its documented 1).
        Func::Expm1 | Func::Sigmoid | Func::Sin | Func::Cos | Func::Tan | Func::Log2 | Func::Log10 => None,
    }
}

/// The maximum error in ulps of `func` on the GPU: CUDA's documented bound
/// where kernels call its function, else the CPU approximation's.
pub fn bound(func: Func) -> f64 {
    cuda_function(func).map_or_else(|| func.bound(), |(_, b)| b)
}

/// Statements computing `func(x)` for the `float` expression `x` on the
/// GPU, and the expression holding the result: CUDA's function where
/// [`cuda_function`] names one, else the CPU's approximation printed
/// ([`print()`]). Temporaries are numbered from `*next` (advanced past them),
/// so several calls share one body.
pub fn call(func: Func, x: &str, next: &mut usize) -> (String, String) {
    match cuda_function(func) {
        Some((name, _)) => (String::new(), format!("{name}({x})")),
        None => print(func, x, next),
    }
}

/// Statements computing `func(x)` with the CPU's approximation for the
/// `float` expression `x`, and the name of the temporary holding the
/// result. Temporaries are numbered from `*next` (advanced past them), so
/// several calls share one body.
pub fn print(func: Func, x: &str, next: &mut usize) -> (String, String) {
    OUT.with(|o| *o.borrow_mut() = (String::new(), *next));
    let arg = f(format_args!("{x}"));
    let mut r = eval_reduced(func, arg);
    if func.reduces_by_pi() {
        // Lanes beyond the reduction's range (and infinities) in f64.
        let name = match func {
            Func::Sin => "sin",
            Func::Cos => "cos",
            _ => "tan",
        };
        r = f(format_args!("fabsf({arg}) > {} ? (float){name}((double){arg}) : {r}", lit(TRIG_LIMIT)));
    }
    OUT.with(|o| {
        let (s, n) = std::mem::take(&mut *o.borrow_mut());
        *next = n;
        (s, r.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_lookups_select_every_table_entry_by_the_low_bits() {
        // erf runs on CUDA's erff, but its printed form stays valid: each of
        // its seven coefficient lookups is a select over all eight entries.
        let (body, _) = print(Func::Erf, "x", &mut 0);
        let lookups = body.lines().filter(|l| l.contains("& 7u)")).count();
        assert_eq!(lookups, 7, "{body}");
        for t in (0..7).map(crate::backend::simd_math::Table::erf) {
            for v in t.values() {
                assert!(body.contains(&lit(*v)), "entry {v} of {t:?}");
            }
        }
    }
}
