//! Random numbers from counter-based, splittable keys (as in JAX).
//!
//! A key is a `u32` array of shape `(2)`. [`random_bits`] turns a key into
//! as many random words as asked for with the Threefry-2x32 block cipher
//! ([`threefry2x32`], run by each backend): element `i` depends only on the
//! key and `i`, so the numbers are the same on any thread count. The same
//! key always gives the same numbers; use [`split`] to derive independent
//! keys.
//!
//! Every distribution takes `key: Option<&Array>`. With `None` it draws from
//! a global key, which is split on each draw (new numbers each call) and can
//! be reset with [`seed`] (the same draws again after the same seed). The
//! global key starts from the system clock.
//!
//! Distributions are compositions of ordinary ops on [`random_bits`], so
//! they stay lazy and fuse with what consumes them.
//!
//! ```
//! use kiln::{random, DType};
//! let k = random::key(7);
//! let x = random::normal(&[1000], DType::F32, 0.0, 1.0, Some(&k))?;
//! let y = random::normal(&[1000], DType::F32, 0.0, 1.0, Some(&k))?;
//! assert_eq!(x.to_vec::<f32>()?, y.to_vec::<f32>()?); // same key, same numbers
//! let [a, b]: [kiln::Array; 2] = random::split(&k, 2)?.try_into().unwrap();
//! let u = random::uniform(-1.0, 1.0, &[3], DType::F64, Some(&a))?;
//! assert!(u.to_vec::<f64>()?.iter().all(|v| (-1.0..1.0).contains(v)));
//! # let _ = b;
//! # Ok::<(), kiln::Error>(())
//! ```

use std::sync::Mutex;

use half::{bf16, f16};

use crate::array::Array;
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::ops::binary::{clip, floor_divide, greater_equal, less, minimum, remainder};
use crate::ops::shape::{reshape, slice_axis, squeeze};
use crate::ops::unary::{cos, floor, log, sqrt};
use crate::primitive::Primitive;

/// A key from a seed: `[seed >> 32, seed & 0xffffffff]` (so a 32-bit seed `s`
/// gives `[0, s]`, as JAX's `PRNGKey`).
pub fn key(seed: u64) -> Array {
    key_array(seed_words(seed))
}

fn seed_words(seed: u64) -> [u32; 2] {
    [(seed >> 32) as u32, seed as u32]
}

fn key_array(words: [u32; 2]) -> Array {
    Array::from_vec(words.to_vec(), &[2]).expect("two words make a (2) array")
}

/// `u32` random bits of `shape` from `key` (a lazy node).
pub fn random_bits(key: &Array, shape: &[usize]) -> Result<Array> {
    Array::from_op(Primitive::RandomBits { shape: shape.to_vec() }, vec![key.clone()])
}

/// `n` new keys derived from `key` (the rows of `random_bits(key, [n, 2])`):
/// independent of each other and of draws made with `key` itself.
pub fn split(key: &Array, n: usize) -> Result<Vec<Array>> {
    let bits = random_bits(key, &[n, 2])?;
    (0..n).map(|i| reshape(&slice_axis(&bits, 0, Some(i as isize), Some(i as isize + 1), 1)?, &[2])).collect()
}

/// Words of the global key; `None` until first used or seeded.
static GLOBAL_KEY: Mutex<Option<[u32; 2]>> = Mutex::new(None);

/// Resets the global key to [`key`]`(seed)`: the draws that follow (with
/// `key: None`) repeat after each `seed` with the same value.
pub fn seed(seed: u64) {
    *GLOBAL_KEY.lock().unwrap_or_else(|e| e.into_inner()) = Some(seed_words(seed));
}

thread_local! {
    /// While a compiled function is traced: the key its random ops draw from
    /// (derived from the implicit key input), instead of the global key.
    static TRACE_KEY: std::cell::RefCell<Option<Array>> = const { std::cell::RefCell::new(None) };
}

