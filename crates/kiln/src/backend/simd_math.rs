//! Vectorized `f32` transcendental functions for the tile kernels.
//!
//! Each function maps a slice (`out[i] = f(x[i])`, equal lengths, typically a
//! tile of up to [`TILE`](crate::backend::cpu::tile::TILE) elements) with our
//! own polynomial approximations, written once over a small SIMD abstraction
//! (`Vf32`, crate-private: the kernel compiler records through it) and instantiated for three dispatch levels:
//!
//! * [`Level::Avx512`]: AVX-512F, 16 lanes;
//! * [`Level::Avx2`]: AVX2 + FMA, 8 lanes;
//! * [`Level::Scalar`]: portable, one lane (its fused multiply-add is computed
//!   exactly in `f64`, so it follows the same error bounds). On non-x86
//!   targets only this level exists.
//!
//! Besides arithmetic, a function may read a table of eight constants by
//! lane (`Vf32::lookup`, one `vpermps`): a piecewise polynomial then costs
//! one lookup and one FMA per coefficient with no branch or blend, which is
//! how erf is computed.
//!
//! The best level the CPU supports is detected once and cached; [`apply`]
//! runs a function at a forced level (clamped to what the CPU supports), for
//! tests and benchmarks.
//!
//! # Accuracy
//!
//! Maximum errors below are in ulps of the correctly rounded result, measured
//! against `f64` references (`libm::erf` for erf) by dense sweeps and random
//! samples over the whole `f32` range (`tests/simd_math.rs`), identical at
//! every level up to the last bit of rounding:
//!
//! | function | bound | measured | notes |
//! |---|---|---|---|
//! | [`exp_f32`] | 1 ulp | 0.90 | `+inf` above 88.7228, `0` below -103.98, subnormal results rounded once |
//! | [`expm1_f32`] | 1.5 ulp | 1.44 | `-1` below -17.33, `±0` kept |
//! | [`log_f32`] | 1 ulp | 0.80 | subnormal inputs scaled exactly; `log(±0) = -inf`, `log(x<0) = NaN` |
//! | [`log1p_f32`] | 1 ulp | 0.78 | `log1p(-1) = -inf`, `log1p(x<-1) = NaN`, `±0` kept |
//! | [`tanh_f32`] | 2 ulp | 1.37 | odd (`tanh(-0) = -0`), `±1` beyond 9.01 |
//! | [`sigmoid_f32`] | 2 ulp | 1.42 | `1` and `0` (through subnormals) at the ends |
//! | [`erf_f32`] | 2 ulp | 1.05 | eight polynomial pieces on `[0, 4)`, each coefficient one table lookup; odd, `±1` from 3.9192 (1.050 ulp over every `f32` of `[0, 4]`) |
//! | [`log2_f32`], [`log10_f32`] | 1 ulp | 0.86, 0.69 | `log`'s reduction; `ln(m)` kept as a 12-bit head and a tail, so each term of `k log_b(2) + ln(m) log_b(e)` is exact or small; exact at powers of two (`log2`) |
//! | [`sin_f32`], [`cos_f32`] | 1.5 ulp | 1.45 | for `\|x\| <=` [`TRIG_LIMIT`] (65536): three-part Cody-Waite reduction by π/2; larger lanes are recomputed in `f64` (≤ 0.5 ulp, slower); `±inf -> NaN` |
//! | [`pow_f32`] | 1 ulp | 0.76 | `ln\|x\|` as an unrounded pair (12-bit head and tail, `k ln 2` exact), `y ln\|x\|` as a pair by FMA, `exp` of the pair; C99's special cases (`pow(x, ±0) = 1`, `pow(1, y) = 1`, NaN for negative `x` and non-integer `y`, signs for odd integer `y`) |
//! | [`atan2_f32`] | 2 ulp | 1.42 | `atan(min/max)` of the magnitudes, reduced by `π/4` above `tan(π/8)` (the reduced argument as an unrounded pair), a Taylor series, then the octant and quadrant by `π/2 - r` and `π - r` (constants as head and tail); C99's special cases (signed zeros, infinities) |
//! | [`tan_f32`] | 2.5 ulp | 2.05 | sine over cosine of the reduced argument (cosine over minus sine in odd quadrants), one division corrected by its residual; large lanes as for sine |
//!
//! All functions return NaN for NaN inputs. "Bound" is what the tests assert;
//! "measured" is the largest error they found (the same at every level).

use std::sync::OnceLock;

/// A SIMD dispatch level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Portable one-lane code.
    Scalar,
    /// AVX2 + FMA, 8 lanes.
    Avx2,
    /// AVX-512F (+ AVX2/FMA), 16 lanes.
    Avx512,
}

/// A function provided by this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Func {
    /// `e^x`.
    Exp,
    /// `e^x - 1`.
    Expm1,
    /// Natural logarithm.
    Log,
    /// `ln(1 + x)`.
    Log1p,
    /// Hyperbolic tangent.
    Tanh,
    /// Logistic sigmoid `1 / (1 + e^-x)`.
    Sigmoid,
    /// Error function.
    Erf,
    /// Sine.
    Sin,
    /// Cosine.
    Cos,
    /// Base-2 logarithm.
    Log2,
    /// Base-10 logarithm.
    Log10,
    /// Tangent.
    Tan,
}

impl Func {
    /// The function that computes unary op `op`, when it is one of these
    /// (the `f32` kernels of both backends take it from here).
    pub fn of(op: crate::primitive::UnaryOp) -> Option<Func> {
        use crate::primitive::UnaryOp::*;
        Some(match op {
            Exp => Func::Exp,
            Expm1 => Func::Expm1,
            Log => Func::Log,
            Log1p => Func::Log1p,
            Tanh => Func::Tanh,
            Sigmoid => Func::Sigmoid,
            Erf => Func::Erf,
            Sin => Func::Sin,
            Cos => Func::Cos,
            Log2 => Func::Log2,
            Log10 => Func::Log10,
            Tan => Func::Tan,
            _ => return None,
        })
    }

    /// The maximum error in ulps of this module's `f32` function, as the
    /// table above states it (what `tests/simd_math.rs` asserts).
    pub fn bound(self) -> f64 {
        match self {
            Func::Exp | Func::Log | Func::Log1p | Func::Log2 | Func::Log10 => 1.0,
            Func::Expm1 | Func::Sin | Func::Cos => 1.5,
            Func::Tanh | Func::Sigmoid | Func::Erf => 2.0,
            Func::Tan => 2.5,
        }
    }

    /// Whether lanes beyond [`TRIG_LIMIT`] (and infinities) are recomputed
    /// in `f64` after the vector code ([`fix_big_lanes`]): the functions
    /// that reduce their argument by `π/2`.
    pub fn reduces_by_pi(self) -> bool {
        matches!(self, Func::Sin | Func::Cos | Func::Tan)
    }

    /// Every function, for tests and benchmarks.
    pub const ALL: [Func; 12] = [
        Func::Exp,
        Func::Expm1,
        Func::Log,
        Func::Log1p,
        Func::Tanh,
        Func::Sigmoid,
        Func::Erf,
        Func::Sin,
        Func::Cos,
        Func::Log2,
        Func::Log10,
        Func::Tan,
    ];
}

/// The best level this CPU supports (detected once), capped by the
/// environment variable `KILN_SIMD` when it is set to `avx2` or `scalar`:
/// every kernel then runs as on a CPU without AVX-512 (or without AVX2 and
/// FMA), code generation included, so that the paths of older CPUs can be
/// tested and compared on any machine. Other values are ignored.
pub fn detected_level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("KILN_SIMD").as_deref() {
            Ok("avx2") => Level::Avx2,
            Ok("scalar") => Level::Scalar,
            _ => Level::Avx512,
        };
        detect().min(cap)
    })
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn detect() -> Level {
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Level::Avx512
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Level::Avx2
    } else {
        Level::Scalar
    }
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
fn detect() -> Level {
    Level::Scalar
}

/// The levels this CPU can run, lowest first.
pub fn available_levels() -> Vec<Level> {
    [Level::Scalar, Level::Avx2, Level::Avx512].into_iter().filter(|l| *l <= detected_level()).collect()
}

/// Runs `f` on `x` into `out` at `level`, clamped to [`detected_level`]
/// (asking for an unsupported level runs the best supported one).
///
/// # Panics
/// If `x` and `out` differ in length.
pub fn apply(f: Func, level: Level, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "simd_math: input and output lengths differ");
    let level = level.min(detected_level());
    match level {
        Level::Scalar => run_scalar(f, x, out),
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: `level <= detected_level()`, so AVX2 and FMA are available.
        Level::Avx2 => unsafe { x86::run_avx2(f, x, out) },
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: `level <= detected_level()`, so AVX-512F, AVX2 and FMA are available.
        Level::Avx512 => unsafe { x86::run_avx512(f, x, out) },
        #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
        _ => run_scalar(f, x, out),
    }
    fix_big_lanes(f, x, out);
}

macro_rules! entry {
    ($($name:ident => $f:ident, $doc:literal;)*) => {$(
        #[doc = $doc]
        ///
        /// Runs at [`detected_level`]; see the module docs for the error bound.
        ///
        /// # Panics
        /// If `x` and `out` differ in length.
        pub fn $name(x: &[f32], out: &mut [f32]) {
            apply(Func::$f, detected_level(), x, out)
        }
    )*};
}

entry! {
    exp_f32 => Exp, "`out[i] = e^x[i]`.";
    expm1_f32 => Expm1, "`out[i] = e^x[i] - 1`, accurate near 0.";
    log_f32 => Log, "`out[i] = ln(x[i])`.";
    log1p_f32 => Log1p, "`out[i] = ln(1 + x[i])`, accurate near 0.";
    tanh_f32 => Tanh, "`out[i] = tanh(x[i])`.";
    sigmoid_f32 => Sigmoid, "`out[i] = 1 / (1 + e^-x[i])`.";
    erf_f32 => Erf, "`out[i] = erf(x[i])`.";
    sin_f32 => Sin, "`out[i] = sin(x[i])`.";
    cos_f32 => Cos, "`out[i] = cos(x[i])`.";
    log2_f32 => Log2, "`out[i] = log2(x[i])`.";
    log10_f32 => Log10, "`out[i] = log10(x[i])`.";
    tan_f32 => Tan, "`out[i] = tan(x[i])`.";
}

/// A two-operand function of this module (see [`map2_at`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Func2 {
    /// `a^b`.
    Pow,
    /// `atan2(a, b)`.
    Atan2,
}

/// `out[i] = f(a[i], b[i])`, where `a` and `b` each hold `out.len()`
/// values or one value used at every position, at `level` clamped to
/// [`detected_level`].
///
/// # Panics
/// If `a` or `b` holds neither `out.len()` values nor one.
fn map2_at(f: Func2, level: Level, a: &[f32], b: &[f32], out: &mut [f32]) {
    let n = out.len();
    assert!(
        (a.len() == n || a.len() == 1) && (b.len() == n || b.len() == 1),
        "simd_math: {f:?} operands of lengths {} and {} for {n} outputs",
        a.len(),
        b.len()
    );
    match level.min(detected_level()) {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: the level is at most the detected one: AVX2 and FMA are available.
        Level::Avx2 => unsafe { x86::map2_avx2(f, a, b, out) },
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: as above, AVX-512F, AVX2 and FMA are available.
        Level::Avx512 => unsafe { x86::map2_avx512(f, a, b, out) },
        _ => map2_generic::<f32>(f, a, b, out),
    }
}

