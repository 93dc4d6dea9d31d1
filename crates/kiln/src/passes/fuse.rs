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
use crate::primitive::{FusionClass, Primitive, ReduceOp};
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
    /// Machine code for the group, compiled by the CPU backend on first run
    /// and shared by clones (see [`jit`](crate::backend::cpu::jit)).
    pub code: crate::backend::cpu::jit::CodeSlot,
    /// The tile registers' plan of the interpreter, made on first run and
    /// shared by clones (see [`crate::backend::cpu::fused::PlanSlot`]).
    pub plan: crate::backend::cpu::fused::PlanSlot,
}

impl FusedGroup {
    /// A group of one op reading inputs `0..n`.
    pub fn single(prim: Primitive, inputs: Vec<DType>, dtype: DType) -> FusedGroup {
        let n = inputs.len();
        FusedGroup {
            inputs,
            ops: vec![FusedOp { prim, args: (0..n).collect(), dtype }],
            outputs: vec![n],
            code: Default::default(),
            plan: Default::default(),
        }
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
    /// Reductions over the same axes of values of one shape, computed
    /// together from one pass over their inputs: a fused group produces
    /// the reduced values tile by tile (its outputs, which never reach
    /// memory) and each reduction folds one of them. The step writes one
    /// value per reduction.
    ReduceFused {
        /// The producer (outputs: the distinct reduced values).
        group: FusedGroup,
        /// Each reduction and the index of the group output it reduces.
        reductions: Vec<(ReduceOp, usize)>,
        /// The reduced axes (of the iteration space).
        axes: Vec<usize>,
        /// An instruction whose shape is the iteration space.
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
    /// The program instructions the kernel computes, in program order (a
    /// fused group's members, its matmul head, its reductions): a step run
    /// op by op evaluates these (see `Executable::run`).
    pub members: Vec<usize>,
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

    let reds = plan_reductions(p, &groups, &heads, &group_of, &consumers, &is_output);

    // Build the planned kernels; `first` orders them by their first instruction.
    let mut planned: Vec<(usize, Planned)> = vec![];
    for (i, ins) in p.instrs.iter().enumerate() {
        match ins.prim.class() {
            FusionClass::Leaf | FusionClass::Elementwise => {}
            _ if heads.contains(&Some(i)) => {}
            FusionClass::Reduce if matches!(ins.prim, Primitive::Reduce { .. }) => {}
            _ => planned.push((
                i,
                Planned {
                    kernel: Kernel::Single(ins.prim.clone()),
                    inputs: ins.inputs.clone(),
                    outputs: vec![i],
                    members: vec![i],
                },
            )),
        }
    }
    let absorbed: Vec<bool> = (0..groups.len()).map(|g| reds.iter().any(|k| k.group == Some(g))).collect();
    for (g, members) in groups.iter().enumerate() {
        if members.is_empty() || absorbed[g] {
            continue;
        }
        let head = heads[g];
        let (group, mut inputs, _) = build_group(p, members, head, &[], |m| {
            is_output[m] || consumers[m].iter().any(|&c| group_of[c] != Some(g))
        });
        let (kernel, first) = match head {
            Some(h) => {
                // The step reads the product's operands instead of the product.
                inputs.splice(0..1, p.instrs[h].inputs.iter().copied());
                (Kernel::MatmulEpilogue(group), h)
            }
            None => (Kernel::Fused(group), members[0]),
        };
        let outputs = members
            .iter()
            .copied()
            .filter(|&m| is_output[m] || consumers[m].iter().any(|&c| group_of[c] != Some(g)))
            .collect();
        let mut all: Vec<usize> = members.iter().copied().chain(head).collect();
        all.sort_unstable();
        planned.push((first, Planned { kernel, inputs, outputs, members: all }));
    }
    for k in &reds {
        let first_red = k.reds[0];
        let Primitive::Reduce { axes, .. } = &p.instrs[first_red].prim else { unreachable!("reductions only") };
        if k.group.is_none() && k.reds.len() == 1 {
            let ins = &p.instrs[first_red];
            planned.push((
                first_red,
                Planned {
                    kernel: Kernel::Single(ins.prim.clone()),
                    inputs: ins.inputs.clone(),
                    outputs: vec![first_red],
                    members: vec![first_red],
                },
            ));
            continue;
        }
        let members: &[usize] = k.group.map_or(&[], |g| &groups[g]);
        let sources: Vec<usize> = k.reds.iter().map(|&r| p.instrs[r].inputs[0]).collect();
        let (group, inputs, out_index) = build_group(p, members, None, &sources, |_| false);
        let reductions = k
            .reds
            .iter()
            .zip(out_index)
            .map(|(&r, i)| {
                let Primitive::Reduce { op, .. } = p.instrs[r].prim else { unreachable!("reductions only") };
                (op, i)
            })
            .collect();
        let first = members.first().copied().unwrap_or(first_red).min(first_red);
        let kernel = Kernel::ReduceFused { group, reductions, axes: axes.clone(), source: sources[0] };
        let mut all: Vec<usize> = members.iter().chain(&k.reds).copied().collect();
        all.sort_unstable();
        planned.push((first, Planned { kernel, inputs, outputs: k.reds.clone(), members: all }));
    }
    order(planned, n)
}

/// Builds the register program of `members` (and of a matmul `head`, read
/// as input register 0). Members for which `is_out` holds are the group's
/// outputs, then each value of `extra_outs` (a member, or an outside value
/// copied through an identity op). Returns the group, the values it reads
/// and the index in the group's outputs of each of `extra_outs`.
fn build_group(
    p: &Program,
    members: &[usize],
    head: Option<usize>,
    extra_outs: &[usize],
    is_out: impl Fn(usize) -> bool,
) -> (FusedGroup, Vec<usize>, Vec<usize>) {
    let mut inputs: Vec<usize> = head.into_iter().collect();
    let outside = |x: usize| !members.contains(&x) && Some(x) != head;
    for &x in members.iter().flat_map(|&m| p.instrs[m].inputs.iter()).chain(extra_outs) {
        if outside(x) && !inputs.contains(&x) {
            inputs.push(x);
        }
    }
    let n_in = inputs.len();
    let reg = |v: usize| -> usize {
        match inputs.iter().position(|&x| x == v) {
            Some(r) => r,
            None => n_in + members.iter().position(|&m| m == v).expect("member"),
        }
    };
    let mut ops: Vec<FusedOp> = members
        .iter()
        .map(|&m| FusedOp {
            prim: p.instrs[m].prim.clone(),
            args: p.instrs[m].inputs.iter().map(|&x| reg(x)).collect(),
            dtype: p.instrs[m].dtype,
        })
        .collect();
    let mut outputs: Vec<usize> = members.iter().copied().filter(|&m| is_out(m)).map(reg).collect();
    let mut copied: Vec<(usize, usize)> = vec![];
    let mut extra = vec![];
    for &v in extra_outs {
        let r = if outside(v) {
            // Registers written out are op results: copy an input through.
            match copied.iter().find(|(x, _)| *x == v) {
                Some(&(_, r)) => r,
                None => {
                    let dt = p.instrs[v].dtype;
                    ops.push(FusedOp { prim: Primitive::AsType(dt), args: vec![reg(v)], dtype: dt });
                    copied.push((v, n_in + ops.len() - 1));
                    n_in + ops.len() - 1
                }
            }
        } else {
            reg(v)
        };
        if !outputs.contains(&r) {
            outputs.push(r);
        }
        extra.push(outputs.iter().position(|&o| o == r).expect("just pushed"));
    }
    let group = FusedGroup {
        inputs: inputs.iter().map(|&x| p.instrs[x].dtype).collect(),
        ops,
        outputs,
        code: Default::default(),
        plan: Default::default(),
    };
    (group, inputs, extra)
}

/// A reduction kernel being planned: reductions over the same axes of
/// values of one shape, and the elementwise group it absorbs, if any.
struct RedKernel {
    group: Option<usize>,
    reds: Vec<usize>,
}

/// Plans reduction kernels. A group whose values feed only reductions over
/// the same axes is absorbed by them (its values never reach memory); a
/// reduction of a value that another reduction kernel already reads (same
/// axes, same shape) joins it, so `max(x)` and `sumexp(x)`, or `mean(x)`
/// and `var(x)`, read `x` once. Joining never creates a cycle between kernels.
fn plan_reductions(
    p: &Program,
    groups: &[Vec<usize>],
    heads: &[Option<usize>],
    group_of: &[Option<usize>],
    consumers: &[Vec<usize>],
    is_output: &[bool],
) -> Vec<RedKernel> {
    let n = p.instrs.len();
    let red_axes = |r: usize| match &p.instrs[r].prim {
        Primitive::Reduce { axes, .. } => Some(axes),
        _ => None,
    };
    let mut kernels: Vec<RedKernel> = vec![];
    let mut kernel_of: Vec<Option<usize>> = vec![None; n];
    for (g, members) in groups.iter().enumerate() {
        if members.is_empty() || heads[g].is_some() || members.iter().any(|&m| is_output[m]) {
            continue;
        }
        let mut reds: Vec<usize> =
            members.iter().flat_map(|&m| consumers[m].iter().copied()).filter(|&c| group_of[c] != Some(g)).collect();
        reds.sort_unstable();
        reds.dedup();
        let Some(axes) = reds.first().and_then(|&r| red_axes(r)) else { continue };
        if reds.iter().all(|&r| red_axes(r) == Some(axes)) {
            for &r in &reds {
                kernel_of[r] = Some(kernels.len());
            }
            kernels.push(RedKernel { group: Some(g), reds });
        }
    }
    for r in 0..n {
        let Some(axes) = red_axes(r) else { continue };
        if kernel_of[r].is_some() {
            continue;
        }
        let v = p.instrs[r].inputs[0];
        let reads_v = |k: &RedKernel| {
            k.reds.iter().any(|&q| p.instrs[q].inputs[0] == v)
                || k.group.is_some_and(|g| groups[g].iter().any(|&m| p.instrs[m].inputs.contains(&v)))
        };
        let same_space = |k: &RedKernel| {
            let q = k.reds[0];
            red_axes(q) == Some(axes) && p.instrs[p.instrs[q].inputs[0]].shape == p.instrs[v].shape
        };
        let mut joined = false;
        for k in 0..kernels.len() {
            if !same_space(&kernels[k]) || !reads_v(&kernels[k]) {
                continue;
            }
            kernel_of[r] = Some(k);
            if acyclic(p, group_of, &kernel_of, &kernels, groups.len()) {
                kernels[k].reds.push(r);
                joined = true;
                break;
            }
            kernel_of[r] = None;
        }
        if !joined {
            kernel_of[r] = Some(kernels.len());
            kernels.push(RedKernel { group: None, reds: vec![r] });
        }
    }
    for k in &mut kernels {
        k.reds.sort_unstable();
    }
    kernels
}

/// True when the kernel graph has no cycle, with instructions mapped to
/// kernels as planned so far: groups (absorbed ones belong to their
/// reduction kernel), reduction kernels, and single instructions. A
/// reduction kernel reading one of its own reductions is a cycle too.
fn acyclic(
    p: &Program,
    group_of: &[Option<usize>],
    kernel_of: &[Option<usize>],
    kernels: &[RedKernel],
    n_groups: usize,
) -> bool {
    let n = p.instrs.len();
    let n_red = kernels.len();
    let absorbed_by: Vec<Option<usize>> =
        (0..n_groups).map(|g| kernels.iter().position(|k| k.group == Some(g))).collect();
    let node = |i: usize| -> usize {
        match (group_of[i], kernel_of[i]) {
            (Some(g), _) => absorbed_by[g].map_or(g, |k| n_groups + k),
            (None, Some(k)) => n_groups + k,
            (None, None) => n_groups + n_red + i,
        }
    };
    let total = n_groups + n_red + n;
    let mut edges: Vec<Vec<usize>> = vec![vec![]; total];
    let mut indeg = vec![0usize; total];
    for (i, ins) in p.instrs.iter().enumerate() {
        let to = node(i);
        for &x in &ins.inputs {
            let from = node(x);
            if from != to {
                edges[from].push(to);
                indeg[to] += 1;
            } else if kernel_of[x].is_some() {
                // A reduction's value is only ready after the whole kernel:
                // the kernel cannot read it itself.
                return false;
            }
        }
    }
    let mut stack: Vec<usize> = (0..total).filter(|&k| indeg[k] == 0).collect();
    let mut seen = 0;
    while let Some(k) = stack.pop() {
        seen += 1;
        for &t in &edges[k] {
            indeg[t] -= 1;
            if indeg[t] == 0 {
                stack.push(t);
            }
        }
    }
    seen == total
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

    #[test]
    fn sibling_reductions_share_one_kernel() {
        let p = trace(&[&[16, 8]], |a| {
            let x = &a[0];
            Ok(vec![x.max(1, true)?, x.sum(1, false)?, (x * x)?.mean(1, true)?, x.sum(0, false)?])
        });
        let k = plan(&p);
        let fused: Vec<&Planned> = k.iter().filter(|k| matches!(k.kernel, Kernel::ReduceFused { .. })).collect();
        assert_eq!(fused.len(), 1, "{k:?}");
        assert_eq!(fused[0].outputs.len(), 3, "max, sum and mean over axis 1: {k:?}");
        assert_eq!(fused[0].inputs, vec![p.inputs[0].unwrap()], "x is read once");
        // The sum over axis 0 is another iteration order: a kernel of its own.
        assert_eq!(k.len(), 2, "{k:?}");
    }

    #[test]
    fn a_reduction_of_a_reduction_is_not_a_sibling() {
        let p = trace(&[&[16, 8]], |a| {
            let x = &a[0];
            Ok(vec![(x * &x.max(1, true)?)?.sum(1, false)?])
        });
        let k = plan(&p);
        assert_eq!(k.len(), 2, "max first, then the sum that reads it: {k:?}");
        assert!(matches!(k[0].kernel, Kernel::Single(Primitive::Reduce { .. })), "{k:?}");
    }
}
