//! Optimization passes over a [`Program`]. Each pass is a small unit behind
//! the [`Pass`] trait; [`optimize`] runs them as a list.

pub mod cse;
pub mod dce;
pub mod fuse;
pub mod remat;
pub mod simplify;
pub mod statistics;

use crate::primitive::Primitive;
use crate::program::Program;

/// What the passes need to know about the backend that will run the
/// program: its costs, not its code. Passes stay backend-neutral by asking
/// these questions instead of importing a backend; each backend answers
/// them for its own kernels.
pub trait Facts {
    /// True when `p` costs more to recompute than to read back from cache
    /// (transcendental functions and the like), so a value it makes is kept
    /// rather than recomputed per reader (see [`remat::keeps`]).
    fn costly(&self, p: &Primitive) -> bool;
    /// True when a chain of kernels iterating over `shape` runs block of
    /// leading rows by block of rows, each block in cache across the chain
    /// (see [`remat`]).
    fn splits_rows(&self, shape: &[usize]) -> bool;
    /// Most instructions in one fused group (see [`fuse::plan`]): past this
    /// size a group's output is stored and the next group reads it back.
    fn max_group(&self) -> usize;
}

/// A rewrite of a program that keeps its results.
pub trait Pass {
    /// Name shown by `explain`.
    fn name(&self) -> &'static str;
    /// Rewrites the program in place; `facts` describe the backend that
    /// will run it. A pass may leave dead instructions behind: the
    /// pipeline runs [`dce::Dce`] after the passes that do.
    fn run(&self, p: &mut Program, facts: &dyn Facts);
}

/// The standard pipeline, in order: remove no-ops, merge repeated work,
/// turn reductions of reductions into one-pass statistics, each followed by
/// dead-code removal (the next pass then sees only live instructions), then
/// copy shared elementwise values per reader (so fusion never has to write
/// them). `shapeless` keeps ops whose no-op status depends on the traced
/// shapes.
pub fn pipeline(shapeless: bool) -> [Box<dyn Pass>; 7] {
    [
        Box::new(simplify::Simplify { shapeless }),
        Box::new(dce::Dce),
        Box::new(cse::Cse),
        Box::new(dce::Dce),
        Box::new(statistics::Statistics),
        Box::new(dce::Dce),
        Box::new(remat::Remat),
    ]
}

/// Runs the standard [`pipeline`] over `p` for a backend with `facts`.
pub fn optimize(p: &mut Program, shapeless: bool, facts: &dyn Facts) {
    for pass in pipeline(shapeless) {
        pass.run(p, facts);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::Pass;
    use crate::array::Array;
    use crate::primitive::Primitive;
    use crate::program::Program;
    use crate::{DType, Result};

    /// Facts for the passes' unit tests: today's CPU answers at the small
    /// shapes these tests trace (none is large enough to run in row blocks).
    pub struct Facts;

    impl super::Facts for Facts {
        fn costly(&self, p: &Primitive) -> bool {
            p.costly()
        }
        fn splits_rows(&self, _: &[usize]) -> bool {
            false
        }
        fn max_group(&self) -> usize {
            512
        }
    }

    /// Runs `passes` in order, each followed by dead-code removal (as the
    /// pipeline does).
    pub fn run(p: &mut Program, passes: &[&dyn Pass]) {
        for pass in passes {
            pass.run(p, &Facts);
            super::dce::Dce.run(p, &Facts);
        }
    }

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