/// `out[i] = x[i]^y[i]` (C99 `powf` semantics) at `level` clamped to
/// [`detected_level`], where `x` and `y` each hold `out.len()` values or
/// one value used at every position (see the module docs for the error
/// bound).
///
/// # Panics
/// If `x` or `y` holds neither `out.len()` values nor one.
pub fn pow_at(level: Level, x: &[f32], y: &[f32], out: &mut [f32]) {
    map2_at(Func2::Pow, level, x, y, out)
}

/// `out[i] = atan2(y[i], x[i])` (C99 semantics) at `level` clamped to
/// [`detected_level`], where `y` and `x` each hold `out.len()` values or
/// one value used at every position (see the module docs for the error
/// bound).
///
/// # Panics
/// If `y` or `x` holds neither `out.len()` values nor one.
pub fn atan2_at(level: Level, y: &[f32], x: &[f32], out: &mut [f32]) {
    map2_at(Func2::Atan2, level, y, x, out)
}

/// `out[i] = atan2(y[i], x[i])` at [`detected_level`] (see [`atan2_at`]).
pub fn atan2_f32(y: &[f32], x: &[f32], out: &mut [f32]) {
    atan2_at(detected_level(), y, x, out)
}

/// `out[i] = x[i]^y[i]` at [`detected_level`] (see [`pow_at`]).
pub fn pow_f32(x: &[f32], y: &[f32], out: &mut [f32]) {
    pow_at(detected_level(), x, y, out)
}

/// `out[i] = $k(a[i], b[i])` with the vector type `$v`, `a` and `b` each
/// of `out`'s length or one value (splat); the tail through buffers. A
/// macro, as [`drive!`]: the kernel is inlined into the caller compiled
/// with the target features.
macro_rules! drive2 {
    ($v:ty, $a:expr, $b:expr, $out:expr, $k:ident) => {{
        let (a, b, out): (&[f32], &[f32], &mut [f32]) = ($a, $b, $out);
        let n = out.len();
        let lanes = |s: &[f32], at: usize, buf: &mut [f32; 16]| -> $v {
            if s.len() == 1 {
                <$v>::splat(s[0])
            } else if at + <$v>::N <= n {
                <$v>::load(&s[at..at + <$v>::N])
            } else {
                buf[..n - at].copy_from_slice(&s[at..n]);
                <$v>::load(&buf[..])
            }
        };
        let (mut ba, mut bb) = ([1.0f32; 16], [1.0f32; 16]);
        let mut at = 0;
        while at < n {
            let r = $k::<$v>(lanes(a, at, &mut ba), lanes(b, at, &mut bb));
            if at + <$v>::N <= n {
                r.store(&mut out[at..at + <$v>::N]);
            } else {
                let mut o = [0.0f32; 16];
                r.store(&mut o[..]);
                out[at..].copy_from_slice(&o[..n - at]);
            }
            at += <$v>::N;
        }
    }};
}

/// [`map2_at`] with the vector type `V`.
#[inline(always)]
fn map2_generic<V: VMem>(f: Func2, a: &[f32], b: &[f32], out: &mut [f32]) {
    match f {
        Func2::Pow => drive2!(V, a, b, out, pow_v),
        Func2::Atan2 => drive2!(V, a, b, out, atan2_v),
    }
}

/// `sum(e^(x[i] - m))` for a finite `m` at least every `x[i]` (none NaN):
/// the terms of a log-sum-exp block shifted by its maximum. Each term is
/// `exp_term`'s, within about two ulps of `e^(x[i] - m)` and exactly 1 for
/// `x[i] = m`; where the CPU lacks AVX-512 a term below `e^-87` counts as
/// `e^-87` (under the last bit of a sum that holds `m`'s own term). As the
/// shifted values are at most 0 and not NaN, neither `exp`'s upper clamp
/// nor its NaN pass-through is needed. The terms are summed in one pass (no
/// intermediate slice) into two vectors of lane accumulators
/// (lane `l` of vector `j` sums elements `l + N j`, `l + N (j + 2)`, ...),
/// combined pairwise at the end: one accumulator made each vector's sum
/// wait for the last one's. Outside its
/// precondition the result is meaningless but safe. Used by the
/// `logsumexp` and `sumexp` folds' leaves.
pub fn sum_exp_below_f32(x: &[f32], m: f32) -> f32 {
    let level = detected_level();
    match level {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: `level` is the detected one, so AVX-512F, AVX2 and FMA are available.
        Level::Avx512 => unsafe { x86::sum_exp_below_avx512(x, m) },
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: as above, AVX2 and FMA are available.
        Level::Avx2 => unsafe { x86::sum_exp_below_avx2(x, m) },
        _ => sum_exp_below_generic::<f32>(x, m),
    }
}

/// The maximum of `x` when every element is finite, else `None` (an empty
/// `x` has none): the first pass of a log-sum-exp leaf, whose
/// non-finite elements (NaN, infinities) take the exact scalar path.
/// Four vectors of lane maxima and one lane check (`x * 0` added up, NaN
/// once any element is not finite), so each vector costs a maximum and a
/// multiply-add.
pub fn max_if_finite_f32(x: &[f32]) -> Option<f32> {
    let level = detected_level();
    match level {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: `level` is the detected one, so AVX-512F, AVX2 and FMA are available.
        Level::Avx512 => unsafe { x86::max_if_finite_avx512(x) },
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: as above, AVX2 and FMA are available.
        Level::Avx2 => unsafe { x86::max_if_finite_avx2(x) },
        _ => max_if_finite_generic::<f32>(x),
    }
}

/// Log-sum-exp leaves of adjacent columns read in place: over `rows` rows
/// (row `j` at `x[j * stride..]`), each column `c < m.len()` gets its
/// maximum `m[c]` and the sum `s[c]` of `exp(x - m[c])` down it. The width
/// `m.len()` (= `s.len()`) is a multiple of [`COLUMNS`]; `finite[g]` tells
/// whether every element of the group of [`COLUMNS`] columns from
/// `g * COLUMNS` is finite (the caller folds the other groups exactly, and
/// ignores their `m` and `s`). The vector lanes run along the row, so a
/// column's elements, a row apart, need no copying.
///
/// Each pass streams the rows one after the other, `m.len()` contiguous
/// elements of each, with the columns' accumulators in `m` and `s` (in
/// L1): the second pass finds the rows in cache when the caller keeps
/// `rows * m.len()` elements within L2. (Leaves of 16 columns walked down
/// the rows were bound by load latency: a line per row, rows 16 KiB apart
/// on their own pages, all in one L1 set.) Every column folds its rows in
/// order, a maximum and then a sum in one lane each, so the width does not
/// change a bit of the result.
pub fn lse_columns_f32(x: &[f32], stride: usize, rows: usize, m: &mut [f32], s: &mut [f32], finite: &mut [bool]) {
    let w = m.len();
    assert!(
        w.is_multiple_of(COLUMNS) && s.len() == w && finite.len() == w / COLUMNS,
        "lse_columns: widths of m, s and finite disagree"
    );
    assert!(rows > 0 && x.len() >= (rows - 1) * stride + w, "lse_columns: rows outside x");
    let level = detected_level();
    match level {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: `level` is the detected one, so AVX-512F, AVX2 and FMA are available.
        Level::Avx512 => unsafe { x86::lse_columns_avx512(x, stride, rows, m, s, finite) },
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: as above, AVX2 and FMA are available.
        Level::Avx2 => unsafe { x86::lse_columns_avx2(x, stride, rows, m, s, finite) },
        _ => lse_columns_generic::<f32>(x, stride, rows, m, s, finite),
    }
}

/// How far [`lse_columns_f32`]'s first pass prefetches ahead: as far as the
/// rows that hold this many bytes of its columns.
const PREFETCH_BYTES: usize = 8192;

/// Columns of one group of [`lse_columns_f32`]'s leaves (the unit of its
/// finiteness check).
pub const COLUMNS: usize = 16;

/// [`lse_columns_f32`] with the vector type `V` (the caller checked the
/// widths and bounds).
#[inline(always)]
fn lse_columns_generic<V: VMem>(
    x: &[f32],
    stride: usize,
    rows: usize,
    m: &mut [f32],
    s: &mut [f32],
    finite: &mut [bool],
) {
    let (w, zero) = (m.len(), V::splat(0.0));
    // First pass: lane maxima in `m`, and in `s` a check that turns NaN
    // once any element is not finite.
    m.fill(f32::NEG_INFINITY);
    s.fill(0.0);
    // The rows `ahead` rows on are prefetched, a line per group: the
    // hardware's prefetchers do not follow a walk that leaves each page
    // after a few lines.
    let ahead = PREFETCH_BYTES.div_ceil(w * 4) * stride * 4;
    by_four_rows(x, stride, rows, w, |rs| {
        for g in (0..w).step_by(COLUMNS) {
            for r in rs {
                crate::backend::cpu::stream::prefetch_ahead(r[g..].as_ptr().cast(), ahead);
            }
            for c in (g..g + COLUMNS).step_by(V::N) {
                let (mut mx, mut check) = (V::load(&m[c..]), V::load(&s[c..]));
                for r in rs {
                    let v = V::load(&r[c..]);
                    check = v.fma(zero, check);
                    mx = mx.max(v);
                }
                check.store(&mut s[c..]);
                mx.store(&mut m[c..]);
            }
        }
    });
    for (f, check) in finite.iter_mut().zip(s.chunks_exact_mut(COLUMNS)) {
        *f = !check.iter().any(|c| c.is_nan());
        check.fill(0.0);
    }
    // Second pass: the sums, each column's rows added in order, for the
    // groups whose elements are all finite (the others' maxima may be
    // infinite or NaN).
    by_four_rows(x, stride, rows, w, |rs| {
        for (g, _) in finite.iter().enumerate().filter(|(_, &f)| f) {
            for c in (g * COLUMNS..(g + 1) * COLUMNS).step_by(V::N) {
                let (mx, mut sum) = (V::load(&m[c..]), V::load(&s[c..]));
                for r in rs {
                    sum = sum.add(exp_term(V::load(&r[c..]), mx));
                }
                sum.store(&mut s[c..]);
            }
        }
    });
}

