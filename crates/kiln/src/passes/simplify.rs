//! No-op removal: identity casts, reshapes, transposes, broadcasts, full
//! slices, copies, and (when not shapeless) sums, means, products and
//! extrema over size-1 axes (or over no axes).
//! In shapeless mode, ops that are no-ops only at the traced shapes stay, so
//! they can re-infer (or fail clearly) on new shapes.

use crate::passes::{Facts, Pass};
use crate::primitive::{Primitive, ReduceOp};
use crate::program::Program;

/// Removes instructions that return their input unchanged.
pub struct Simplify {
    /// Keep shape-dependent no-ops.
    pub shapeless: bool,
}

impl Pass for Simplify {
    fn name(&self) -> &'static str {
        "simplify"
    }

    fn run(&self, p: &mut Program, _: &dyn Facts) {
        // One pass: each instruction's inputs are renamed before it is looked at.
        p.replace_forward(|p, i| {
            let ins = &p.instrs[i];
            let &src = ins.inputs.first()?;
            let same_sig = p.instrs[src].shape == ins.shape && p.instrs[src].dtype == ins.dtype;
            let noop = match &ins.prim {
                Primitive::AsType(_) | Primitive::Copy => same_sig,
                Primitive::Transpose { perm } => perm.iter().enumerate().all(|(a, &b)| a == b),
                Primitive::Reshape { .. }
                | Primitive::Squeeze { .. }
                | Primitive::ExpandDims { .. }
                | Primitive::BroadcastTo { .. }
                | Primitive::BroadcastLike
                | Primitive::Slice { .. } => !self.shapeless && same_sig && is_identity_view(&ins.prim),
                // Only reductions that return a single element unchanged,
                // bit for bit: not `logsumexp` (`x + ln(1)` turns -0 into
                // +0), nor the statistics and logical folds.
                Primitive::Reduce { op, axes, .. } => {
                    let shape = &p.instrs[src].shape;
                    !self.shapeless
                        && same_sig
                        && axes.iter().all(|&a| shape[a] == 1)
                        && matches!(op, ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Prod | ReduceOp::Max | ReduceOp::Min)
                }
                _ => false,
            };
            noop.then_some(src)
        });
    }
}

fn is_identity_view(prim: &Primitive) -> bool {
    match prim {
        Primitive::Slice { axes } => axes.iter().all(|a| a.step == 1 && a.start.unwrap_or(0) == 0 && a.stop.is_none()),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::tests::{count, run, trace};

    #[test]
    fn removes_identity_ops() {
        let mut p = trace(&[&[4, 1]], |a| {
            let x = &a[0];
            let y = x.astype(crate::DType::F32)?.permute(&[0, 1])?;
            let s = y.sum(1, true)?;
            Ok(vec![s.exp()?])
        });
        run(&mut p, &[&Simplify { shapeless: false }]);
        assert_eq!(count(&p, "sum"), 0);
        assert_eq!(p.instrs.len(), 2);
    }

    #[test]
    fn shapeless_keeps_size_one_reductions() {
        let mut p = trace(&[&[4, 1]], |a| Ok(vec![a[0].sum(1, true)?]));
        run(&mut p, &[&Simplify { shapeless: true }]);
        assert_eq!(count(&p, "sum"), 1);
    }
}
