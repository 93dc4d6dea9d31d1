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
use crate::backend::cpu::Buffer;
use crate::error::{shape_str, Error, Result};

const ROTATIONS: [u32; 8] = [13, 15, 26, 6, 17, 29, 16, 24];
/// Threefry's key-schedule parity constant.
const PARITY: u32 = 0x1BD1_1BDA;

/// The Threefry-2x32 block function (20 rounds): encrypts the counter `ctr`
/// under `key`.
#[inline]
pub fn threefry2x32(key: [u32; 2], ctr: [u32; 2]) -> [u32; 2] {
    let ks = [key[0], key[1], key[0] ^ key[1] ^ PARITY];
    let (mut x0, mut x1) = (ctr[0].wrapping_add(ks[0]), ctr[1].wrapping_add(ks[1]));
    for group in 0..5usize {
        for r in 0..4 {
            x0 = x0.wrapping_add(x1);
            x1 = x1.rotate_left(ROTATIONS[(group % 2) * 4 + r]) ^ x0;
        }
        // Key injection after every 4 rounds.
        let s = group + 1;
        x0 = x0.wrapping_add(ks[s % 3]);
        x1 = x1.wrapping_add(ks[(s + 1) % 3]).wrapping_add(s as u32);
    }
    [x0, x1]
}

/// The two words of a `u32[2]` key array (any layout).
pub fn key_words(key: &Data) -> Result<[u32; 2]> {
    let words = match (key.layout.shape.as_slice(), key.to_vec::<u32>()) {
        ([2], Some(w)) => w,
        _ => {
            return Err(Error::Invalid {
                op: "random_bits",
                msg: format!(
                    "a key is a u32 array of shape (2), got {}{}",
                    key.buffer.dtype(),
                    shape_str(&key.layout.shape)
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
    let bits = fill(n, |start, out| {
        let mut i = start;
        let end = start + out.len();
        let mut slots = out.iter_mut();
        if i % 2 == 1 && i < end {
            slots.next().expect("one slot per index").write(block(i / 2)[1]);
            i += 1;
        }
        while i < end {
            let [w0, w1] = block(i / 2);
            slots.next().expect("one slot per index").write(w0);
            if i + 1 < end {
                slots.next().expect("one slot per index").write(w1);
            }
            i += 2;
        }
    });
    Ok(Buffer::from_vec(bits))
}