/// Calls `f` with the rows of `x` (`w` elements of each, row `j` at
/// `x[j * stride..]`) four at a time in order, fewer at the end: a pass
/// over columns then loads and stores their accumulators once per four rows.
#[inline(always)]
fn by_four_rows<'a>(x: &'a [f32], stride: usize, rows: usize, w: usize, mut f: impl FnMut(&[&'a [f32]])) {
    let mut j = 0;
    while j < rows {
        let k = (rows - j).min(4);
        let rs: [&[f32]; 4] = std::array::from_fn(|i| &x[(j + i.min(k - 1)) * stride..][..w]);
        f(&rs[..k]);
        j += k;
    }
}

/// Lanes of `x` and its tail, padded with `pad`, folded into the four
/// accumulators `acc` by `step` (vector `j` of each group of four into
/// `acc[j]`; the tail, padded, into `acc[0]`).
#[inline(always)]
fn fold4<V: VMem, A: Copy>(x: &[f32], acc: &mut [A; 4], pad: f32, mut step: impl FnMut(A, V) -> A) {
    let mut quads = x.chunks_exact(4 * V::N);
    for q in &mut quads {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = step(*a, V::load(&q[j * V::N..]));
        }
    }
    let mut vecs = quads.remainder().chunks_exact(V::N);
    for (j, c) in (&mut vecs).enumerate() {
        acc[j] = step(acc[j], V::load(c));
    }
    let rest = vecs.remainder();
    if !rest.is_empty() {
        let mut buf = [pad; 16];
        buf[..rest.len()].copy_from_slice(rest);
        acc[0] = step(acc[0], V::load(&buf));
    }
}

/// The lanes of `v` (at most 16).
#[inline(always)]
fn lanes_of<V: VMem>(v: V) -> [f32; 16] {
    let mut lanes = [0.0f32; 16];
    v.store(&mut lanes);
    lanes
}

/// [`max_if_finite_f32`] with the vector type `V`.
#[inline(always)]
fn max_if_finite_generic<V: VMem>(x: &[f32]) -> Option<f32> {
    if x.is_empty() {
        return None;
    }
    let zero = V::splat(0.0);
    // Each vector of maxima carries its own check in the other half of its
    // pair, so four chains of multiply-adds run side by side (one chain
    // waited on a multiply-add's latency per vector: a leaf's first pass,
    // reading from memory, took 0.6x the time of its `exp` pass).
    let mut acc = [(V::splat(f32::NEG_INFINITY), zero); 4];
    // The tail is padded with `x[0]`: a maximum and a check of the
    // elements themselves.
    fold4(x, &mut acc, x[0], |(a, check), v| (a.max(v), v.fma(zero, check)));
    let [(m0, c0), (m1, c1), (m2, c2), (m3, c3)] = acc;
    let lanes = lanes_of(m0.max(m1).max(m2.max(m3)));
    let checked = lanes_of(c0.add(c1).add(c2.add(c3)));
    if checked[..V::N].iter().any(|c| c.is_nan()) {
        return None;
    }
    Some(lanes[..V::N].iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)))
}

/// [`sum_exp_below_f32`] with the vector type `V`: the exponentials of
/// each vector are added to four accumulator vectors in turn (see there),
/// and the lanes are summed pairwise at the end.
#[inline(always)]
fn sum_exp_below_generic<V: VMem>(x: &[f32], m: f32) -> f32 {
    let term = exp_term::<V>;
    let mv = V::splat(m);
    let mut acc = [V::splat(0.0); SUM_EXP_ACC];
    let mut groups = x.chunks_exact(SUM_EXP_ACC * V::N);
    for q in &mut groups {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = a.add(term(V::load(&q[j * V::N..]), mv));
        }
    }
    let mut vecs = groups.remainder().chunks_exact(V::N);
    for (j, c) in (&mut vecs).enumerate() {
        acc[j] = acc[j].add(term(V::load(c), mv));
    }
    let mut lanes = lanes_of(acc[0].add(acc[1]));
    let rest = vecs.remainder();
    if !rest.is_empty() {
        let mut buf = [0.0f32; 16];
        buf[..rest.len()].copy_from_slice(rest);
        let tail = lanes_of(term(V::load(&buf), mv));
        for (l, e) in lanes.iter_mut().zip(&tail[..rest.len()]) {
            *l += e;
        }
    }
    let mut w = V::N.next_power_of_two() / 2;
    while w > 0 {
        for l in 0..w {
            lanes[l] += lanes[l + w];
        }
        w /= 2;
    }
    lanes[0]
}

/// Vectors of lane accumulators in [`sum_exp_below_f32`]: two keep AVX2's
/// sixteen registers enough for two terms in flight and the constants (four
/// spilled, and took 1.05-1.25x the time).
const SUM_EXP_ACC: usize = 2;

/// Largest `|x|` for which the vector sine/cosine reduction is used.
pub const TRIG_LIMIT: f32 = 65536.0;

/// For the functions that reduce by `π/2` ([`Func::reduces_by_pi`]):
/// recomputes the lanes of `out` whose `x` is beyond [`TRIG_LIMIT`] (and
/// infinities) in `f64`, rounded once to `f32` (≤ 0.5 ulp). Other
/// functions' results are left as they are. The interpreter calls it after
/// the vector code, and generated kernels call it (through
/// `backend::cpu::jit::fix_lanes_sysv`) when a vector has such a lane, so
/// both compute the same bits.
pub fn fix_big_lanes(f: Func, x: &[f32], out: &mut [f32]) {
    if !f.reduces_by_pi() || !x.iter().any(|v| v.abs() > TRIG_LIMIT) {
        return;
    }
    for (o, &v) in out.iter_mut().zip(x) {
        if v.abs() > TRIG_LIMIT {
            let d = v as f64;
            *o = match f {
                Func::Sin => d.sin(),
                Func::Cos => d.cos(),
                _ => d.tan(),
            } as f32;
        }
    }
}

fn run_scalar(f: Func, x: &[f32], out: &mut [f32]) {
    run_generic::<f32>(f, x, out)
}

/// Maps full vectors with `$k::<$v>`, then the tail through a zero-padded
/// buffer. A macro rather than a function taking `impl Fn`: the kernel must
/// be inlined into the caller compiled with the target features, and a call
/// through `Fn::call` would not be.
macro_rules! drive {
    ($v:ty, $x:expr, $out:expr, $k:ident) => {{
        let n = $x.len().min($out.len());
        let (xs, os) = (&$x[..n], &mut $out[..n]);
        let mut xc = xs.chunks_exact(<$v>::N);
        let mut oc = os.chunks_exact_mut(<$v>::N);
        for (a, o) in (&mut xc).zip(&mut oc) {
            $k::<$v>(<$v>::load(a)).store(o);
        }
        let (xt, ot) = (xc.remainder(), oc.into_remainder());
        if !xt.is_empty() {
            let mut buf = [0.0f32; 16];
            buf[..xt.len()].copy_from_slice(xt);
            $k::<$v>(<$v>::load(&buf)).store(&mut buf);
            ot.copy_from_slice(&buf[..xt.len()]);
        }
    }};
}

/// `f(x)` in the operations of `V`, for the functions computed entirely in
/// vector code: sine, cosine and tangent also recompute large lanes in
/// `f64` (see [`TRIG_LIMIT`]), so they are `None`.
#[inline(always)]
pub(crate) fn eval<V: Vf32>(f: Func, x: V) -> Option<V> {
    Some(match f {
        Func::Exp => exp_v(x),
        Func::Expm1 => expm1_v(x),
        Func::Log => log_v(x),
        Func::Log1p => log1p_v(x),
        Func::Tanh => tanh_v(x),
        Func::Sigmoid => sigmoid_v(x),
        Func::Erf => erf_v(x),
        Func::Log2 => log2_v(x),
        Func::Log10 => log10_v(x),
        Func::Sin | Func::Cos | Func::Tan => return None,
    })
}

/// `f(x)` in the operations of `V` for every function, sine, cosine and
/// tangent included: their vector path, exact to the stated bound for
/// `|x| <=` [`TRIG_LIMIT`] (a caller recomputes larger lanes in `f64`, as
/// the CUDA backend's printed kernels and the generated CPU kernels do).
#[inline(always)]
pub(crate) fn eval_reduced<V: Vf32>(f: Func, x: V) -> V {
    match f {
        Func::Sin => sin_v(x),
        Func::Cos => cos_v(x),
        Func::Tan => tan_v(x),
        _ => eval(f, x).expect("every other function is computed in vector code"),
    }
}

/// Runs `f` with the vector type `V` (inlined into each level's entry).
#[inline(always)]
fn run_generic<V: VMem>(f: Func, x: &[f32], out: &mut [f32]) {
    match f {
        Func::Exp => drive!(V, x, out, exp_v),
        Func::Expm1 => drive!(V, x, out, expm1_v),
        Func::Log => drive!(V, x, out, log_v),
        Func::Log1p => drive!(V, x, out, log1p_v),
        Func::Tanh => drive!(V, x, out, tanh_v),
        Func::Sigmoid => drive!(V, x, out, sigmoid_v),
        Func::Erf => drive!(V, x, out, erf_v),
        Func::Sin => drive!(V, x, out, sin_v),
        Func::Cos => drive!(V, x, out, cos_v),
        Func::Log2 => drive!(V, x, out, log2_v),
        Func::Log10 => drive!(V, x, out, log10_v),
        Func::Tan => drive!(V, x, out, tan_v),
    }
}

/// The operations the kernels are written in. Implementations are private
/// except the code generator's ([`jit`](crate::backend::cpu::jit)), which
/// records each operation instead of computing it; the x86 ones may only be
/// used inside functions compiled with their target features, which are
/// called only after runtime detection.
pub(crate) trait Vf32: Copy {
    /// A lane mask.
    type M: Copy;
    /// Whether [`Vf32::scale_wide`] is one instruction (AVX-512's
    /// `vscalefps`) rather than two multiplications.
    const SCALES_AT_ONCE: bool = false;
    fn splat(v: f32) -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    /// `1 / self` within one ulp, for finite normal `self` (a hardware
    /// estimate refined by Newton steps: much cheaper than a division).
    fn recip(self) -> Self;
    /// `self * b + c`, rounded once.
    fn fma(self, b: Self, c: Self) -> Self;
    /// Minimum (either operand for NaN; callers fix NaN lanes).
    fn min(self, o: Self) -> Self;
    /// Maximum (either operand for NaN; callers fix NaN lanes).
    fn max(self, o: Self) -> Self;
    /// Round to nearest, ties to even.
    fn round(self) -> Self;
    fn floor(self) -> Self;
    /// Bitwise and with a constant.
    fn and_bits(self, m: u32) -> Self;
    /// Bitwise xor.
    fn xor(self, o: Self) -> Self;
    /// Integer add on the bit patterns.
    fn iadd(self, k: i32) -> Self;
    /// `(bits as i32 >> 23) as f32`.
    fn sra23(self) -> Self;
    /// `2^n` for integer-valued `n` in `[-126, 127]`.
    fn pow2i(n: Self) -> Self;
    /// `self * 2^n` for integer `n` in `[-126, 127]` (so `2^n` is a normal
    /// number), given `j = n + EXP_MAGIC` as [`reduce_normal`] makes it:
    /// the low bits of `j`'s mantissa, `n + 127`, shifted into the exponent
    /// field and one multiplication where the level has the shift;
    /// `vscalefps` on AVX-512; one multiplication by [`Vf32::pow2i`] else.
    #[inline(always)]
    fn scale_normal(self, j: Self, n: Self) -> Self {
        let _ = j;
        self.mul(Self::pow2i(n))
    }
    /// Entry `b & 7` of `table`, where `b` is each lane's bit pattern (one
    /// permute instruction: `vpermps`).
    fn lookup(self, table: Table) -> Self;
    /// `self * 2^n` for `self` in `[0.5, 2]` and integer `n` in `[-150,
    /// 128]`, rounded once (so a subnormal result is rounded once, and a
    /// large one overflows), given `j = n + EXP_MAGIC` as
    /// [`reduce_normal`] makes it: [`scale_split`] where the level shifts
    /// bits, `vscalefps` on AVX-512, [`scale2_halves`] of `n` else (the
    /// GPU's printed code).
    #[inline(always)]
    fn scale_wide(self, j: Self, n: Self) -> Self {
        let _ = j;
        scale2_halves(self, n)
    }
    fn lt(self, o: Self) -> Self::M;
    fn gt(self, o: Self) -> Self::M;
    fn ge(self, o: Self) -> Self::M;
    fn eq(self, o: Self) -> Self::M;
    /// Lanes that are NaN.
    fn is_nan(self) -> Self::M;
    fn mand(a: Self::M, b: Self::M) -> Self::M;
    fn mor(a: Self::M, b: Self::M) -> Self::M;
    /// `m ? a : b` per lane.
    fn select(m: Self::M, a: Self, b: Self) -> Self;

