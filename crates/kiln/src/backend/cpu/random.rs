//! Counter-based random bits: Threefry-2x32 with 20 rounds (Salmon et al.,
//! "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the generator JAX
//! uses).
//!
//! Element `i` of a [`random_bits`] output is word `i % 2` of the block
//! `threefry2x32(key, [i / 2 as low 32 bits, i / 2 >> 32])`. It depends only
//! on the key and on `i`: not on the shape, on how the work is split into
//! chunks, or on the number of threads.

use crate::array::Data;
use crate::backend::cpu::strided::fill;
use crate::buffer::Buffer;
use crate::error::{shape_str, Error, Result};
use crate::ops::random::threefry2x32;

/// The two words of a `u32[2]` key array (any layout).
pub fn key_words(key: &Data) -> Result<[u32; 2]> {
    let words = match (key.layout().shape.as_slice(), key.to_vec::<u32>()) {
        ([2], Ok(w)) => w,
        _ => {
            return Err(Error::Invalid {
                op: "random_bits",
                msg: format!(
                    "a key is a u32 array of shape (2), got {}{}",
                    key.buffer().dtype(),
                    shape_str(&key.layout().shape)
                ),
            })
        }
    };
    Ok([words[0], words[1]])
}

/// `u32` random bits of `shape` from a `u32[2]` key, in parallel for large
/// outputs (same numbers whatever the thread count).
pub fn random_bits(key: &Data, shape: &[usize]) -> Result<Buffer> {
    let k = key_words(key)?;
    let n: usize = shape.iter().product();
    let block = |j: usize| {
        let j = j as u64;
        threefry2x32(k, [j as u32, (j >> 32) as u32])
    };
    let bits = fill("random_bits", n, |start, out| {
        let (mut i, mut rest) = (start, out);
        if i % 2 == 1 && !rest.is_empty() {
            let (first, tail) = rest.split_at_mut(1);
            first[0].write(block(i / 2)[1]);
            (i, rest) = (i + 1, tail);
        }
        let last_index = i + rest.len().saturating_sub(1);
        let mut pairs = rest.chunks_exact_mut(2);
        for (p, pair) in pairs.by_ref().enumerate() {
            let [w0, w1] = block(i / 2 + p);
            pair[0].write(w0);
            pair[1].write(w1);
        }
        if let [last] = pairs.into_remainder() {
            last.write(block(last_index / 2)[0]);
        }
    })?;
    Ok(Buffer::from_vec(bits))
}
