//! Rematerialization: an elementwise value read by several instructions is
//! recomputed for each reader instead of being written to memory once and
//! read back. Elementwise work is cheap next to a round trip through memory,
//! and it lets each reader's fused kernel (and a reduction that absorbs its
//! producer) stay self-contained: layernorm's `x - mean` is recomputed in the
//! variance reduction and in the output pass, so it is never stored.
//!
//! One exception: a costly value ([`Facts::costly`]: on the CPU `exp`,
//! `tanh`, ...) that a reduction over trailing axes reads is computed once
//! when that reduction runs block of rows by block of rows at the traced
//! shapes ([`Facts::splits_rows`]). There its block of values is in cache for the
//! other readers, and recomputing it would cost more than reading it: the
//! softmax numerator `exp(x - max)` is computed once per element, summed
//! and divided from cache (see [`keeps`]).
//!
//! Runs last (after CSE, which would merge the copies back). Copies cascade
//! to the value's own elementwise inputs; the program grows at most 2x.
//! Copies that fusion would then put in one kernel with their original
//! (both read by a product's epilogue, say) are merged back, so that the
//! kernel writes the value once ([`fuse::twins`](crate::passes::fuse::twins)).

use crate::passes::{Facts, Pass};
use crate::primitive::{FusionClass, Primitive};
use crate::program::{Instr, Program};

/// True when the shared value `v` is kept for all its readers instead of
/// recomputed per reader: it is costly and a reduction over trailing,
/// non-leading axes reads it, and that reduction's rows run block by block
/// at the traced shapes. (At other shapes, as under `shapeless`, the plan
/// stays correct, and the kept value goes through memory.)
pub fn keeps(p: &Program, consumers: &[Vec<usize>], v: usize, facts: &dyn Facts) -> bool {
    let ins = &p.instrs[v];
    let nd = ins.shape.len();
    let row_reduction = |c: usize| match &p.instrs[c].prim {
        Primitive::Reduce { axes, .. } => {
            !axes.is_empty() && !axes.contains(&0) && axes.iter().all(|&a| a >= nd - axes.len())
        }
        _ => false,
    };
    facts.costly(&ins.prim)
        && consumers[v].len() > 1
        && consumers[v].iter().any(|&c| row_reduction(c))
        && facts.splits_rows(&ins.shape)
}

/// Duplicates shared elementwise values per consumer.
pub struct Remat;

impl Remat {
    /// One forward sweep; returns whether anything was copied.
    fn sweep(p: &mut Program, budget: &mut usize, facts: &dyn Facts) -> bool {
        let consumers = p.consumers();
        let dup: Vec<bool> = (0..p.instrs.len())
            .map(|i| {
                p.instrs[i].prim.class() == FusionClass::Elementwise
                    && consumers[i].len() > 1
                    && !keeps(p, &consumers, i, facts)
            })
            .collect();
        if *budget == 0 || !dup.contains(&true) {
            return false;
        }
        let mut out: Vec<Instr> = Vec::with_capacity(p.instrs.len());
        let mut new_index = vec![0usize; p.instrs.len()];
        // (value, consumer) -> index of the copy made for that consumer.
        let mut copy_for: std::collections::HashMap<(usize, usize), usize> = Default::default();
        let mut changed = false;
        for (i, mut ins) in std::mem::take(&mut p.instrs).into_iter().enumerate() {
            for x in &mut ins.inputs {
                *x = copy_for.get(&(*x, i)).copied().unwrap_or(new_index[*x]);
            }
            new_index[i] = out.len();
            out.push(ins);
            if dup[i] {
                for &c in &consumers[i][1..] {
                    if *budget == 0 {
                        break;
                    }
                    *budget -= 1;
                    changed = true;
                    copy_for.insert((i, c), out.len());
                    out.push(out[new_index[i]].clone());
                }
            }
        }
        p.instrs = out;
        for inp in p.inputs.iter_mut().flatten() {
            *inp = new_index[*inp];
        }
        for o in &mut p.outputs {
            *o = new_index[*o];
        }
        changed
    }
}