/// Starts tracing: random draws with `key: None` now split `key` (a
/// placeholder) lazily. Returns the previous trace key, for [`end_trace`].
pub(crate) fn begin_trace(key: Array) -> Option<Array> {
    TRACE_KEY.with(|t| t.replace(Some(key)))
}

/// Ends tracing: restores `prev` and returns the trace key as it is now
/// (a different array than the one given to [`begin_trace`] when the traced
/// function drew random numbers).
pub(crate) fn end_trace(prev: Option<Array>) -> Option<Array> {
    TRACE_KEY.with(|t| t.replace(prev))
}

/// A fresh key split off the global key, as data: the implicit random input
/// of each call of a compiled function that draws random numbers.
pub(crate) fn next_key_for_call() -> Array {
    next_host_key()
}

/// Splits the current key in two (the global key, or while tracing the
/// trace key, lazily): the first half replaces it, the second is returned.
fn next_global_key() -> Array {
    let traced = TRACE_KEY.with(|t| t.borrow().clone());
    if let Some(k) = traced {
        // The same split as on the host below: words 0..2 and 2..4 of the bits.
        let bits = random_bits(&k, &[4]).expect("a trace key is a u32 (2) array");
        let half = |i: isize| slice_axis(&bits, 0, Some(2 * i), Some(2 * i + 2), 1).expect("4 words");
        TRACE_KEY.with(|t| *t.borrow_mut() = Some(half(0)));
        return half(1);
    }
    next_host_key()
}

/// Splits the global key on the host (see [`next_global_key`]).
fn next_host_key() -> Array {
    let mut g = GLOBAL_KEY.lock().unwrap_or_else(|e| e.into_inner());
    let k = *g.get_or_insert_with(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        seed_words(now.as_nanos() as u64)
    });
    *g = Some(threefry2x32(k, [0, 0]));
    key_array(threefry2x32(k, [1, 0]))
}

fn key_or_global(key: Option<&Array>) -> Array {
    match key {
        Some(k) => k.clone(),
        None => next_global_key(),
    }
}

