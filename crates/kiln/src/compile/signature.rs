//! The cache key of a compiled call: number of arguments, and per argument
//! its device and dtype, its number of dimensions and (unless shapeless)
//! its shape, packed into one vector of words.

use smallvec::SmallVec;

use crate::array::Array;
use crate::device::Device;
use crate::dtype::{DType, ALL_DTYPES};

/// Words a signature keeps inline, so that a cache lookup allocates
/// nothing for typical calls: two arguments of up to 5 dims, three of up
/// to 3 (each argument takes 2 words plus one per dim, after 1 for the count).
const INLINE_WORDS: usize = 16;

/// A packed input signature: `[n, (device and dtype, ndim, dims...)*]`
/// (dims only when not shapeless; the device in the bits above the dtype's
/// low byte: 0 for the CPU, `i + 1` for CUDA GPU `i`).
#[derive(Clone, Debug, Eq)]
pub struct Signature {
    words: SmallVec<[u64; INLINE_WORDS]>,
    shapeless: bool,
}

/// Word by word: a signature is a handful of words, compared on every
/// cache hit (twice), where a `memcmp` call costs more than the words.
impl PartialEq for Signature {
    fn eq(&self, other: &Signature) -> bool {
        self.shapeless == other.shapeless
            && self.words.len() == other.words.len()
            && self.words.iter().zip(&other.words).all(|(a, b)| a == b)
    }
}

/// The same fields as `eq` compares.
impl std::hash::Hash for Signature {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.words.hash(h);
        self.shapeless.hash(h);
    }
}

fn device_code(d: Device) -> u64 {
    match d {
        Device::Cpu => 0,
        Device::Cuda(i) => i as u64 + 1,
    }
}

fn device_of(code: u64) -> Device {
    match code {
        0 => Device::Cpu,
        i => Device::Cuda(i as usize - 1),
    }
}

/// One argument of a signature: device, dtype, shape (when recorded), ndim.
type ArgSig = (Device, DType, Option<Vec<usize>>, usize);

/// `f32[10, 64]`, with ` on cuda:0` for an argument not on the CPU.
fn describe_arg(a: &ArgSig) -> String {
    let on = if a.0 == Device::Cpu { String::new() } else { format!(" on {}", a.0) };
    match &a.2 {
        Some(s) => format!("{}{on}", describe(a.1, s)),
        None => format!("{}, {} dim(s){on}", a.1, a.3),
    }
}

/// `f32[10, 64]`.
pub fn describe(dtype: DType, shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("{dtype}[{}]", dims.join(", "))
}

impl Signature {
    /// The signature of a call.
    pub fn of(args: &[&Array], shapeless: bool) -> Signature {
        // Filled in place (moving a `SmallVec` copies it).
        let mut sig = Signature { words: SmallVec::new(), shapeless };
        sig.words.push(args.len() as u64);
        for a in args {
            sig.words.push(a.dtype() as u64 | device_code(a.device()) << 8);
            sig.words.push(a.ndim() as u64);
            if !shapeless {
                sig.words.extend(a.shape().iter().map(|&d| d as u64));
            }
        }
        sig
    }

    /// Per argument: device, dtype and (when recorded) shape.
    fn args(&self) -> Vec<ArgSig> {
        let mut out = vec![];
        let mut i = 1;
        while i < self.words.len() {
            let dev = device_of(self.words[i] >> 8);
            let dt = ALL_DTYPES[(self.words[i] & 0xff) as usize];
            let nd = self.words[i + 1] as usize;
            i += 2;
            let shape = if self.shapeless {
                None
            } else {
                let s = self.words[i..i + nd].iter().map(|&d| d as usize).collect();
                i += nd;
                Some(s)
            };
            out.push((dev, dt, shape, nd));
        }
        out
    }

    /// The arguments as text ("argument 0: f32[3], argument 1: f32[]").
    pub fn describe(&self) -> String {
        let args: Vec<String> =
            self.args().iter().enumerate().map(|(i, a)| format!("argument {i}: {}", describe_arg(a))).collect();
        if args.is_empty() {
            "no arguments".into()
        } else {
            args.join(", ")
        }
    }

    /// Why `self` missed the cache compared with the previous call's signature.
    pub fn miss_reason(&self, before: Option<&Signature>) -> String {
        let Some(before) = before else { return "first call".into() };
        let (now, old) = (self.args(), before.args());
        if now.len() != old.len() {
            return format!("number of arguments: now {}, before {}", now.len(), old.len());
        }
        let diffs: Vec<String> = now
            .iter()
            .zip(&old)
            .enumerate()
            .filter(|(_, (n, o))| n != o)
            .map(|(i, (n, o))| format!("arg {i}: now {}, before {}", describe_arg(n), describe_arg(o)))
            .collect();
        if diffs.is_empty() {
            "evicted from the cache earlier (or cleared)".into()
        } else {
            diffs.join("; ")
        }
    }
}