impl Pass for Remat {
    fn name(&self) -> &'static str {
        "remat"
    }

    fn run(&self, p: &mut Program, facts: &dyn Facts) {
        let mut budget = p.instrs.len();
        // Each sweep pushes copies one level up their elementwise inputs.
        for _ in 0..8 {
            if !Remat::sweep(p, &mut budget, facts) {
                break;
            }
        }
        // Copies that fusion puts in one kernel with their original are
        // merged back (see `fuse::twins`).
        let rename = crate::passes::fuse::twins(p, facts);
        if rename.iter().enumerate().any(|(i, &r)| r != i) {
            for ins in &mut p.instrs {
                for x in &mut ins.inputs {
                    *x = rename[*x];
                }
            }
            crate::passes::dce::Dce.run(p, facts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::fuse::{plan, Kernel};
    use crate::passes::tests::{count, trace, Facts};

    #[test]
    fn layernorm_center_is_recomputed_not_stored() {
        let mut p = trace(&[&[8, 16]], |a| {
            let x = &a[0];
            let xc = (x - &x.mean(-1, true)?)?;
            let var = xc.square()?.mean(-1, true)?;
            Ok(vec![(&xc * &(var + 1e-5f32)?.rsqrt()?)?])
        });
        assert_eq!(count(&p, "sub"), 1);
        Remat.run(&mut p, &Facts);
        assert_eq!(count(&p, "sub"), 2, "x - mean is recomputed for each reader");
        let k = plan(&p, &Facts);
        let fused_reductions = k.iter().filter(|k| matches!(k.kernel, Kernel::ReduceFused { .. })).count();
        assert_eq!(fused_reductions, 1, "the variance reduction absorbs (x - mean)^2: {k:?}");
        let widest_output: usize = k
            .iter()
            .flat_map(|k| k.outputs.iter())
            .filter(|&&o| !p.outputs.contains(&o))
            .map(|&o| p.instrs[o].shape.iter().product::<usize>())
            .max()
            .unwrap_or(0);
        assert_eq!(widest_output, 8, "no (8, 16) intermediate is written");
    }

    #[test]
    fn copies_fused_into_one_kernel_are_merged_back() {
        // softmax(a @ b * scale)'s numerator: `* scale` is read by the max
        // and by `s - max`; both copies would join the product's epilogue.
        let mut p = trace(&[&[8, 16], &[16, 32]], |a| {
            let s = (a[0].matmul(&a[1])? * 0.125f32)?;
            let m = s.max(-1, true)?;
            Ok(vec![(&s - &m)?.exp()?])
        });
        Remat.run(&mut p, &Facts);
        assert_eq!(count(&p, "mul"), 1, "the copy is merged back: {p:?}");
        let k = plan(&p, &Facts);
        let epilogue = k.iter().find(|k| matches!(k.kernel, Kernel::MatmulEpilogue(_))).expect("an epilogue");
        assert_eq!(epilogue.outputs.len(), 1, "the scaled product is written once: {k:?}");
        // A shared value whose readers stay in different kernels keeps its copies.
        let mut q = trace(&[&[8, 16]], |a| {
            let xc = (&a[0] - &a[0].mean(-1, true)?)?;
            Ok(vec![(&xc * &xc.square()?.mean(-1, true)?)?])
        });
        Remat.run(&mut q, &Facts);
        assert_eq!(count(&q, "sub"), 2);
    }

    #[test]
    fn copies_are_bounded() {
        // A ladder of diamonds would copy exponentially without the budget.
        let mut p = trace(&[&[4]], |a| {
            let mut x = a[0].clone();
            for _ in 0..12 {
                let e = x.exp()?;
                x = (e.sin()? + e.cos()?)?;
            }
            Ok(vec![x])
        });
        let before = p.instrs.len();
        Remat.run(&mut p, &Facts);
        assert!(p.instrs.len() <= 2 * before, "{} > 2 * {before}", p.instrs.len());
    }
}
