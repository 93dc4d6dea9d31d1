//! Decisions read from fuzzer bytes: every choice a target makes comes from
//! here, so one byte string replays one case exactly. Past the end of the
//! data every read returns zero (the smallest choice), as libFuzzer expects
//! of a target that grows its input.

/// A reader of decisions from a byte string.
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    /// Reads decisions from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data, pos: 0 }
    }

    /// The next byte (0 past the end).
    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        let v = if n <= 256 { self.byte() as usize } else { u16::from_le_bytes([self.byte(), self.byte()]) as usize };
        v % n
    }

    /// One of `items`.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// True with probability about `percent` / 100.
    pub fn chance(&mut self, percent: u8) -> bool {
        (self.byte() as u32 * 100 / 256) < percent as u32
    }

    /// Whether every byte was read.
    pub fn exhausted(&self) -> bool {
        self.pos >= self.data.len()
    }
}