    #[inline(always)]
    fn c(v: f32) -> Self {
        Self::splat(v)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        self.and_bits(0x7fff_ffff)
    }
    /// The sign bit alone.
    #[inline(always)]
    fn sign(self) -> Self {
        self.and_bits(0x8000_0000)
    }
    /// Horner evaluation, highest coefficient first.
    #[inline(always)]
    fn poly(self, cs: &[f32]) -> Self {
        let mut p = Self::splat(cs[0]);
        for &c in &cs[1..] {
            p = p.fma(self, Self::splat(c));
        }
        p
    }
}

/// [`Vf32::scale_wide`] from `n` alone: `x * 2^n` as two multiplications
/// by `2^floor(n/2)` and `2^(n - floor(n/2))`, since `2^n` may itself be
/// out of range (eleven operations; the GPU's printed code).
#[inline(always)]
pub(crate) fn scale2_halves<V: Vf32>(x: V, n: V) -> V {
    let n1 = n.mul(V::c(0.5)).floor();
    x.mul(V::pow2i(n1)).mul(V::pow2i(n.sub(n1)))
}

/// [`Vf32::scale_wide`] in two exact steps where the level shifts bits:
/// `x * 2^(n - k)` by [`Vf32::scale_normal`], with `k = -64` for a
/// negative `n` and `64` otherwise, so that `n - k` is in `[-86, 64]`
/// (`2^(n - k)` normal, and `x * 2^(n - k)` exact for `x` in `[0.5, 2]`),
/// then `* 2^k`, the one rounding. Seven operations on AVX2, where the
/// halves took eleven: `exp`'s scaling was two fifths of its work.
#[inline(always)]
pub(crate) fn scale_split<V: Vf32>(x: V, j: V, n: V) -> V {
    let neg = n.lt(V::c(0.0));
    let k = V::select(neg, V::c(-64.0), V::c(64.0));
    let far = V::select(neg, V::c(SPLIT_DOWN), V::c(SPLIT_UP));
    x.scale_normal(j.sub(k), n.sub(k)).mul(far)
}

/// `2^-64` and `2^64`, [`scale_split`]'s second factors.
pub(crate) const SPLIT_DOWN: f32 = 1.0 / 18_446_744_073_709_551_616.0;
pub(crate) const SPLIT_UP: f32 = 18_446_744_073_709_551_616.0;

/// Vectors held in registers and moved to and from slices (every [`Vf32`]
/// but the code generator's).
trait VMem: Vf32 {
    /// Lanes.
    const N: usize;
    /// Loads the first `N` elements of `s` (`s.len() >= N`).
    fn load(s: &[f32]) -> Self;
    /// Stores into the first `N` elements of `s` (`s.len() >= N`).
    fn store(self, s: &mut [f32]);
}

impl VMem for f32 {
    const N: usize = 1;
    #[inline(always)]
    fn load(s: &[f32]) -> Self {
        s[0]
    }
    #[inline(always)]
    fn store(self, s: &mut [f32]) {
        s[0] = self;
    }
}

impl Vf32 for f32 {
    type M = bool;
    #[inline(always)]
    fn splat(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self - o
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self * o
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        self / o
    }
    #[inline(always)]
    fn recip(self) -> Self {
        1.0 / self
    }
    #[inline(always)]
    fn fma(self, b: Self, c: Self) -> Self {
        // The product of two f32 is exact in f64; the sum is rounded to f64
        // then f32, which agrees with a true fused multiply-add except in
        // rare double-rounding ties (harmless for these kernels).
        (self as f64 * b as f64 + c as f64) as f32
    }
    #[inline(always)]
    fn min(self, o: Self) -> Self {
        if self < o {
            self
        } else {
            o
        }
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        if self > o {
            self
        } else {
            o
        }
    }
    #[inline(always)]
    fn round(self) -> Self {
        self.round_ties_even()
    }
    #[inline(always)]
    fn floor(self) -> Self {
        f32::floor(self)
    }
    #[inline(always)]
    fn and_bits(self, m: u32) -> Self {
        f32::from_bits(self.to_bits() & m)
    }
    #[inline(always)]
    fn xor(self, o: Self) -> Self {
        f32::from_bits(self.to_bits() ^ o.to_bits())
    }
    #[inline(always)]
    fn iadd(self, k: i32) -> Self {
        f32::from_bits((self.to_bits() as i32).wrapping_add(k) as u32)
    }
    #[inline(always)]
    fn sra23(self) -> Self {
        ((self.to_bits() as i32) >> 23) as f32
    }
    #[inline(always)]
    fn pow2i(n: Self) -> Self {
        f32::from_bits(((n as i32 + 127) << 23) as u32)
    }
    #[inline(always)]
    fn scale_normal(self, j: Self, _: Self) -> Self {
        self * f32::from_bits(j.to_bits() << 23)
    }
    #[inline(always)]
    fn scale_wide(self, j: Self, n: Self) -> Self {
        scale_split(self, j, n)
    }
    #[inline(always)]
    fn lookup(self, table: Table) -> Self {
        table.values()[(self.to_bits() & 7) as usize]
    }
    #[inline(always)]
    fn lt(self, o: Self) -> bool {
        self < o
    }
    #[inline(always)]
    fn gt(self, o: Self) -> bool {
        self > o
    }
    #[inline(always)]
    fn ge(self, o: Self) -> bool {
        self >= o
    }
    #[inline(always)]
    fn eq(self, o: Self) -> bool {
        self == o
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        self.is_nan()
    }
    #[inline(always)]
    fn mand(a: bool, b: bool) -> bool {
        a & b
    }
    #[inline(always)]
    fn mor(a: bool, b: bool) -> bool {
        a | b
    }
    #[inline(always)]
    fn select(m: bool, a: Self, b: Self) -> Self {
        if m {
            a
        } else {
            b
        }
    }
}

// ---- kernels -------------------------------------------------------------

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split for Cody-Waite reduction: `f32(ln 2)` and the remainder.
const LN2_C1: f32 = std::f32::consts::LN_2;
const LN2_C2: f32 = -1.904_654_2e-9;
/// `ln 2` split with a short head so `k * LN2_HI` is exact for `|k| < 2^9`.
const LN2_HI: f32 = 0.693_138_1;
const LN2_LO: f32 = 9.058_001_5e-6;
/// Bits of `sqrt(1/2)`: mantissas are reduced into `[sqrt(1/2), sqrt(2))`.
const SQRT_HALF_BITS: i32 = 0x3f35_04f3;
/// Taylor coefficients of `e^r` (highest first), `|r| <= ln2/2`.
const EXP_P: [f32; 8] = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];
/// Taylor coefficients of `(e^r - 1 - r) / r^2` (highest first).
const EXPM1_Q: [f32; 7] = [1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5];
/// `2 atanh(s) = 2s + s * R(s^2)`: `R(z) = z * (2/3 + 2/5 z + 2/7 z^2 + 2/9 z^3)`.
const LOG_R: [f32; 4] = [2.0 / 9.0, 2.0 / 7.0, 2.0 / 5.0, 2.0 / 3.0];
/// `(tanh(x)/x - 1) / x^2` in `t = x^2` on `[0, 0.3025]` (Chebyshev fit).
const TANH_SMALL: [f32; 6] = [0.002_526_390_6, -0.008_526_333, 0.021_818_45, -0.053_964_7, 0.133_333_23, -0.333_333_34];
/// A table of eight `f32` entries that the vector functions read by lane
/// (one `vpermps`; the code generator records it as a node of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Table(u8);

impl Table {
    /// The coefficients of `erf_v`'s eight polynomials, highest first:
    /// `ERF[j]` holds coefficient `6 - j` of each piece.
    const ERF: [Table; 7] = [Table(0), Table(1), Table(2), Table(3), Table(4), Table(5), Table(6)];

    /// Table `j` of erf's coefficients (`j < 7`, highest first; see
    /// [`erf_f32`]).
    pub fn erf(j: usize) -> Table {
        Table::ERF[j]
    }

    /// The table's entries.
    pub fn values(self) -> &'static [f32; 8] {
        &TABLES[self.0 as usize]
    }
}

