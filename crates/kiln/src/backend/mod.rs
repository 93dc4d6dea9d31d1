//! Backends: where primitives run.

pub mod cpu;
