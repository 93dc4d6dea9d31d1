//! Fusion: turns an optimized program into kernel launches.
//!
//! Elementwise instructions (unary, binary with broadcasting, `where`,
//! casts) of one output shape that feed each other become one
//! [`FusedGroup`]: a register program run tile by tile, so intermediates
//! never reach memory. Inputs from outside a group may have any broadcastable
//! shape and layout (broadcasts and views are folded into the group's loads).
//! A member whose value is needed outside the group (by another kernel or as
//! a program output) is a group output: groups may have several outputs.
//! A matrix product used only by such a group becomes the group's head: its
//! bias and activation run as an epilogue over its output.
//! A reduction that is the only consumer of a group's only output absorbs
//! the group (so `sum(x * x)` reads `x` once and never writes `x * x`).
//! Merging never creates a cycle: an instruction joins a group only if none
//! of its other inputs depends on that group.

use crate::dtype::DType;
use crate::primitive::{FusionClass, Primitive};
use crate::program::Program;

/// One op of a fused group, reading registers.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedOp {
    /// An elementwise primitive.
    pub prim: Primitive,
    /// Registers read: `0..inputs.len()` are the group's inputs, then one
    /// register per earlier op.
    pub args: Vec<usize>,
    /// Output dtype.
    pub dtype: DType,
}

/// A fused elementwise kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedGroup {
    /// Dtype of each input register.
    pub inputs: Vec<DType>,
    /// The ops, in order; op `k` writes register `inputs.len() + k`.
    pub ops: Vec<FusedOp>,
    /// Registers written to memory, in the order of the step's outputs.
    pub outputs: Vec<usize>,
}

impl FusedGroup {
    /// A group of one op reading inputs `0..n`.
    pub fn single(prim: Primitive, inputs: Vec<DType>, dtype: DType) -> FusedGroup {
        let n = inputs.len();
        FusedGroup { inputs, ops: vec![FusedOp { prim, args: (0..n).collect(), dtype }], outputs: vec![n] }
    }

    /// The dtype of a register.
    pub fn reg_dtype(&self, r: usize) -> DType {
        if r < self.inputs.len() {
            self.inputs[r]
        } else {
            self.ops[r - self.inputs.len()].dtype
        }
    }
}

/// What a step runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Kernel {
    /// One primitive through `backend::cpu::eval`.
    Single(Primitive),
    /// A fused elementwise group.
    Fused(FusedGroup),
    /// A matrix product whose result feeds a fused elementwise epilogue
    /// (bias, activation): the step reads `a`, `b`, then the group's other
    /// inputs; the product is the group's input register 0 and is never an
    /// output of the step.
    MatmulEpilogue(FusedGroup),
    /// A fused group whose single output feeds only a reduction: the
    /// producer's values never reach memory. `source` is the reduced value
    /// (its shape is the group's iteration space).
    ReduceFused {
        /// The producer.
        group: FusedGroup,
        /// The `Primitive::Reduce`.
        reduce: Primitive,
        /// The instruction whose value is reduced.
        source: usize,
    },
}

/// A planned kernel with the program values it reads and writes.
#[derive(Clone, Debug)]
pub struct Planned {
    /// The kernel.
    pub kernel: Kernel,
    /// Values read.
    pub inputs: Vec<usize>,
    /// Values written.
    pub outputs: Vec<usize>,
}

/// True when value `from` depends on a member of group `g` at kernel level:
/// reading any member of another group means depending on every input of
/// that group, because a group runs as one kernel.
fn depends_on_group(
    p: &Program,
    from: usize,
    groups: &[Vec<usize>],
    heads: &[Option<usize>],
    group_of: &[Option<usize>],
    g: usize,
) -> bool {
    let mut stack = vec![from];
    let mut seen = vec![false; p.instrs.len()];
    let mut seen_group = vec![false; groups.len()];
    while let Some(x) = stack.pop() {
        if std::mem::replace(&mut seen[x], true) {
            continue;
        }
        match group_of[x] {
            Some(h) if h == g => return true,
            Some(h) if !std::mem::replace(&mut seen_group[h], true) => {
                for &m in groups[h].iter().chain(heads[h].iter()) {
                    stack.extend(p.instrs[m].inputs.iter().copied());
                }
            }
            Some(_) => {}
            None => stack.extend(p.instrs[x].inputs.iter().copied()),
        }
    }
    false
}

