//! The precision of `f32` matrix products: true `f32` by default, or
//! TF32 when asked.
//!
//! NVIDIA GPUs from Ampere on multiply `f32` matrices fastest on their
//! tensor cores in TF32: each operand rounded to 10 bits of mantissa (of
//! `f32`'s 23), products summed in `f32`. That is several times faster
//! than true `f32` for large products, and its error is about that of
//! `f16` inputs: an element of the result may differ from the true product
//! by up to `2^-9` times the sum of `|a[i, k] * b[k, j]|` over `k` (each
//! operand off by up to `2^-11` of itself when rounded to TF32, `2^-10`
//! when truncated), against about `2^-24` per step of the sum in `f32`. kiln, like
//! JAX's `precision="highest"` and PyTorch's default, computes `f32`
//! products in true `f32` unless TF32 is asked for with
//! [`set_matmul_precision`] (or `KILN_MATMUL_PRECISION=tf32` in the
//! environment, read once when the setting is first needed).
//!
//! The setting is a permission, read when each product runs (eagerly or
//! inside a compiled function, so a compiled function follows the setting
//! in force at each call): a backend uses TF32 where it has a faster TF32
//! path. The CUDA backend's cuBLAS products then compute in TF32 (cuBLAS's
//! `CUBLAS_COMPUTE_32F_FAST_TF32`); its own kernel for small products and
//! the CPU, which have no such path, stay true `f32`. Other dtypes are
//! never affected.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::{Error, Result};

/// How `f32` matrix products may compute (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MatmulPrecision {
    /// True `f32`: every product of `f32` elements summed in `f32` (the
    /// default).
    Highest,
    /// TF32 allowed: on hardware with a TF32 path, operands cut to 10
    /// mantissa bits, products summed in `f32`.
    Tf32,
}

impl MatmulPrecision {
    /// The setting named by `s`: `"highest"` (or `"float32"`, `"f32"`) or
    /// `"tf32"` (or `"tensorfloat32"`, `"high"`), in any case.
    pub fn parse(s: &str) -> Result<MatmulPrecision> {
        match s.trim().to_ascii_lowercase().as_str() {
            "highest" | "float32" | "f32" => Ok(MatmulPrecision::Highest),
            "tf32" | "tensorfloat32" | "high" => Ok(MatmulPrecision::Tf32),
            _ => Err(Error::Invalid {
                op: "matmul_precision",
                msg: format!("unknown precision {s:?}: use \"highest\" (true f32, the default) or \"tf32\""),
            }),
        }
    }

    /// The setting's name: `"highest"` or `"tf32"`.
    pub fn name(self) -> &'static str {
        match self {
            MatmulPrecision::Highest => "highest",
            MatmulPrecision::Tf32 => "tf32",
        }
    }
}

/// [`SETTING`] before the environment has been read.
const UNSET: u8 = u8::MAX;
/// The setting, as a [`MatmulPrecision`]'s discriminant.
static SETTING: AtomicU8 = AtomicU8::new(UNSET);

/// The precision of `f32` matrix products now: the last
/// [`set_matmul_precision`], else `KILN_MATMUL_PRECISION` from the
/// environment (an unknown value there is ignored, with a warning on
/// stderr), else [`MatmulPrecision::Highest`].
pub fn matmul_precision() -> MatmulPrecision {
    let mut c = SETTING.load(Ordering::Relaxed);
    if c == UNSET {
        let env = match std::env::var("KILN_MATMUL_PRECISION") {
            Ok(v) => MatmulPrecision::parse(&v).unwrap_or_else(|e| {
                eprintln!("kiln: KILN_MATMUL_PRECISION ignored: {e}");
                MatmulPrecision::Highest
            }),
            Err(_) => MatmulPrecision::Highest,
        };
        let _ = SETTING.compare_exchange(UNSET, env as u8, Ordering::Relaxed, Ordering::Relaxed);
        c = SETTING.load(Ordering::Relaxed);
    }
    if c == MatmulPrecision::Tf32 as u8 {
        MatmulPrecision::Tf32
    } else {
        MatmulPrecision::Highest
    }
}

/// Sets the precision of `f32` matrix products for every thread, from the
/// next product that runs on; returns the previous setting.
///
/// ```
/// use kiln::{set_matmul_precision, MatmulPrecision};
/// let old = set_matmul_precision(MatmulPrecision::Tf32);
/// // ... large f32 products on a GPU may now use TF32 tensor cores ...
/// set_matmul_precision(old);
/// ```
pub fn set_matmul_precision(p: MatmulPrecision) -> MatmulPrecision {
    let old = matmul_precision();
    SETTING.store(p as u8, Ordering::Relaxed);
    old
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_names_are_errors() {
        for p in [MatmulPrecision::Highest, MatmulPrecision::Tf32] {
            assert_eq!(MatmulPrecision::parse(p.name()).unwrap(), p);
        }
        assert_eq!(MatmulPrecision::parse(" TensorFloat32 ").unwrap(), MatmulPrecision::Tf32);
        let e = MatmulPrecision::parse("bf16").unwrap_err().to_string();
        assert!(e.contains("\"bf16\"") && e.contains("tf32"), "{e}");
    }
}