/// Every lookup table (see [`Table`]). The first seven: `erf(a)` on `a in
/// [i/2, (i+1)/2)` (`erf(a) / a - 1` for `i = 0`) as a polynomial of degree 6
/// in `t = 2a - i - 1/2`, piece `i` in entry `i`, fitted in `f64` (least
/// squares relative to the function at 400 Chebyshev nodes, each
/// coefficient rounded to `f32` before the higher ones are refitted to what
/// is left); on `[-1/2, 1/2]` each piece is within 0.53 ulp of the
/// function (1.8 for piece 0, whose values, below 0.13, are added to 1).
#[rustfmt::skip]
static TABLES: [[f32; 8]; 7] = [
    [-0.00027087948, -0.00043182087, 0.00031495432, 0.00013273046, -5.4379118e-05, -3.148525e-05, -1.085172e-05, 2.8852553e-06],
    [-0.001092683, -0.0016013064, -0.0014616427, 0.00018651696, 0.00033065805, 8.8307585e-05, 1.03942375e-05, 6.314144e-07],
    [0.005559679, 0.009423996, -0.00038026145, -0.0030027914, -0.0011882255, -0.0002012334, -1.5009357e-05, -2.2653394e-06],
    [0.013086434, 0.003340696, 0.02094034, 0.011272219, 0.0027158733, 0.0003447758, 2.4402414e-05, 9.88966e-07],
    [-0.08383734, -0.120550305, -0.073913306, -0.023089528, -0.004018138, -0.00040336355, -2.4076862e-05, -6.510488e-07],
    [-0.09058274, 0.3214658, 0.118260615, 0.026387418, 0.00357115, 0.00029314714, 1.4596823e-05, 4.4094332e-07],
    [0.10530555, 0.71115565, 0.92290014, 0.9866717, 0.9985373, 0.9998994, 0.9999957, 0.9999999],
];
/// Smallest `f32` whose erf rounds to 1.
const ERF_ONE: f32 = 3.919_206;
/// `1/ln 2` as a 12-bit head and a tail (for `log2`).
const IVLN2_HI: f32 = f32::from_bits(0x3fb8_b000);
const IVLN2_LO: f32 = f32::from_bits(0xb938_9ad4);
/// `1/ln 10` and `log10(2)` as 12-bit heads and tails (for `log10`).
const IVLN10_HI: f32 = f32::from_bits(0x3ede_6000);
const IVLN10_LO: f32 = f32::from_bits(0xb804_ead9);
const LOG10_2_HI: f32 = f32::from_bits(0x3e9a_2080);
const LOG10_2_LO: f32 = f32::from_bits(0x3554_27db);
/// `2/3` as a head and a tail (for [`ln_pair`]).
const TWO_THIRDS_HI: f32 = 0.666_666_7;
const TWO_THIRDS_LO: f32 = -1.986_821_5e-8;
/// `(2 atanh(s) - 2s - 2s^3/3) / s^5` in `z = s^2` (highest first).
const LN_PAIR_R: [f32; 5] = [2.0 / 13.0, 2.0 / 11.0, 2.0 / 9.0, 2.0 / 7.0, 2.0 / 5.0];
/// `(e^r - 1 - r) / r^2` (highest first), `|r| <= ln2/2`, one term past
/// [`EXP_P`]'s for [`exp_pair`].
const EXP_Q2: [f32; 7] = [1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5];
/// `π`, `π/2` and `π/4` as `f32` heads and tails (for [`atan2_f32`]).
const PI_HI: f32 = std::f32::consts::PI;
const PI_LO: f32 = -8.742_278e-8;
const PIO2_HI: f32 = std::f32::consts::FRAC_PI_2;
const PIO2_LO: f32 = -4.371_139e-8;
const PIO4_HI: f32 = std::f32::consts::FRAC_PI_4;
const PIO4_LO: f32 = -2.185_569_5e-8;
/// Taylor coefficients of `(atan(u) - u) / u^3` in `z = u^2` (highest
/// first), `|u| <= tan(π/8)`.
const ATAN_P: [f32; 10] = [
    1.0 / 21.0,
    -1.0 / 19.0,
    1.0 / 17.0,
    -1.0 / 15.0,
    1.0 / 13.0,
    -1.0 / 11.0,
    1.0 / 9.0,
    -1.0 / 7.0,
    1.0 / 5.0,
    -1.0 / 3.0,
];
/// `π/2` in three parts for the sine/cosine reduction.
const PIO2_1: f32 = 1.570_796_4;
const PIO2_2: f32 = -4.371_139e-8;
const PIO2_3: f32 = -1.715_124_5e-15;
/// Taylor coefficients of `(sin(r) - r) / r^3` in `z = r^2`, `|r| <= π/4`.
const SIN_P: [f32; 4] = [1.0 / 362_880.0, -1.0 / 5040.0, 1.0 / 120.0, -1.0 / 6.0];
/// Taylor coefficients of `(cos(r) - 1) / r^2` in `z = r^2`.
const COS_P: [f32; 5] = [-1.0 / 3_628_800.0, 1.0 / 40320.0, -1.0 / 720.0, 1.0 / 24.0, -0.5];

/// `NaN` lanes of `x` pass through.
#[inline(always)]
fn keep_nan<V: Vf32>(x: V, r: V) -> V {
    V::select(x.is_nan(), x, r)
}

/// `e^r` for `|r| <= ~0.35` and `2^n` scaling split in two factors, so that
/// `n` in `[-150, 128]` scales without intermediate overflow and results in
/// the subnormal range are rounded once.
#[inline(always)]
fn exp_core<V: Vf32>(x: V) -> V {
    exp_in_range(x.max(V::c(-104.0)).min(V::c(89.0)))
}

/// [`exp_core`] of an `x` already in `[-104, 89]`, without the clamp (two
/// operations of a kernel, for callers whose argument is in range by
/// construction wherever its result is used).
#[inline(always)]
fn exp_in_range<V: Vf32>(x: V) -> V {
    let (r, j, n) = reduce_normal(x);
    r.poly(&EXP_P).scale_wide(j, n)
}

/// The terms of a sum of exponentials below its largest, `e^(x - m)` for
/// `x <= m`, within about two ulps: the reduction of [`exp_in_range`], then
/// [`EXP_TERM_P`] evaluated in Estrin's order (three multiply-adds deep
/// instead of seven). Where one instruction scales
/// ([`Vf32::SCALES_AT_ONCE`]) the argument is `max(x - m, -104)` and the
/// scaling exact. Elsewhere it is at least [`SUM_EXP_FLOOR`], so that
/// `2^n` is a normal number whose bits come from the same addition that
/// rounds `n` ([`EXP_MAGIC`]), and scales in one multiplication: a term
/// below `e^-87` (`-inf` included) counts as `e^-87`, 1.6e-38, which in a
/// sum that holds its largest element's term, 1, is far below the last bit
/// (a million of them add under 2e-32). Each operation less is a cycle of a core's
/// multiply pipes per vector in the `logsumexp` folds, where these terms
/// are most of the work.
#[inline(always)]
fn exp_term<V: Vf32>(x: V, m: V) -> V {
    let d = x.sub(m);
    if V::SCALES_AT_ONCE {
        let (r, j, n) = reduce_normal(d.max(V::c(-104.0)));
        return exp_term_poly(r).scale_wide(j, n);
    }
    let (r, j, n) = reduce_normal(d.max(V::c(SUM_EXP_FLOOR)));
    exp_term_poly(r).scale_normal(j, n)
}

/// `e^x` for `x` in `[-87, 88]`, where `2^n` is a normal number: as
/// [`exp_in_range`] (the same polynomial), but scaled in one
/// multiplication ([`Vf32::scale_normal`]) instead of
/// [`Vf32::scale_wide`]'s two below AVX-512 (the `tanh` of `gelu_tanh`
/// spends most of its time in `exp`).
#[inline(always)]
fn exp_normal<V: Vf32>(x: V) -> V {
    let (r, j, n) = reduce_normal(x);
    r.poly(&EXP_P).scale_normal(j, n)
}

/// The Cody-Waite reduction of an `x` in `[-104, 89]`: `r = x - n ln 2`,
/// `j` and `n`, with `n` rounded by adding [`EXP_MAGIC`] (`j`), whose sum
/// also holds `2^n`'s exponent bits ([`Vf32::scale_normal`]). (`n` is the
/// nearest integer to `x log2 e` unrounded, which may differ from that of
/// the rounded product by one at a tie; `r` is then just past `ln2 / 2`,
/// where the polynomials are as accurate.)
#[inline(always)]
fn reduce_normal<V: Vf32>(x: V) -> (V, V, V) {
    let j = x.fma(V::c(LOG2E), V::c(EXP_MAGIC));
    let n = j.sub(V::c(EXP_MAGIC));
    let r = n.fma(V::c(-LN2_C1), x);
    (n.fma(V::c(-LN2_C2), r), j, n)
}

/// [`EXP_TERM_P`] at `r`, in Estrin's order: `1 + ((r + c2 r^2 + c3 r^3)
/// + r^4 (c4 + c5 r + c6 r^2))`, the 1 added last so that the rest, below
/// 0.42, rounds on a finer grid; exactly 1 at `r = 0`.
#[inline(always)]
fn exp_term_poly<V: Vf32>(r: V) -> V {
    let c = |i: usize| V::c(EXP_TERM_P[i]);
    let r2 = r.mul(r);
    let r4 = r2.mul(r2);
    let lo = c(3).fma(r, c(2)).fma(r2, r);
    let hi = c(6).fma(r2, c(5).fma(r, c(4)));
    hi.fma(r4, lo).add(V::c(1.0))
}

/// Coefficients of `e^r` for `|r| <= ln2/2` (lowest first; the first two,
/// both 1, are [`exp_term_poly`]'s `1 + r`): the degree-6 polynomial of least relative error 2.0e-9
/// (a Lawson fit on 4001 Chebyshev points), against 5.2e-9 for Taylor's of
/// degree 7, one multiply-add more.
const EXP_TERM_P: [f32; 7] = [1.0, 1.0, 0.499_999_94, 0.166_664_32, 0.041_667_96, 0.008_374_135, 0.001_384_612_8];

/// Added to `x log2(e)` (at most `2^22` in magnitude), rounds it to an
/// integer `n` and leaves `n + 127` in the low bits of the mantissa
/// ([`Vf32::scale_normal`]): `1.5 * 2^23 + 127`.
const EXP_MAGIC: f32 = 12_583_039.0;

/// The least argument of [`exp_term`]: `2^n` stays normal (`n >= -126`).
const SUM_EXP_FLOOR: f32 = -87.0;

#[inline(always)]
fn exp_v<V: Vf32>(x: V) -> V {
    keep_nan(x, exp_core(x))
}

#[inline(always)]
fn expm1_v<V: Vf32>(x: V) -> V {
    let xc = x.max(V::c(-25.0)).min(V::c(89.5));
    let n = xc.mul(V::c(LOG2E)).round();
    let r = n.fma(V::c(-LN2_C1), xc);
    let r = n.fma(V::c(-LN2_C2), r);
    let e = r.mul(r).fma(r.poly(&EXPM1_Q), r);
    // n <= 24: 2^n - 1 is exact and 2^n * e + (2^n - 1) rounds once.
    let t = V::pow2i(n.min(V::c(24.0)));
    let small = t.fma(e, t.sub(V::c(1.0)));
    // n > 24: the -1 is below half an ulp; scale 1 + e in two steps.
    let n1 = n.mul(V::c(0.5)).floor();
    let t1 = V::pow2i(n1);
    let big = t1.fma(e, t1).mul(V::pow2i(n.sub(n1)));
    let r = V::select(n.gt(V::c(24.0)), big, small);
    let r = V::select(x.eq(V::c(0.0)), x, r);
    keep_nan(x, r)
}

/// `ln(1 + f)` for `f` in `[sqrt(1/2) - 1, sqrt(2) - 1]` plus `k ln 2 + c`,
/// with `c` a small correction term.
#[inline(always)]
fn log_tail<V: Vf32>(f: V, k: V, c: V) -> V {
    let s = f.div(V::c(2.0).add(f));
    let z = s.mul(s);
    let r = z.mul(z.poly(&LOG_R));
    let hfsq = V::c(0.5).mul(f).mul(f);
    let lo = s.fma(hfsq.add(r), k.fma(V::c(LN2_LO), c));
    k.fma(V::c(LN2_HI), f.sub(hfsq.sub(lo)))
}

/// Splits a positive normal `x` as `2^k * m`, `m` in `[sqrt(1/2), sqrt(2))`; returns `(m - 1, k)`.
#[inline(always)]
fn split_mantissa<V: Vf32>(x: V) -> (V, V) {
    let ix = x.iadd(-SQRT_HALF_BITS);
    let k = ix.sra23();
    let m = ix.and_bits(0x007f_ffff).iadd(SQRT_HALF_BITS);
    (m.sub(V::c(1.0)), k)
}