/// Groups elementwise instructions and orders all kernels.
pub fn plan(p: &Program) -> Vec<Planned> {
    let n = p.instrs.len();
    let consumers = p.consumers();
    let is_output: Vec<bool> = (0..n).map(|i| p.outputs.contains(&i)).collect();
    let mut group_of: Vec<Option<usize>> = vec![None; n];
    let mut groups: Vec<Vec<usize>> = vec![];
    // A group may start with a matmul whose only use is the group (epilogue fusion).
    let mut heads: Vec<Option<usize>> = vec![];
    for i in 0..n {
        if p.instrs[i].prim.class() != FusionClass::Elementwise {
            continue;
        }
        let shape = &p.instrs[i].shape;
        let mut joined = None;
        for &x in &p.instrs[i].inputs {
            let Some(g) = group_of[x] else { continue };
            if p.instrs[x].shape != *shape || joined == Some(g) {
                continue;
            }
            let others_ok = p.instrs[i]
                .inputs
                .iter()
                .filter(|&&y| group_of[y] != Some(g))
                .all(|&y| !depends_on_group(p, y, &groups, &heads, &group_of, g));
            if others_ok {
                joined = Some(g);
                break;
            }
        }
        let g = joined.unwrap_or_else(|| {
            let head = p.instrs[i].inputs.iter().copied().find(|&x| {
                matches!(p.instrs[x].prim, Primitive::Matmul)
                    && p.instrs[x].shape == *shape
                    && consumers[x] == [i]
                    && !is_output[x]
                    && group_of[x].is_none()
            });
            groups.push(vec![]);
            heads.push(head);
            if let Some(h) = head {
                group_of[h] = Some(groups.len() - 1);
            }
            groups.len() - 1
        });
        groups[g].push(i);
        group_of[i] = Some(g);
        // Other same-shape groups this instruction reads merge into `g` when
        // neither reaches the other through a kernel outside both.
        for &y in &p.instrs[i].inputs {
            let Some(h) = group_of[y] else { continue };
            if h == g || p.instrs[y].shape != *shape || (heads[h].is_some() && heads[g].is_some()) {
                continue;
            }
            let external = |grp: usize| -> Vec<usize> {
                groups[grp]
                    .iter()
                    .flat_map(|&m| p.instrs[m].inputs.iter().copied())
                    .chain(heads[grp].map(|hd| p.instrs[hd].inputs.clone()).unwrap_or_default())
                    .filter(|&x| group_of[x] != Some(grp))
                    .collect()
            };
            let h_reaches_g = external(g)
                .iter()
                .any(|&x| group_of[x] != Some(h) && depends_on_group(p, x, &groups, &heads, &group_of, h));
            let g_reaches_h = external(h)
                .iter()
                .any(|&x| group_of[x] != Some(g) && depends_on_group(p, x, &groups, &heads, &group_of, g));
            if h_reaches_g || g_reaches_h {
                continue;
            }
            let moved = std::mem::take(&mut groups[h]);
            for &m in &moved {
                group_of[m] = Some(g);
            }
            if let Some(hd) = heads[h].take() {
                group_of[hd] = Some(g);
                heads[g] = Some(hd);
            }
            groups[g].extend(moved);
            groups[g].sort_unstable();
        }
    }

    // Build the planned kernels; `first` orders them by their first instruction.
    let mut planned: Vec<(usize, Planned)> = vec![];
    let mut absorbed = vec![false; n];
    let mut reductions = vec![];
    for (i, ins) in p.instrs.iter().enumerate() {
        match ins.prim.class() {
            FusionClass::Leaf | FusionClass::Elementwise => {}
            _ if heads.contains(&Some(i)) => {}
            FusionClass::Reduce if matches!(ins.prim, Primitive::Reduce { .. }) => reductions.push(i),
            _ => planned.push((
                i,
                Planned { kernel: Kernel::Single(ins.prim.clone()), inputs: ins.inputs.clone(), outputs: vec![i] },
            )),
        }
    }
    for (g, members) in groups.iter().enumerate() {
        if members.is_empty() {
            continue;
        }
        let head = heads[g];
        let mut inputs: Vec<usize> = head.into_iter().collect();
        for &m in members {
            for &x in &p.instrs[m].inputs {
                if group_of[x] != Some(g) && !inputs.contains(&x) {
                    inputs.push(x);
                }
            }
        }
        let reg = |v: usize| -> usize {
            match inputs.iter().position(|&x| x == v) {
                Some(r) => r,
                None => inputs.len() + members.iter().position(|&m| m == v).expect("member"),
            }
        };
        let ops = members
            .iter()
            .map(|&m| FusedOp {
                prim: p.instrs[m].prim.clone(),
                args: p.instrs[m].inputs.iter().map(|&x| reg(x)).collect(),
                dtype: p.instrs[m].dtype,
            })
            .collect();
        let outs: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&m| is_output[m] || consumers[m].iter().any(|&c| group_of[c] != Some(g)))
            .collect();
        let group = FusedGroup {
            inputs: inputs.iter().map(|&x| p.instrs[x].dtype).collect(),
            ops,
            outputs: outs.iter().map(|&o| reg(o)).collect(),
        };
        // A reduction that alone consumes the group's only output absorbs it.
        let absorbing = match outs.as_slice() {
            [v] if head.is_none() && !is_output[*v] && consumers[*v].len() == 1 => {
                let r = consumers[*v][0];
                matches!(p.instrs[r].prim, Primitive::Reduce { .. }).then_some(r)
            }
            _ => None,
        };
        if let Some(r) = absorbing {
            absorbed[r] = true;
            let source = outs[0];
            let kernel = Kernel::ReduceFused { group, reduce: p.instrs[r].prim.clone(), source };
            planned.push((members[0], Planned { kernel, inputs, outputs: vec![r] }));
            continue;
        }
        let (kernel, first) = match head {
            Some(h) => {
                // The step reads the product's operands instead of the product.
                inputs.splice(0..1, p.instrs[h].inputs.iter().copied());
                (Kernel::MatmulEpilogue(group), h)
            }
            None => (Kernel::Fused(group), members[0]),
        };
        planned.push((first, Planned { kernel, inputs, outputs: outs }));
    }
    for r in reductions {
        if !absorbed[r] {
            let ins = &p.instrs[r];
            planned.push((
                r,
                Planned { kernel: Kernel::Single(ins.prim.clone()), inputs: ins.inputs.clone(), outputs: vec![r] },
            ));
        }
    }
    order(planned, n)
}