/// The size of a draw: a literal shape, or the shape of an array (the
/// `*_like` draws), which a shapeless compiled function follows.
#[derive(Clone, Copy)]
enum Size<'a> {
    Fixed(&'a [usize]),
    Like(&'a Array),
}

/// Random bits of shape `prefix` followed by `size`.
fn bits_of(key: &Array, prefix: &[usize], size: Size) -> Result<Array> {
    match size {
        Size::Fixed(shape) => {
            let mut full = prefix.to_vec();
            full.extend_from_slice(shape);
            random_bits(key, &full)
        }
        Size::Like(x) => Array::from_op(Primitive::RandomBits { shape: prefix.to_vec() }, vec![key.clone(), x.clone()]),
    }
}

/// Row `i` (of the leading axis) of `bits`, without that axis.
fn row_of(bits: &Array, i: usize) -> Result<Array> {
    squeeze(&slice_axis(bits, 0, Some(i as isize), Some(i as isize + 1), 1)?, Some(&[0]))
}

/// `count` arrays of `size` with uniform values in `[0, 1)`: `f32` with 24
/// random bits (one word each) or, when `wide`, `f64` with 53 random bits
/// (two words each). All come from one `random_bits` node.
fn unit_uniforms(key: &Array, size: Size, count: usize, wide: bool) -> Result<Vec<Array>> {
    let words = if wide { 2 } else { 1 };
    let bits = bits_of(key, &[count * words], size)?;
    let row = |i: usize| row_of(&bits, i);
    (0..count)
        .map(|c| {
            if wide {
                // (hi >> 11) * 2^32 + lo is a 53-bit integer, exact in f64.
                let hi = floor_divide(&row(2 * c)?, 1u32 << 11)?.astype(DType::F64)?;
                let lo = row(2 * c + 1)?.astype(DType::F64)?;
                ((hi * 4294967296.0f64)? + lo)? * 2f64.powi(-53)
            } else {
                floor_divide(&row(c)?, 1u32 << 8)?.astype(DType::F32)? * 2f64.powi(-24)
            }
        })
        .collect()
}

fn check_float(op: &'static str, dtype: DType) -> Result<()> {
    if dtype.is_float() {
        return Ok(());
    }
    Err(Error::DType {
        op,
        dtype,
        msg: format!("{op} draws floats: use f16, bf16, f32 or f64 (randint for integers, bernoulli for bools)"),
    })
}

/// `x` rounded to the nearest value of the float `dtype`.
fn round_to(dtype: DType, x: f64) -> f64 {
    match dtype {
        DType::F16 => <f16 as Element>::from_f64(x).to_f64(),
        DType::BF16 => <bf16 as Element>::from_f64(x).to_f64(),
        DType::F32 => x as f32 as f64,
        _ => x,
    }
}

/// The neighbour of a finite value `x` of the float `dtype`, up or down.
fn adjacent(dtype: DType, x: f64, up: bool) -> f64 {
    // IEEE sign-magnitude: stepping the bits steps the magnitude.
    fn step(bits: u64, sign: u64, up: bool) -> u64 {
        if bits & !sign == 0 {
            return if up { 1 } else { sign | 1 };
        }
        if (bits & sign != 0) == up {
            bits - 1
        } else {
            bits + 1
        }
    }
    match dtype {
        DType::F16 => f16::from_bits(step(<f16 as Element>::from_f64(x).to_bits() as u64, 0x8000, up) as u16).to_f64(),
        DType::BF16 => {
            bf16::from_bits(step(<bf16 as Element>::from_f64(x).to_bits() as u64, 0x8000, up) as u16).to_f64()
        }
        DType::F32 => f32::from_bits(step((x as f32).to_bits() as u64, 0x8000_0000, up) as u32) as f64,
        _ => f64::from_bits(step(x.to_bits(), 1 << 63, up)),
    }
}

/// Uniform floats in `[low, high)` of `shape` and float `dtype`.
///
/// Built from 24 random bits per element for `f32`, `f16` and `bf16`
/// (computed in `f32`, then rounded to the dtype) and 53 bits for `f64`.
/// Values that rounding would push to `high` are clamped to the largest
/// value of `dtype` below it, so `high` is never drawn.
pub fn uniform(low: f64, high: f64, shape: &[usize], dtype: DType, key: Option<&Array>) -> Result<Array> {
    uniform_sized(low, high, Size::Fixed(shape), dtype, key)
}

/// [`uniform`] with the shape of `like` (only its shape is read; a shapeless
/// compiled function draws at the shape `like` has on each call).
pub fn uniform_like(low: f64, high: f64, like: &Array, dtype: DType, key: Option<&Array>) -> Result<Array> {
    uniform_sized(low, high, Size::Like(like), dtype, key)
}

fn uniform_sized(low: f64, high: f64, size: Size, dtype: DType, key: Option<&Array>) -> Result<Array> {
    check_float("uniform", dtype)?;
    if !(low.is_finite() && high.is_finite() && low < high) {
        return Err(Error::Invalid {
            op: "uniform",
            msg: format!("needs finite bounds with low < high, got low = {low}, high = {high}"),
        });
    }
    // The values of `dtype` in [low, high).
    let lo = round_to(dtype, low);
    let lo = if lo < low { adjacent(dtype, lo, true) } else { lo };
    let hi = round_to(dtype, high);
    let top = if hi < high { hi } else { adjacent(dtype, hi, false) };
    let wide = dtype == DType::F64;
    let compute = if wide { DType::F64 } else { DType::F32 };
    let span = round_to(compute, high) - round_to(compute, low);
    if lo > top || !round_to(compute, span).is_finite() {
        return Err(Error::Invalid {
            op: "uniform",
            msg: format!("[{low}, {high}) holds no {dtype} values or is too wide to sample in {compute}"),
        });
    }
    let u = unit_uniforms(&key_or_global(key), size, 1, wide)?.remove(0);
    let x = ((u * (high - low))? + low)?.astype(dtype)?;
    clip(&x, Some(lo), Some(top))
}

/// Normally distributed floats with mean `loc` and standard deviation
/// `scale`, of `shape` and float `dtype`.
///
/// Box-Muller on two uniforms `u1, u2` in `[0, 1)`:
/// `sqrt(-2 ln(1 - u1)) * cos(2 pi u2)` (`1 - u1` is never 0). Computed in
/// `f32` for `f32`, `f16` and `bf16` (tails reach about 5.8 sigma) and in
/// `f64` for `f64` (about 8.6 sigma), then rounded to `dtype`.
pub fn normal(shape: &[usize], dtype: DType, loc: f64, scale: f64, key: Option<&Array>) -> Result<Array> {
    normal_sized(Size::Fixed(shape), dtype, loc, scale, key)
}

/// [`normal`] with the shape of `like` (only its shape is read; a shapeless
/// compiled function draws at the shape `like` has on each call).
pub fn normal_like(like: &Array, dtype: DType, loc: f64, scale: f64, key: Option<&Array>) -> Result<Array> {
    normal_sized(Size::Like(like), dtype, loc, scale, key)
}

fn normal_sized(size: Size, dtype: DType, loc: f64, scale: f64, key: Option<&Array>) -> Result<Array> {
    check_float("normal", dtype)?;
    if !(loc.is_finite() && scale.is_finite() && scale >= 0.0) {
        return Err(Error::Invalid {
            op: "normal",
            msg: format!("needs a finite loc and a finite scale >= 0, got loc = {loc}, scale = {scale}"),
        });
    }
    let mut u = unit_uniforms(&key_or_global(key), size, 2, dtype == DType::F64)?;
    let (u1, u2) = (u.remove(0), u.remove(0));
    let radius = sqrt(&(log(&(1.0 - &u1)?)? * -2.0)?)?;
    let z = (radius * cos(&(u2 * std::f64::consts::TAU)?)?)?;
    ((z * scale)? + loc)?.astype(dtype)
}

/// The smallest and largest value of an integer dtype.
fn int_bounds(dtype: DType) -> (i128, i128) {
    match dtype {
        DType::U8 => (0, u8::MAX as i128),
        DType::U32 => (0, u32::MAX as i128),
        DType::I32 => (i32::MIN as i128, i32::MAX as i128),
        _ => (i64::MIN as i128, i64::MAX as i128),
    }
}

/// Uniform integers in `[low, high)` of `shape` and integer `dtype`.
///
/// For a range `r = high - low` up to 2^53 (every range of `u8`, `u32` and
/// `i32`), the value is `low + floor(u * r)` with `u` a uniform of 53 random
/// bits: each value's probability is within a factor `1 ± r / 2^53` of
/// `1 / r` (at most `2^-21` off for 32-bit ranges). Wider `i64` ranges (up to
/// `i64::MAX`) take 64 random bits modulo `r`, whose bias grows to at most
/// `r / 2^64`; ranges wider than `i64::MAX` are rejected.
pub fn randint(low: i64, high: i64, shape: &[usize], dtype: DType, key: Option<&Array>) -> Result<Array> {
    randint_sized(low, high, Size::Fixed(shape), dtype, key)
}

/// [`randint`] with the shape of `like` (only its shape is read; a shapeless
/// compiled function draws at the shape `like` has on each call).
pub fn randint_like(low: i64, high: i64, like: &Array, dtype: DType, key: Option<&Array>) -> Result<Array> {
    randint_sized(low, high, Size::Like(like), dtype, key)
}

fn randint_sized(low: i64, high: i64, size: Size, dtype: DType, key: Option<&Array>) -> Result<Array> {
    if !dtype.is_int() {
        return Err(Error::DType {
            op: "randint",
            dtype,
            msg: "randint draws integers: use u8, u32, i32 or i64 (uniform for floats)".into(),
        });
    }
    let (min, max) = int_bounds(dtype);
    if low >= high || (low as i128) < min || (high as i128 - 1) > max {
        return Err(Error::Invalid {
            op: "randint",
            msg: format!(
                "needs low < high with [low, high) inside the range of {dtype} ({min}..={max}), got [{low}, {high})"
            ),
        });
    }
    let range = high as i128 - low as i128;
    let key = key_or_global(key);
    let offset = if range <= 1 << 53 {
        let u = unit_uniforms(&key, size, 1, true)?.remove(0);
        // floor(u * r) <= r - 1 up to rounding of the product: clamp it.
        minimum(&floor(&(u * range as f64)?)?, (range - 1) as f64)?.astype(DType::I64)?
    } else if range <= i64::MAX as i128 {
        let bits = bits_of(&key, &[2], size)?;
        let row = |i: usize| row_of(&bits, i)?.astype(DType::I64);
        // All 64 bits as one wrapping i64, then Python's modulo (in [0, r)).
        let r = ((row(0)? * (1i64 << 32))? + row(1)?)?;
        remainder(&r, range as i64)?
    } else {
        return Err(Error::Invalid {
            op: "randint",
            msg: format!("ranges wider than i64::MAX are not supported, got [{low}, {high})"),
        });
    };
    (offset + low)?.astype(dtype)
}

/// `true` with probability `p` (in `[0, 1]`), as a bool array of `shape`.
/// A draw compares 32 random bits with `floor(p * 2^32)`, so `p` is resolved
/// to 2^-32; `p = 0` never and `p = 1` always gives `true`.
pub fn bernoulli(p: f64, shape: &[usize], key: Option<&Array>) -> Result<Array> {
    bernoulli_sized(p, Size::Fixed(shape), key)
}

/// [`bernoulli`] with the shape of `like` (only its shape is read; a
/// shapeless compiled function draws at the shape `like` has on each call).
pub fn bernoulli_like(p: f64, like: &Array, key: Option<&Array>) -> Result<Array> {
    bernoulli_sized(p, Size::Like(like), key)
}

fn bernoulli_sized(p: f64, size: Size, key: Option<&Array>) -> Result<Array> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::Invalid { op: "bernoulli", msg: format!("p must be a probability in [0, 1], got {p}") });
    }
    let bits = bits_of(&key_or_global(key), &[], size)?;
    let threshold = (p * 4294967296.0).floor() as u64;
    if threshold > u32::MAX as u64 {
        return greater_equal(&bits, 0u32); // p = 1
    }
    less(&bits, threshold as u32)
}