/// Splits a positive `x` (subnormals included) as `2^k * (1 + f)`, `1 + f`
/// in `[sqrt(1/2), sqrt(2))`; returns `(f, k)`.
#[inline(always)]
fn log_split<V: Vf32>(x: V) -> (V, V) {
    let sub = x.lt(V::c(f32::MIN_POSITIVE));
    let xs = V::select(sub, x.mul(V::c(8_388_608.0)), x);
    let (f, k) = split_mantissa(xs);
    (f, k.sub(V::select(sub, V::c(23.0), V::c(0.0))))
}

/// A logarithm's special values: `+inf` at `+inf`, `-inf` at `±0`, NaN
/// below 0 and at NaN; `r` elsewhere.
#[inline(always)]
fn log_specials<V: Vf32>(x: V, r: V) -> V {
    let r = V::select(x.eq(V::c(f32::INFINITY)), x, r);
    let r = V::select(x.eq(V::c(0.0)), V::c(f32::NEG_INFINITY), r);
    let r = V::select(x.lt(V::c(0.0)), V::c(f32::NAN), r);
    keep_nan(x, r)
}

#[inline(always)]
fn log_v<V: Vf32>(x: V) -> V {
    let (f, k) = log_split(x);
    log_specials(x, log_tail(f, k, V::c(0.0)))
}

/// `ln(1 + f)` for `f` as [`log_tail`] takes it, as `hi + lo`: `hi` has 12
/// significant bits (so its products with the 12-bit heads of the
/// constants below are exact) and `lo` is small.
#[inline(always)]
fn ln_hi_lo<V: Vf32>(f: V) -> (V, V) {
    let s = f.div(V::c(2.0).add(f));
    let z = s.mul(s);
    let r = z.mul(z.poly(&LOG_R));
    let hfsq = V::c(0.5).mul(f).mul(f);
    let hi = f.sub(hfsq).and_bits(0xffff_f000);
    let lo = s.fma(hfsq.add(r), f.sub(hi).sub(hfsq));
    (hi, lo)
}

/// `a + b` and its rounding error (Knuth's TwoSum, any magnitudes).
#[inline(always)]
fn two_sum<V: Vf32>(a: V, b: V) -> (V, V) {
    let s = a.add(b);
    let bb = s.sub(a);
    (s, a.sub(s.sub(bb)).add(b.sub(bb)))
}

/// `hi + lo` where `|hi| >= |w|` or `hi == 0` is added to `w` with the
/// rounding error of the head kept (Fast2Sum): `(head, tail)`.
#[inline(always)]
fn fast_two_sum<V: Vf32>(a: V, b: V) -> (V, V) {
    let w = a.add(b);
    (w, a.sub(w).add(b))
}

#[inline(always)]
fn log2_v<V: Vf32>(x: V) -> V {
    let (f, k) = log_split(x);
    let (hi, lo) = ln_hi_lo(f);
    // k + (hi + lo) / ln 2, 1/ln 2 = IVLN2_HI + IVLN2_LO; hi * IVLN2_HI is exact.
    let small = hi.add(lo).mul(V::c(IVLN2_LO)).add(lo.mul(V::c(IVLN2_HI)));
    let (w, e) = fast_two_sum(k, hi.mul(V::c(IVLN2_HI)));
    log_specials(x, w.add(small.add(e)))
}

#[inline(always)]
fn log10_v<V: Vf32>(x: V) -> V {
    let (f, k) = log_split(x);
    let (hi, lo) = ln_hi_lo(f);
    // k log10(2) + (hi + lo) log10(e), each constant as a 12-bit head and a
    // tail: k * LOG10_2_HI and hi * IVLN10_HI are exact.
    let small = k.mul(V::c(LOG10_2_LO)).add(hi.add(lo).mul(V::c(IVLN10_LO))).add(lo.mul(V::c(IVLN10_HI)));
    let (w, e) = fast_two_sum(k.mul(V::c(LOG10_2_HI)), hi.mul(V::c(IVLN10_HI)));
    log_specials(x, w.add(small.add(e)))
}

#[inline(always)]
fn log1p_v<V: Vf32>(x: V) -> V {
    let one = V::c(1.0);
    let u = one.add(x);
    let (fb, kb) = split_mantissa(u);
    // ln(1 + x) = ln(u) + c/u with c the rounding error of u = 1 + x.
    let cb = V::select(kb.ge(V::c(2.0)), one.sub(u.sub(x)), x.sub(u.sub(one))).div(u);
    let small = V::mand(x.gt(V::c(-0.292_893_23)), x.lt(V::c(0.414_213_57)));
    let zero = V::c(0.0);
    let f = V::select(small, x, fb);
    let k = V::select(small, zero, kb);
    let c = V::select(small, zero, cb);
    let r = log_tail(f, k, c);
    let r = V::select(x.eq(V::c(f32::INFINITY)), x, r);
    let r = V::select(x.eq(V::c(-1.0)), V::c(f32::NEG_INFINITY), r);
    let r = V::select(x.lt(V::c(-1.0)), V::c(f32::NAN), r);
    let r = V::select(x.eq(zero), x, r);
    keep_nan(x, r)
}

/// One Newton step for `1 / d` from the estimate `r`: doubles its correct bits.
#[inline(always)]
pub(crate) fn newton_recip<V: Vf32>(d: V, r: V) -> V {
    let e = d.xor(V::c(-0.0)).fma(r, V::c(1.0));
    r.fma(e, r)
}

#[inline(always)]
fn tanh_v<V: Vf32>(x: V) -> V {
    let a = x.abs();
    let z = a.mul(a);
    let small = a.mul(z).fma(z.poly(&TANH_SMALL), a);
    // 2 * min(|x|, 10) is in [0, 20] (a NaN |x| gives 10: NaN is restored below).
    let e = exp_normal(a.min(V::c(10.0)).mul(V::c(2.0)));
    let big = V::c(1.0).sub(V::c(2.0).mul(e.add(V::c(1.0)).recip()));
    let r = V::select(a.lt(V::c(0.55)), small, big);
    keep_nan(x, r.xor(x.sign()))
}

#[inline(always)]
fn sigmoid_v<V: Vf32>(x: V) -> V {
    // num / (1 + e) with e = exp(-|x|), num = e for x < 0 and 1 otherwise;
    // the rounding errors of 1 + e and of the division are corrected once.
    let one = V::c(1.0);
    let e = exp_core(x.abs().xor(V::c(-0.0)));
    let num = V::select(x.lt(V::c(0.0)), e, one);
    let d = one.add(e);
    let dlo = one.sub(d).add(e);
    let r = d.recip();
    let q = num.mul(r);
    let res = q.fma(d.xor(V::c(-0.0)), num).sub(q.mul(dlo));
    keep_nan(x, q.add(res.mul(r)))
}

#[inline(always)]
fn erf_v<V: Vf32>(x: V) -> V {
    // erf(a) = q_i(t) on eight pieces of [0, 4) (a q_0(t) + a on the
    // first, for relative accuracy near 0): s = 2a, i = floor(s), t = s - (i +
    // 1/2) in [-1/2, 1/2) (exact for i >= 1; for i = 0 its rounding moves
    // q by far less than an ulp, q' being ~0 near 0). The index rides in
    // the low bits of i + 2^23, and each coefficient of q_i is one table
    // lookup.
    let a = x.abs();
    let s = a.add(a);
    let i = s.floor();
    let t = s.sub(i.add(V::c(0.5)));
    let idx = i.add(V::c(8_388_608.0));
    let mut q = idx.lookup(Table::ERF[0]);
    for &c in &Table::ERF[1..] {
        q = q.fma(t, idx.lookup(c));
    }
    // a q_0 + a, rounded once, on the first piece; q_i * 1 + 0 on the others.
    let first = a.lt(V::c(0.5));
    let r = q.fma(V::select(first, a, V::c(1.0)), V::select(first, a, V::c(0.0)));
    // Lanes from ERF_ONE (infinities, and the wrapped indices of 4 and
    // above) are 1.
    let r = V::select(a.ge(V::c(ERF_ONE)), V::c(1.0), r);
    keep_nan(x, r.xor(x.sign()))
}

/// Reduces `|x|` by `π/2`: returns `(sin r, cos r, q mod 4)`.
#[inline(always)]
fn sincos_core<V: Vf32>(a: V) -> (V, V, V) {
    let (r, m) = reduce_pio2(a);
    let z = r.mul(r);
    let s = r.mul(z).fma(z.poly(&SIN_P), r);
    let c = z.fma(z.poly(&COS_P), V::c(1.0));
    (s, c, m)
}

/// `|x|` reduced by `π/2`: `(r, q mod 4)` with `|r| <= π/4`.
#[inline(always)]
fn reduce_pio2<V: Vf32>(a: V) -> (V, V) {
    let q = a.mul(V::c(std::f32::consts::FRAC_2_PI)).round();
    let r = q.fma(V::c(-PIO2_1), a);
    let r = q.fma(V::c(-PIO2_2), r);
    let r = q.fma(V::c(-PIO2_3), r);
    let m = q.sub(V::c(4.0).mul(q.mul(V::c(0.25)).floor()));
    (r, m)
}

#[inline(always)]
fn sin_v<V: Vf32>(x: V) -> V {
    let (s, c, m) = sincos_core(x.abs());
    let swap = V::mor(m.eq(V::c(1.0)), m.eq(V::c(3.0)));
    let v = V::select(swap, c, s);
    let neg = m.ge(V::c(2.0));
    let v = V::select(neg, v.xor(V::c(-0.0)), v);
    keep_nan(x, v.xor(x.sign()))
}

/// `ln(1 + f)` for `f` as [`log_tail`] takes it, as an unrounded pair
/// `(h, l)` accurate to about 2^-40 relative: `2 atanh(s)`, `s = f / (2 +
/// f)` kept as a pair, with its leading terms `2s` and `2s^3/3` computed
/// exactly by FMA and the rest (below 1e-4 of the result) in `f32`.
#[inline(always)]
fn ln_pair<V: Vf32>(f: V) -> (V, V) {
    let neg = |v: V| v.xor(V::c(-0.0));
    // d = 2 + f exactly; s = f / d = sh + sl.
    let (dh, dl) = fast_two_sum(V::c(2.0), f);
    let sh = f.div(dh);
    let sl = neg(sh).fma(dh, f).sub(sh.mul(dl)).div(dh);
    // sh^3 = ch + cl, through z = sh^2 = zh + zl.
    let zh = sh.mul(sh);
    let zl = sh.fma(sh, neg(zh));
    let ch = sh.mul(zh);
    let cl = sh.fma(zh, neg(ch)).add(sh.mul(zl));
    // (2/3) s^3 = th + tl (with s^3's first-order term in sl).
    let th = V::c(TWO_THIRDS_HI).mul(ch);
    let tl = V::c(TWO_THIRDS_HI)
        .fma(ch, neg(th))
        .add(V::c(TWO_THIRDS_HI).mul(cl))
        .add(V::c(TWO_THIRDS_LO).mul(ch))
        .add(V::c(2.0).mul(zh).mul(sl));
    // 2 s^5 (1/5 + s^2/7 + ...).
    let rest = ch.mul(zh).mul(zh.poly(&LN_PAIR_R));
    let (uh, ul) = fast_two_sum(sh.mul(V::c(2.0)), th);
    (uh, ul.add(sl.mul(V::c(2.0)).add(tl).add(rest)))
}