/// Topological order of kernels (a kernel runs after the producers of all
/// its inputs), ties broken by first instruction.
fn order(mut planned: Vec<(usize, Planned)>, n: usize) -> Vec<Planned> {
    planned.sort_by_key(|(first, _)| *first);
    let mut producer = vec![usize::MAX; n];
    for (k, (_, pl)) in planned.iter().enumerate() {
        for &o in &pl.outputs {
            producer[o] = k;
        }
    }
    let deps: Vec<Vec<usize>> = planned
        .iter()
        .map(|(_, pl)| pl.inputs.iter().map(|&i| producer[i]).filter(|&k| k != usize::MAX).collect())
        .collect();
    let mut done = vec![false; planned.len()];
    let mut out_order = Vec::with_capacity(planned.len());
    while out_order.len() < planned.len() {
        let next = (0..planned.len())
            .find(|&k| !done[k] && deps[k].iter().all(|&d| done[d]))
            .expect("the kernel graph is acyclic");
        done[next] = true;
        out_order.push(next);
    }
    let mut slots: Vec<Option<Planned>> = planned.into_iter().map(|(_, p)| Some(p)).collect();
    out_order.into_iter().map(|k| slots[k].take().expect("each kernel once")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::tests::trace;

    fn fused_sizes(plan: &[Planned]) -> Vec<usize> {
        plan.iter()
            .filter_map(|k| match &k.kernel {
                Kernel::Fused(g) => Some(g.ops.len()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn elementwise_chain_is_one_kernel() {
        let p = trace(&[&[8]], |a| {
            let x = &a[0];
            Ok(vec![((x * 0.5f32)? * (x.tanh()? + 1.0f32)?)?])
        });
        let k = plan(&p);
        assert_eq!(k.len(), 1);
        assert_eq!(fused_sizes(&k), vec![4]);
    }

    #[test]
    fn bias_and_activation_fuse_into_the_matmul() {
        let p = trace(&[&[4, 8], &[8, 16], &[16]], |a| Ok(vec![a[0].matmul(&a[1])?.add(&a[2])?.maximum(0.0f32)?]));
        let k = plan(&p);
        assert_eq!(k.len(), 1, "{k:?}");
        match &k[0].kernel {
            Kernel::MatmulEpilogue(g) => assert_eq!(g.ops.len(), 2),
            other => panic!("expected a matmul epilogue, got {other:?}"),
        }
        assert_eq!(k[0].inputs.len(), 3 + 1, "a, b, bias and the 0.0 constant");
    }

    #[test]
    fn sum_of_squares_reads_its_input_once() {
        let p = trace(&[&[64, 32]], |a| Ok(vec![(&a[0] * &a[0])?.sum(1, false)?.sqrt()?]));
        let k = plan(&p);
        assert_eq!(k.len(), 2, "{k:?}");
        assert!(matches!(&k[0].kernel, Kernel::ReduceFused { group, .. } if group.ops.len() == 1));
        assert_eq!(k[0].inputs, vec![p.inputs[0].unwrap()], "the reduction reads x, not x * x");
    }

    #[test]
    fn intermediate_used_elsewhere_becomes_an_output() {
        let p = trace(&[&[8, 4]], |a| {
            let e = a[0].exp()?;
            let s = e.sum(1, true)?;
            Ok(vec![(e / s)?])
        });
        let k = plan(&p);
        // exp group, sum, div group: the div cannot join exp's group because
        // it also reads the sum, which depends on that group.
        assert_eq!(k.len(), 3);
        assert!(matches!(k[1].kernel, Kernel::Single(Primitive::Reduce { .. })));
    }
}