/// Threefry's key-schedule parity constant.
const PARITY: u32 = 0x1BD1_1BDA;

/// The Threefry-2x32 block function (20 rounds): encrypts the counter `ctr`
/// under `key`.
#[inline]
pub fn threefry2x32(key: [u32; 2], ctr: [u32; 2]) -> [u32; 2] {
    let ks = [key[0], key[1], key[0] ^ key[1] ^ PARITY];
    let (mut x0, mut x1) = (ctr[0].wrapping_add(ks[0]), ctr[1].wrapping_add(ks[1]));
    // Four rounds with the given rotations, then a key injection (written
    // out so the 20 rounds unroll without relying on the optimizer).
    macro_rules! four_rounds {
        ($r0:literal, $r1:literal, $r2:literal, $r3:literal, $s:literal) => {
            x0 = x0.wrapping_add(x1);
            x1 = x1.rotate_left($r0) ^ x0;
            x0 = x0.wrapping_add(x1);
            x1 = x1.rotate_left($r1) ^ x0;
            x0 = x0.wrapping_add(x1);
            x1 = x1.rotate_left($r2) ^ x0;
            x0 = x0.wrapping_add(x1);
            x1 = x1.rotate_left($r3) ^ x0;
            x0 = x0.wrapping_add(ks[$s % 3]);
            x1 = x1.wrapping_add(ks[($s + 1) % 3]).wrapping_add($s);
        };
    }
    four_rounds!(13, 15, 26, 6, 1);
    four_rounds!(17, 29, 16, 24, 2);
    four_rounds!(13, 15, 26, 6, 3);
    four_rounds!(17, 29, 16, 24, 4);
    four_rounds!(13, 15, 26, 6, 5);
    [x0, x1]
}