/// `e^(h + l)` for a small correction `l` of `h` (`|l|` below an ulp of
/// `h`), rounded about once: `h - n ln 2` is exact (`LN2_HI`'s short
/// head), and `1 + r` is added last. `h` beyond `[-104, 89]` gives 0 or
/// `+inf` (a NaN `h` gives 0: callers restore NaN), and `l` is clamped, so
/// an infinite or NaN `l` is harmless.
#[inline(always)]
fn exp_pair<V: Vf32>(h: V, l: V) -> V {
    let h = h.max(V::c(-104.0)).min(V::c(89.0));
    let l = l.max(V::c(-1e-4)).min(V::c(1e-4));
    let j = h.fma(V::c(LOG2E), V::c(EXP_MAGIC));
    let n = j.sub(V::c(EXP_MAGIC));
    let rh = n.fma(V::c(-LN2_HI), h);
    let rl = n.fma(V::c(-LN2_LO), l);
    let r = rh.add(rl);
    let q = r.mul(r).mul(r.poly(&EXP_Q2));
    let (ah, al) = fast_two_sum(V::c(1.0), rh);
    ah.add(al.add(rl.add(q))).scale_wide(j, n)
}

/// `x^y` with C99's special cases (see the module docs).
#[inline(always)]
pub(crate) fn pow_v<V: Vf32>(x: V, y: V) -> V {
    let inf = V::c(f32::INFINITY);
    let one = V::c(1.0);
    let neg = |v: V| v.xor(V::c(-0.0));
    let ax = x.abs();
    // ln|x| = lh + ll: k ln 2 (LN2_HI's short head makes k * LN2_HI
    // exact) plus ln(1 + f) as a pair.
    let (f, k) = log_split(ax);
    let (hi, lo) = ln_pair(f);
    let (s, e) = fast_two_sum(k.mul(V::c(LN2_HI)), hi);
    let (lh, ll) = fast_two_sum(s, e.add(lo).add(k.mul(V::c(LN2_LO))));
    // ln 0 = -inf, ln inf = inf, ln NaN = NaN (the split above is
    // meaningless there).
    let lh = V::select(ax.eq(V::c(0.0)), V::c(f32::NEG_INFINITY), lh);
    let lh = V::select(ax.eq(inf), inf, lh);
    let lh = keep_nan(ax, lh);
    // y ln|x| = ph + pl, the product's rounding error recovered by an fma.
    let ph = y.mul(lh);
    let pl = y.fma(lh, neg(ph)).add(y.mul(ll));
    let r = exp_pair(ph, pl);
    let r = V::select(ph.is_nan(), ph, r);
    // A negative x (or -0) to an odd integer power is negative.
    let odd = y.sub(V::c(2.0).mul(y.mul(V::c(0.5)).floor())).eq(one);
    let r = V::select(odd, r.xor(x.sign()), r);
    // A finite negative x to a finite non-integer power is NaN.
    let neg_finite = V::mand(x.lt(V::c(0.0)), x.gt(V::c(f32::NEG_INFINITY)));
    let r = V::select(V::mand(neg_finite, y.sub(y.floor()).gt(V::c(0.0))), V::c(f32::NAN), r);
    // pow(x, ±0) = pow(1, y) = pow(-1, ±inf) = 1, NaN x or y included.
    let ones = V::mor(V::mor(y.eq(V::c(0.0)), x.eq(one)), V::mand(ax.eq(one), y.abs().eq(inf)));
    V::select(ones, one, r)
}

/// `atan2(y, x)` with C99's special cases (see the module docs).
#[inline(always)]
pub(crate) fn atan2_v<V: Vf32>(y: V, x: V) -> V {
    let (zero, one) = (V::c(0.0), V::c(1.0));
    let (ax, ay) = (x.abs(), y.abs());
    // t = min / max in [0, 1]: 1 where the magnitudes are equal (both
    // infinite included), 0 where y is zero (both zero included).
    let t = ax.min(ay).div(ax.max(ay));
    let t = V::select(ax.eq(ay), one, t);
    let t = V::select(ay.eq(zero), zero, t);
    // atan(t) = π/4 + atan(u), u = (t - 1) / (t + 1) = (mn - mx) / (mn +
    // mx), above tan(π/8); u from the magnitudes as a pair (the result
    // cancels part of π/4 there, so u's rounding would show).
    let big = t.gt(V::c(0.414_213_57));
    // Scaled by 1/4 near the top of the range (exactly), so mn + mx is
    // finite; equal magnitudes (both infinite included) give u = 0.
    let (mn, mx) = (ax.min(ay), ax.max(ay));
    let sc = V::select(mx.gt(V::c(1e37)), V::c(0.25), one);
    let (mn, mx) = (mn.mul(sc), mx.mul(sc));
    let (dh, dl) = two_sum(mn, mx.xor(V::c(-0.0)));
    let (sh, sl) = two_sum(mn, mx);
    let q = dh.div(sh);
    let ql = q.xor(V::c(-0.0)).fma(sh, dh).add(dl).sub(q.mul(sl)).div(sh);
    let eq = ax.eq(ay);
    let (q, ql) = (V::select(eq, zero, q), V::select(eq, zero, ql));
    let u = V::select(big, q, t);
    let z = u.mul(u);
    let a = u.mul(z).fma(z.poly(&ATAN_P), u);
    // atan(q + ql) = atan(q) + ql / (1 + q^2).
    let corr = ql.div(one.add(z)).add(V::c(PIO4_LO));
    let r = V::select(big, V::c(PIO4_HI).add(a.add(corr)), a);
    // The octant (|y| > |x|: π/2 - r), then the half plane (x < 0 or -0:
    // π - r), then y's sign.
    let r = V::select(ay.gt(ax), V::c(PIO2_HI).sub(r).add(V::c(PIO2_LO)), r);
    let xneg = x.sign().xor(one).lt(zero);
    let r = V::select(xneg, V::c(PI_HI).sub(r).add(V::c(PI_LO)), r);
    let r = r.xor(y.sign());
    keep_nan(y, keep_nan(x, r))
}

#[inline(always)]
fn tan_v<V: Vf32>(x: V) -> V {
    // tan = sin r / cos r in even quadrants, -cos r / sin r in odd ones,
    // with sin r = r + ts and cos r = 1 + tc kept unrounded: the quotient
    // of the rounded sums is corrected once by its residual.
    let (r, m) = reduce_pio2(x.abs());
    let z = r.mul(r);
    let ts = r.mul(z).mul(z.poly(&SIN_P));
    let tc = z.mul(z.poly(&COS_P));
    let one = V::c(1.0);
    let odd = V::mor(m.eq(V::c(1.0)), m.eq(V::c(3.0)));
    let (nh, nt) = (V::select(odd, one, r), V::select(odd, tc, ts));
    let (dh, dt) = (V::select(odd, r, one), V::select(odd, ts, tc));
    let d = dh.add(dt);
    let q = nh.add(nt).div(d);
    let res = q.xor(V::c(-0.0)).fma(dh, nh).add(q.xor(V::c(-0.0)).fma(dt, nt));
    let t = res.div(d).add(q);
    let t = V::select(odd, t.xor(V::c(-0.0)), t);
    keep_nan(x, t.xor(x.sign()))
}

#[inline(always)]
fn cos_v<V: Vf32>(x: V) -> V {
    let (s, c, m) = sincos_core(x.abs());
    let swap = V::mor(m.eq(V::c(1.0)), m.eq(V::c(3.0)));
    let v = V::select(swap, s, c);
    let neg = V::mor(m.eq(V::c(1.0)), m.eq(V::c(2.0)));
    let v = V::select(neg, v.xor(V::c(-0.0)), v);
    keep_nan(x, v)
}

// The AVX-512 intrinsics are stable since Rust 1.89, above the workspace's
// declared `rust-version` (1.80): this module needs 1.89 to build.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[clippy::msrv = "1.89"]
mod x86 {
    //! AVX2 and AVX-512F instantiations. The vector types are private to
    //! this module and only created inside `run_avx2` / `run_avx512`, which
    //! are compiled with the matching target features and only called after
    //! runtime detection: that is the invariant every `SAFETY` below relies on.

