//! No-op removal: identity casts, reshapes, transposes, broadcasts, full
//! slices, copies, and (when not shapeless) sums, means, products and
//! extrema over size-1 axes (or over no axes). A cast of a cast that kept
//! every value (`bool -> f32 -> f64`, `f16 -> f32 -> f64`, `i32 -> f64 ->
//! f32`) casts straight from the first type, which saves a pass and keeps
//! a group of one lane width (an `f64` group with a `bool` mask in it
//! compiles; one with an `f32` value between does not).
//! In shapeless mode, ops that are no-ops only at the traced shapes stay, so
//! they can re-infer (or fail clearly) on new shapes.

use crate::dtype::DType;
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
        // Casts of value-keeping casts read the first one's input (in
        // order, so a chain collapses onto its start); the inner cast dies
        // when nothing else reads it.
        for i in 0..p.instrs.len() {
            if let (Primitive::AsType(_), &[j]) = (&p.instrs[i].prim, &p.instrs[i].inputs[..]) {
                if let (Primitive::AsType(_), &[x]) = (&p.instrs[j].prim, &p.instrs[j].inputs[..]) {
                    if keeps_values(p.instrs[x].dtype, p.instrs[j].dtype) {
                        p.instrs[i].inputs[0] = x;
                    }
                }
            }
        }
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

/// Whether every value of `from` is a value of `to` (so casting through
/// `to` changes nothing: `as` semantics convert values, and one rounding
/// happens, at the second cast).
fn keeps_values(from: DType, to: DType) -> bool {
    use DType::*;
    match from {
        Bool => true,
        U8 => to != Bool,
        I32 | U32 => matches!(to, I64 | F64) || to == from,
        F16 | BF16 => matches!(to, F32 | F64) || to == from,
        F32 => matches!(to, F32 | F64),
        I64 | F64 => to == from,
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
    fn casts_through_a_wider_type_cast_once() {
        // f32 -> f64 -> f32 is the identity; f32 -> f16 -> f64 rounds, and stays.
        let mut p = trace(&[&[4]], |a| {
            let x = &a[0];
            let back = x.astype(DType::F64)?.astype(DType::F32)?;
            let rounded = x.astype(DType::F16)?.astype(DType::F64)?;
            let mask = x.astype(DType::Bool)?.astype(DType::F32)?.astype(DType::F64)?;
            Ok(vec![back, rounded, mask])
        });
        run(&mut p, &[&Simplify { shapeless: false }]);
        assert_eq!(p.outputs[0], 0, "the round trip is the input");
        let dtypes = |v: usize| {
            let ins = &p.instrs[v];
            (p.instrs[ins.inputs[0]].dtype, ins.dtype)
        };
        assert_eq!(dtypes(p.outputs[1]), (DType::F16, DType::F64));
        assert_eq!(dtypes(p.outputs[2]), (DType::Bool, DType::F64), "bool -> f32 -> f64 is bool -> f64");
        assert_eq!(count(&p, "astype"), 4, "to f64, to f16, to bool, bool to f64");
    }

    #[test]
    fn shapeless_keeps_size_one_reductions() {
        let mut p = trace(&[&[4, 1]], |a| Ok(vec![a[0].sum(1, true)?]));
        run(&mut p, &[&Simplify { shapeless: true }]);
        assert_eq!(count(&p, "sum"), 1);
    }
}
