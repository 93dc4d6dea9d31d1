//! Conversions between `f16` and `f32` as plain bit arithmetic, inlined
//! into the tile kernels so that the compiler vectorizes them.
//!
//! The `half` crate converts one element at a time through a function it
//! cannot inline (it checks for F16C at run time and calls a
//! `#[target_feature]` function), about 2 ns an element: an `f16` tile op,
//! which converts its inputs to `f32`, computes and rounds back, ran 20-40x
//! slower than the same op on `f32`. These give the same bits as `half`'s
//! conversions for every input (NaNs quieted with their payload's top bits
//! kept, round to nearest even), with no branches.

use half::{bf16, f16};

/// The 16-bit floats, as the `f32`s they widen to exactly and round back
/// from.
pub trait Half: Copy {
    /// The value as an `f32` (exact).
    fn widen(self) -> f32;
    /// `x` rounded to this type (to nearest even).
    fn narrow(x: f32) -> Self;
}

impl Half for f16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f16_to_f32(self)
    }
    #[inline(always)]
    fn narrow(x: f32) -> Self {
        f32_to_f16(x)
    }
}

impl Half for bf16 {
    // `half`'s bf16 conversions are plain inlined bit arithmetic already.
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn narrow(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// `h` as an `f32` (exact; a NaN is quieted, its payload kept).
#[inline(always)]
pub fn f16_to_f32(h: f16) -> f32 {
    let h = h.to_bits() as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    // The exponent and mantissa moved into place read as the value times
    // 2^-112 (subnormals too); scaling by 2^112 is exact.
    let scaled = f32::from_bits(em << 13) * f32::from_bits(0x7780_0000);
    let quiet = if em > 0x7c00 { 0x0040_0000 } else { 0 };
    let special = f32::from_bits(0x7f80_0000 | (em << 13) | quiet);
    let v = if em >= 0x7c00 { special } else { scaled };
    f32::from_bits(v.to_bits() | sign)
}

/// `f` rounded to the nearest `f16` (ties to even; overflow to infinity; a
/// NaN quieted with its payload's top bits kept).
#[inline(always)]
pub fn f32_to_f16(f: f32) -> f16 {
    let x = f.to_bits();
    let sign = (x >> 16) & 0x8000;
    let u = x & 0x7fff_ffff;
    let nan = 0x7e00 | ((u & 0x007f_ffff) >> 13);
    let big = if u > 0x7f80_0000 { nan } else { 0x7c00 };
    // Normal results: rebias the exponent (by (15 - 127) << 23) and round
    // the 13 dropped bits to nearest even; a carry out of the mantissa
    // moves to the next exponent (up to infinity).
    let odd = (u >> 13) & 1;
    let normal = u.wrapping_add(0xc800_0fff).wrapping_add(odd) >> 13;
    // Subnormal results: adding 0.5 leaves f16's subnormal spacing (2^-24)
    // as the sum's unit, so the addition itself rounds to nearest even.
    let half = f32::from_bits(0x3f00_0000);
    let sub = (f32::from_bits(u) + half).to_bits().wrapping_sub(0x3f00_0000);
    let o = if u >= 0x4780_0000 {
        big
    } else if u < 0x3880_0000 {
        sub
    } else {
        normal
    };
    f16::from_bits((o | sign) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_f16_widens_as_half_does() {
        for b in 0..=u16::MAX {
            let h = f16::from_bits(b);
            assert_eq!(f16_to_f32(h).to_bits(), h.to_f32().to_bits(), "f16 bits {b:#06x}");
        }
    }

    #[test]
    fn f32s_round_to_f16_as_half_does() {
        let check = |x: u32| {
            let f = f32::from_bits(x);
            assert_eq!(f32_to_f16(f).to_bits(), f16::from_f32(f).to_bits(), "f32 bits {x:#010x}");
        };
        // Every f16 value, the ties halfway to its neighbours and the f32s
        // next to them, of both signs.
        for b in 0..=0x7fffu16 {
            let w = f16::from_bits(b).to_f32().to_bits();
            for d in [0u32, 1, 2, 0xfff, 0x1000, 0x1001, 0x1fff] {
                for v in [w.wrapping_add(d), w.wrapping_sub(d)] {
                    check(v);
                    check(v | 0x8000_0000);
                }
            }
        }
        // Then a stride through all of f32 (NaN payloads, overflow, the
        // subnormal range).
        let mut x = 0u32;
        while let Some(n) = x.checked_add(997) {
            check(x);
            x = n;
        }
        for x in
            [0x7f80_0001, 0x7fbf_ffff, 0x7fc0_0000, 0xffff_ffff, 0x477f_f000, 0x477f_efff, 0x3380_0000, 0x3380_0001]
        {
            check(x);
        }
    }
}
