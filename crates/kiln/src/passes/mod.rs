//! Optimization passes over a [`Program`]. Each pass is a small unit behind
//! the [`Pass`] trait; [`optimize`] runs them as a list.

pub mod cse;
pub mod dce;
pub mod fuse;
pub mod remat;
pub mod simplify;
pub mod statistics;

use crate::program::Program;

/// A rewrite of a program that keeps its results.
pub trait Pass {
    /// Name shown by `explain`.
    fn name(&self) -> &'static str;
    /// Rewrites the program in place.
    fn run(&self, p: &mut Program);
}

/// The standard pipeline: remove no-ops, merge repeated work, turn
/// reductions of reductions into one-pass statistics, drop dead code, then
/// copy shared elementwise values per reader (so fusion never has to write
/// them). `shapeless` keeps ops whose no-op status depends on the traced
/// shapes.
pub fn optimize(p: &mut Program, shapeless: bool) {
    let passes: [&dyn Pass; 5] =
        [&simplify::Simplify { shapeless }, &cse::Cse, &statistics::Statistics, &dce::Dce, &remat::Remat];
    for pass in passes {
        pass.run(p);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::array::Array;
    use crate::program::Program;
    use crate::{DType, Result};

    /// Traces `f` on f32 placeholders of the given shapes.
    pub fn trace(shapes: &[&[usize]], f: impl Fn(&[Array]) -> Result<Vec<Array>>) -> Program {
        let params: Vec<Array> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| Array::placeholder(i, s.to_vec(), DType::F32, crate::Device::Cpu))
            .collect();
        let outs = f(&params).expect("trace");
        Program::from_graph(&params, &outs).expect("program")
    }

    /// Number of instructions named `name`.
    pub fn count(p: &Program, name: &str) -> usize {
        p.instrs.iter().filter(|i| i.prim.name() == name).count()
    }
}
