//! The cache key of a compiled call: number of arguments, and per argument
//! its dtype, its number of dimensions and (unless shapeless) its shape,
//! packed into one vector of words.

use smallvec::SmallVec;

use crate::array::Array;
use crate::dtype::{DType, ALL_DTYPES};

/// Words a signature keeps inline, so that a cache lookup allocates
/// nothing for typical calls: two arguments of up to 5 dims, three of up
/// to 3 (each argument takes 2 words plus one per dim, after 1 for the count).
const INLINE_WORDS: usize = 16;

/// A packed input signature: `[n, (dtype, ndim, dims...)*]` (dims only when
/// not shapeless).
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
            sig.words.push(a.dtype() as u64);
            sig.words.push(a.ndim() as u64);
            if !shapeless {
                sig.words.extend(a.shape().iter().map(|&d| d as u64));
            }
        }
        sig
    }

    /// Per argument: dtype and (when recorded) shape.
    fn args(&self) -> Vec<(DType, Option<Vec<usize>>, usize)> {
        let mut out = vec![];
        let mut i = 1;
        while i < self.words.len() {
            let dt = ALL_DTYPES[self.words[i] as usize];
            let nd = self.words[i + 1] as usize;
            i += 2;
            let shape = if self.shapeless {
                None
            } else {
                let s = self.words[i..i + nd].iter().map(|&d| d as usize).collect();
                i += nd;
                Some(s)
            };
            out.push((dt, shape, nd));
        }
        out
    }

    /// The arguments as text ("argument 0: f32[3], argument 1: f32[]").
    pub fn describe(&self) -> String {
        let args: Vec<String> = self
            .args()
            .iter()
            .enumerate()
            .map(|(i, (dt, shape, nd))| match shape {
                Some(s) => format!("argument {i}: {}", describe(*dt, s)),
                None => format!("argument {i}: {dt}, {nd} dim(s)"),
            })
            .collect();
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
        let show = |a: &(DType, Option<Vec<usize>>, usize)| match &a.1 {
            Some(s) => describe(a.0, s),
            None => format!("{}, {} dim(s)", a.0, a.2),
        };
        let diffs: Vec<String> = now
            .iter()
            .zip(&old)
            .enumerate()
            .filter(|(_, (n, o))| n != o)
            .map(|(i, (n, o))| format!("arg {i}: now {}, before {}", show(n), show(o)))
            .collect();
        if diffs.is_empty() {
            "evicted from the cache earlier (or cleared)".into()
        } else {
            diffs.join("; ")
        }
    }
}
