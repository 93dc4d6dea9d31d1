//! One-pass statistics: rewrites a reduction that depends on another
//! reduction of the same value into a single reduction of that value, so
//! the fuser can compute both from one pass over it:
//!
//! - `sum(exp(x - max(x)))` becomes `sumexp(x)` (the softmax denominator,
//!   computed with a running maximum);
//! - `mean(square(x - mean(x)))` (or `mean(d * d)`) becomes `var(x)`
//!   (layernorm's variance, computed from blockwise moments).
//!
//! The inner reduction must reduce the same axes with `keepdims`, so that it
//! broadcasts back over `x`. The rewrite changes the reduction in place (its
//! shape and dtype stay the same); the inner reduction usually stays alive
//! for other uses (softmax divides `exp(x - max)`, layernorm centres `x`)
//! and becomes a sibling that the fuser computes in the same kernel. Only
//! `f32` and `f64` values are rewritten: for those, the one-pass forms
//! agree with the two-pass ones to within rounding.

use crate::dtype::DType;
use crate::passes::{Facts, Pass};
use crate::primitive::{BinaryOp, Primitive, ReduceOp, UnaryOp};
use crate::program::Program;

/// The pass.
pub struct Statistics;

impl Pass for Statistics {
    fn name(&self) -> &'static str {
        "statistics"
    }

    fn run(&self, p: &mut Program, facts: &dyn Facts) {
        // Consumers, built once and kept up to date as reductions are rewritten.
        let mut consumers = p.consumers();
        for r in 0..p.instrs.len() {
            let Primitive::Reduce { op, ref axes, keepdims } = p.instrs[r].prim else { continue };
            let axes = axes.clone();
            // A numerator kept for its other readers (`remat::keeps`) is
            // summed as it is: the one-pass form would compute it twice.
            let kept = || crate::passes::remat::keeps(p, &consumers, p.instrs[r].inputs[0], facts);
            let rewritten = match op {
                ReduceOp::Sum if kept() => None,
                ReduceOp::Sum => shifted_by(p, p.instrs[r].inputs[0], ReduceOp::Max, &axes, |p, e| {
                    matches!(p.instrs[e].prim, Primitive::Unary(UnaryOp::Exp)).then(|| p.instrs[e].inputs[0])
                })
                .map(|x| (ReduceOp::SumExp, x)),
                ReduceOp::Mean => shifted_by(p, p.instrs[r].inputs[0], ReduceOp::Mean, &axes, |p, s| {
                    let ins = &p.instrs[s];
                    match ins.prim {
                        Primitive::Unary(UnaryOp::Square) => Some(ins.inputs[0]),
                        Primitive::Binary(BinaryOp::Mul) if ins.inputs[0] == ins.inputs[1] => Some(ins.inputs[0]),
                        _ => None,
                    }
                })
                .map(|x| (ReduceOp::Var { ddof: 0 }, x)),
                _ => None,
            };
            if let Some((op, x)) = rewritten {
                p.instrs[r].prim = Primitive::Reduce { op, axes, keepdims };
                let old = std::mem::replace(&mut p.instrs[r].inputs, vec![x]);
                // A reduction reads one value: `r` moves from its readers to `x`'s.
                for v in old {
                    consumers[v].retain(|&c| c != r);
                }
                if let Err(at) = consumers[x].binary_search(&r) {
                    consumers[x].insert(at, r);
                }
            }
        }
    }
}

/// Matches `f(x - inner(x))` at value `v`, where `unwrap` recognizes `f` and
/// returns its argument, and `inner` is a `keepdims` reduction of `x` over
/// `axes`; returns `x`.
fn shifted_by(
    p: &Program,
    v: usize,
    inner: ReduceOp,
    axes: &[usize],
    unwrap: impl Fn(&Program, usize) -> Option<usize>,
) -> Option<usize> {
    let d = unwrap(p, v)?;
    let sub = &p.instrs[d];
    if sub.prim != Primitive::Binary(BinaryOp::Sub) {
        return None;
    }
    let (x, m) = (sub.inputs[0], sub.inputs[1]);
    let xi = &p.instrs[x];
    let same = Primitive::Reduce { op: inner, axes: axes.to_vec(), keepdims: true };
    let ok = p.instrs[m].prim == same
        && p.instrs[m].inputs[0] == x
        && matches!(xi.dtype, DType::F32 | DType::F64)
        && sub.dtype == xi.dtype
        && sub.shape == xi.shape;
    ok.then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::tests::{count, run, trace};

    #[test]
    fn softmax_denominator_becomes_sumexp() {
        let mut p = trace(&[&[4, 8]], |a| Ok(vec![a[0].softmax(-1)?]));
        run(&mut p, &[&Statistics]);
        assert_eq!(count(&p, "sumexp"), 1);
        assert_eq!(count(&p, "sum"), 0);
        assert_eq!(count(&p, "max"), 1, "the max still shifts the numerator");
    }

    #[test]
    fn centred_mean_of_squares_becomes_var() {
        let mut p = trace(&[&[4, 8]], |a| {
            let m = a[0].mean(-1, true)?;
            let d = (&a[0] - &m)?;
            Ok(vec![(&d * &d)?.mean(-1, true)?, d.square()?.mean(-1, false)?])
        });
        run(&mut p, &[&Statistics]);
        assert_eq!(count(&p, "var"), 2);
        assert_eq!(count(&p, "mean"), 0, "the inner mean is dead once both use var");
        assert_eq!(p.instrs[p.outputs[1]].shape, vec![4]);
    }

    #[test]
    fn different_axes_or_no_keepdims_are_left_alone() {
        let mut p = trace(&[&[4, 8]], |a| {
            let m = a[0].max(0, true)?;
            let s1 = (&a[0] - &m)?.exp()?.sum(1, true)?;
            let m2 = a[0].mean(1, true)?;
            let v = (&a[0] - &m2)?.square()?.sum(1, true)?; // a sum, not a mean
            let m3 = a[0].mean(1, false)?.reshape(&[4, 1])?;
            let w = (&a[0] - &m3)?.square()?.mean(1, true)?;
            Ok(vec![s1, v, w])
        });
        run(&mut p, &[&Statistics]);
        assert_eq!(count(&p, "sumexp") + count(&p, "var"), 0);
    }
}