    use super::{run_generic, Func, Table, VMem, Vf32};
    #[cfg(target_arch = "x86")]
    use std::arch::x86::*;
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    /// Runs `f` with 8-lane AVX2 vectors.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_avx2(f: Func, x: &[f32], out: &mut [f32]) {
        run_generic::<F8>(f, x, out)
    }

    /// Runs `f` with 16-lane AVX-512 vectors.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn run_avx512(f: Func, x: &[f32], out: &mut [f32]) {
        run_generic::<F16>(f, x, out)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn map2_avx2(f: super::Func2, a: &[f32], b: &[f32], out: &mut [f32]) {
        super::map2_generic::<F8>(f, a, b, out)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn map2_avx512(f: super::Func2, a: &[f32], b: &[f32], out: &mut [f32]) {
        super::map2_generic::<F16>(f, a, b, out)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn sum_exp_below_avx2(x: &[f32], m: f32) -> f32 {
        super::sum_exp_below_generic::<F8>(x, m)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn sum_exp_below_avx512(x: &[f32], m: f32) -> f32 {
        super::sum_exp_below_generic::<F16>(x, m)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn lse_columns_avx2(
        x: &[f32],
        stride: usize,
        rows: usize,
        m: &mut [f32],
        s: &mut [f32],
        finite: &mut [bool],
    ) {
        super::lse_columns_generic::<F8>(x, stride, rows, m, s, finite)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn lse_columns_avx512(
        x: &[f32],
        stride: usize,
        rows: usize,
        m: &mut [f32],
        s: &mut [f32],
        finite: &mut [bool],
    ) {
        super::lse_columns_generic::<F16>(x, stride, rows, m, s, finite)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn max_if_finite_avx2(x: &[f32]) -> Option<f32> {
        super::max_if_finite_generic::<F8>(x)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn max_if_finite_avx512(x: &[f32]) -> Option<f32> {
        super::max_if_finite_generic::<F16>(x)
    }

    /// Eight `f32` lanes (AVX2 + FMA).
    #[derive(Clone, Copy)]
    struct F8(__m256);

    /// Sixteen `f32` lanes (AVX-512F).
    #[derive(Clone, Copy)]
    struct F16(__m512);

    macro_rules! avx2 {
        ($e:expr) => {
            // SAFETY: `F8` values exist only inside `run_avx2`, which runs only
            // on CPUs with AVX2 and FMA (module invariant); loads and stores are
            // bounds-checked by the callers' asserts.
            unsafe { $e }
        };
    }

    macro_rules! avx512 {
        ($e:expr) => {
            // SAFETY: `F16` values exist only inside `run_avx512`, which runs
            // only on CPUs with AVX-512F (module invariant); loads and stores
            // are bounds-checked by the callers' asserts.
            unsafe { $e }
        };
    }

    impl VMem for F8 {
        const N: usize = 8;
        #[inline(always)]
        fn load(s: &[f32]) -> Self {
            assert!(s.len() >= 8);
            F8(avx2!(_mm256_loadu_ps(s.as_ptr())))
        }
        #[inline(always)]
        fn store(self, s: &mut [f32]) {
            assert!(s.len() >= 8);
            avx2!(_mm256_storeu_ps(s.as_mut_ptr(), self.0))
        }
    }

    impl Vf32 for F8 {
        type M = __m256;
        #[inline(always)]
        fn splat(v: f32) -> Self {
            F8(avx2!(_mm256_set1_ps(v)))
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            F8(avx2!(_mm256_add_ps(self.0, o.0)))
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            F8(avx2!(_mm256_sub_ps(self.0, o.0)))
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            F8(avx2!(_mm256_mul_ps(self.0, o.0)))
        }
        #[inline(always)]
        fn div(self, o: Self) -> Self {
            F8(avx2!(_mm256_div_ps(self.0, o.0)))
        }
        #[inline(always)]
        fn recip(self) -> Self {
            // A 12-bit estimate; two Newton steps reach full precision.
            let r = F8(avx2!(_mm256_rcp_ps(self.0)));
            super::newton_recip(self, super::newton_recip(self, r))
        }
        #[inline(always)]
        fn fma(self, b: Self, c: Self) -> Self {
            F8(avx2!(_mm256_fmadd_ps(self.0, b.0, c.0)))
        }
        #[inline(always)]
        fn min(self, o: Self) -> Self {
            F8(avx2!(_mm256_min_ps(self.0, o.0)))
        }
        #[inline(always)]
        fn max(self, o: Self) -> Self {
            F8(avx2!(_mm256_max_ps(self.0, o.0)))
        }
        #[inline(always)]
        fn round(self) -> Self {
            F8(avx2!(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(self.0)))
        }
        #[inline(always)]
        fn floor(self) -> Self {
            F8(avx2!(_mm256_floor_ps(self.0)))
        }
        #[inline(always)]
        fn and_bits(self, m: u32) -> Self {
            F8(avx2!(_mm256_and_ps(self.0, _mm256_castsi256_ps(_mm256_set1_epi32(m as i32)))))
        }
        #[inline(always)]
        fn xor(self, o: Self) -> Self {
            F8(avx2!(_mm256_xor_ps(self.0, o.0)))
        }
        #[inline(always)]
        fn iadd(self, k: i32) -> Self {
            F8(avx2!(_mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(self.0), _mm256_set1_epi32(k)))))
        }
        #[inline(always)]
        fn sra23(self) -> Self {
            F8(avx2!(_mm256_cvtepi32_ps(_mm256_srai_epi32::<23>(_mm256_castps_si256(self.0)))))
        }
        #[inline(always)]
        fn pow2i(n: Self) -> Self {
            F8(avx2!(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n.0),
                _mm256_set1_epi32(127)
            )))))
        }
        #[inline(always)]
        fn scale_normal(self, j: Self, _: Self) -> Self {
            self.mul(F8(avx2!(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_castps_si256(j.0))))))
        }
        #[inline(always)]
        fn scale_wide(self, j: Self, n: Self) -> Self {
            super::scale_split(self, j, n)
        }
        #[inline(always)]
        fn lookup(self, table: Table) -> Self {
            let t = table.values();
            F8(avx2!(_mm256_permutevar8x32_ps(_mm256_loadu_ps(t.as_ptr()), _mm256_castps_si256(self.0))))
        }
        #[inline(always)]
        fn lt(self, o: Self) -> __m256 {
            avx2!(_mm256_cmp_ps::<_CMP_LT_OQ>(self.0, o.0))
        }
        #[inline(always)]
        fn gt(self, o: Self) -> __m256 {
            avx2!(_mm256_cmp_ps::<_CMP_GT_OQ>(self.0, o.0))
        }
        #[inline(always)]
        fn ge(self, o: Self) -> __m256 {
            avx2!(_mm256_cmp_ps::<_CMP_GE_OQ>(self.0, o.0))
        }
        #[inline(always)]
        fn eq(self, o: Self) -> __m256 {
            avx2!(_mm256_cmp_ps::<_CMP_EQ_OQ>(self.0, o.0))
        }
        #[inline(always)]
        fn is_nan(self) -> __m256 {
            avx2!(_mm256_cmp_ps::<_CMP_UNORD_Q>(self.0, self.0))
        }
        #[inline(always)]
        fn mand(a: __m256, b: __m256) -> __m256 {
            avx2!(_mm256_and_ps(a, b))
        }
        #[inline(always)]
        fn mor(a: __m256, b: __m256) -> __m256 {
            avx2!(_mm256_or_ps(a, b))
        }
        #[inline(always)]
        fn select(m: __m256, a: Self, b: Self) -> Self {
            F8(avx2!(_mm256_blendv_ps(b.0, a.0, m)))
        }
    }

    impl VMem for F16 {
        const N: usize = 16;
        #[inline(always)]
        fn load(s: &[f32]) -> Self {
            assert!(s.len() >= 16);
            F16(avx512!(_mm512_loadu_ps(s.as_ptr())))
        }
        #[inline(always)]
        fn store(self, s: &mut [f32]) {
            assert!(s.len() >= 16);
            avx512!(_mm512_storeu_ps(s.as_mut_ptr(), self.0))
        }
    }

    impl Vf32 for F16 {
        type M = __mmask16;
        const SCALES_AT_ONCE: bool = true;
        #[inline(always)]
        fn splat(v: f32) -> Self {
            F16(avx512!(_mm512_set1_ps(v)))
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            F16(avx512!(_mm512_add_ps(self.0, o.0)))
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            F16(avx512!(_mm512_sub_ps(self.0, o.0)))
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            F16(avx512!(_mm512_mul_ps(self.0, o.0)))
        }
        #[inline(always)]
        fn div(self, o: Self) -> Self {
            F16(avx512!(_mm512_div_ps(self.0, o.0)))
        }
        #[inline(always)]
        fn recip(self) -> Self {
            // A 14-bit estimate; one Newton step reaches full precision.
            super::newton_recip(self, F16(avx512!(_mm512_rcp14_ps(self.0))))
        }
        #[inline(always)]
        fn fma(self, b: Self, c: Self) -> Self {
            F16(avx512!(_mm512_fmadd_ps(self.0, b.0, c.0)))
        }
        #[inline(always)]
        fn min(self, o: Self) -> Self {
            F16(avx512!(_mm512_min_ps(self.0, o.0)))
        }
        #[inline(always)]
        fn max(self, o: Self) -> Self {
            F16(avx512!(_mm512_max_ps(self.0, o.0)))
        }
        #[inline(always)]
        fn round(self) -> Self {
            F16(avx512!(_mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(self.0)))
        }
        #[inline(always)]
        fn floor(self) -> Self {
            F16(avx512!(_mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(self.0)))
        }
        #[inline(always)]
        fn and_bits(self, m: u32) -> Self {
            F16(avx512!(_mm512_castsi512_ps(_mm512_and_si512(
                _mm512_castps_si512(self.0),
                _mm512_set1_epi32(m as i32)
            ))))
        }
        #[inline(always)]
        fn xor(self, o: Self) -> Self {
            F16(avx512!(_mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(self.0), _mm512_castps_si512(o.0)))))
        }
        #[inline(always)]
        fn iadd(self, k: i32) -> Self {
            F16(avx512!(_mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(self.0), _mm512_set1_epi32(k)))))
        }
        #[inline(always)]
        fn sra23(self) -> Self {
            F16(avx512!(_mm512_cvtepi32_ps(_mm512_srai_epi32::<23>(_mm512_castps_si512(self.0)))))
        }
        #[inline(always)]
        fn scale_normal(self, j: Self, n: Self) -> Self {
            self.scale_wide(j, n)
        }
        #[inline(always)]
        fn pow2i(n: Self) -> Self {
            F16(avx512!(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
                _mm512_cvtps_epi32(n.0),
                _mm512_set1_epi32(127)
            )))))
        }
        #[inline(always)]
        fn lookup(self, table: Table) -> Self {
            // Indices 0..7 only (the low three bits): the table's 8 entries
            // twice fill the 16 a permute reads.
            let t = table.values();
            let mut both = [0f32; 16];
            both[..8].copy_from_slice(t);
            both[8..].copy_from_slice(t);
            F16(avx512!(_mm512_permutexvar_ps(_mm512_castps_si512(self.0), _mm512_loadu_ps(both.as_ptr()))))
        }
        #[inline(always)]
        fn scale_wide(self, _: Self, n: Self) -> Self {
            // One instruction, rounding once (subnormals and overflow included).
            F16(avx512!(_mm512_scalef_ps(self.0, n.0)))
        }
        #[inline(always)]
        fn lt(self, o: Self) -> __mmask16 {
            avx512!(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, o.0))
        }
        #[inline(always)]
        fn gt(self, o: Self) -> __mmask16 {
            avx512!(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(self.0, o.0))
        }
        #[inline(always)]
        fn ge(self, o: Self) -> __mmask16 {
            avx512!(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(self.0, o.0))
        }
        #[inline(always)]
        fn eq(self, o: Self) -> __mmask16 {
            avx512!(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(self.0, o.0))
        }
        #[inline(always)]
        fn is_nan(self) -> __mmask16 {
            avx512!(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(self.0, self.0))
        }
        #[inline(always)]
        fn mand(a: __mmask16, b: __mmask16) -> __mmask16 {
            a & b
        }
        #[inline(always)]
        fn mor(a: __mmask16, b: __mmask16) -> __mmask16 {
            a | b
        }
        #[inline(always)]
        fn select(m: __mmask16, a: Self, b: Self) -> Self {
            F16(avx512!(_mm512_mask_blend_ps(m, b.0, a.0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_and_detected_is_available() {
        let levels = available_levels();
        assert_eq!(levels.first(), Some(&Level::Scalar));
        assert_eq!(levels.last(), Some(&detected_level()));
    }

    #[test]
    fn exact_points_at_every_level() {
        // Values whose f32 results are exact (or closed-form) for every function.
        let x = [0.0f32, 1.0, -1.0, 2.0];
        for level in available_levels() {
            let mut o = [0.0f32; 4];
            apply(Func::Exp, level, &x, &mut o);
            assert_eq!(o[0], 1.0);
            assert_eq!(o[1], std::f32::consts::E);
            apply(Func::Log, level, &[1.0, 2.0, 4.0, 0.5], &mut o);
            assert_eq!(o, [0.0, std::f32::consts::LN_2, 2.0 * std::f32::consts::LN_2, -std::f32::consts::LN_2]);
            apply(Func::Sigmoid, level, &x, &mut o);
            assert_eq!(o[0], 0.5);
            apply(Func::Cos, level, &x, &mut o);
            assert_eq!(o[0], 1.0);
        }
    }

    #[test]
    fn scalar_fma_is_fused() {
        // (1 + 2^-12)^2 - 1 = 2^-11 + 2^-24: exact when fused, 2^-11 if the product is rounded.
        let a = 1.0 + 2f32.powi(-12);
        let p = Vf32::fma(a, a, -1.0);
        assert_eq!(p, 2f32.powi(-11) + 2f32.powi(-24));
    }
}
