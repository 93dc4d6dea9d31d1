//! The CUDA executable: an optimized program planned into kernel steps
//! ([`plan`]) with the GPU backend's facts. Each fused elementwise group is
//! one generated kernel, and so is each fused reduction (its producer
//! group evaluated inside the reduction kernel, [`reduce::fold`]). The
//! fused steps right after a reduction that read its results per row run
//! in the reduction's kernel too ([`reduce::Consumer`]): first those that
//! compute one value per row (layernorm's `rsqrt(var + eps)`), once per
//! row, then one over the row's positions (softmax's division, layernorm's
//! scale and shift), so a softmax or a layernorm is one kernel. A product
//! with an epilogue is the product (cuBLAS) and then one kernel for the
//! epilogue; views cost nothing. Constants of one element are C literals
//! in the kernels that read them, not arrays. Each step keeps the kernels
//! it made ([`Memo`]), so a cache hit launches without writing a kernel's
//! source again. Values are released after their last reader, so their
//! memory returns to the stream-ordered pool while later kernels run.

use crate::array::Data;
use crate::backend::cuda::driver::{variant, Memo};
use crate::backend::cuda::reduce::Src;
use crate::backend::cuda::{elementwise, eval, matmul, reduce, source, Gpu};
use crate::backend::{for_device, Executable, StepView};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::Result;
use crate::passes::fuse::{follows, is_free, plan, Kernel, Planned};
use crate::primitive::Primitive;
use crate::program::Program;

/// A program lowered for one GPU.
#[derive(Debug)]
pub struct CudaExecutable {
    gpu: &'static Gpu,
    program: Program,
    steps: Vec<Planned>,
    /// Per step, the values no later step reads (released after it).
    frees: Vec<Vec<usize>>,
    /// Constants, moved to this GPU.
    constants: Vec<(usize, Data)>,
    /// Per value, the C literal kernels inline for it: the constants of
    /// one element.
    literals: Vec<Option<String>>,
    /// Per step, how the steps after it run inside its reduction kernel at
    /// the traced shapes (see `consumer`); shapeless calls check it again.
    consumers: Vec<Option<ConsumerPlan>>,
    /// Per step, the kernels made for it.
    memos: Vec<Memo>,
}

impl CudaExecutable {
    /// Plans `program`'s kernels and the lifetimes of its values, and moves
    /// its constants to the GPU (once, here, not on each call).
    pub fn new(gpu: &'static Gpu, program: Program) -> Result<CudaExecutable> {
        let steps = plan(&program, &super::GpuFacts);
        let n = program.instrs.len();
        let mut last = vec![usize::MAX; n];
        for (s, st) in steps.iter().enumerate() {
            for &i in st.inputs.iter().chain(&st.members) {
                last[i] = s;
            }
        }
        let mut keep = vec![false; n];
        for &o in &program.outputs {
            keep[o] = true;
        }
        let mut frees = vec![vec![]; steps.len()];
        for (i, &s) in last.iter().enumerate() {
            if s != usize::MAX && !keep[i] {
                frees[s].push(i);
            }
        }
        let constants = program
            .instrs
            .iter()
            .enumerate()
            .filter_map(|(i, ins)| ins.constant.as_ref().map(|d| on_gpu(gpu, d).map(|d| (i, d))))
            .collect::<Result<_>>()?;
        let literals = literals(&program)?;
        let traced = |i: usize| -> &[usize] { &program.instrs[i].shape };
        let consumers = (0..steps.len()).map(|s| consumer(&steps[s], &steps[s + 1..], &traced)).collect();
        let memos = steps.iter().map(|_| Memo::default()).collect();
        Ok(CudaExecutable { gpu, program, steps, frees, constants, literals, consumers, memos })
    }
}

/// How the steps after a reduction step run inside its kernel
/// ([`reduce::Consumer`]): per row step, then for the space step, the
/// sources of its inputs, and the program values the consumer reads as
/// its own inputs ([`Src::Input`], in order); `number` stands for the
/// rest (part of its kernel's memo variant).
#[derive(Clone, Debug)]
struct ConsumerPlan {
    rows: Vec<Vec<Src>>,
    space: Option<Vec<Src>>,
    inputs: Vec<usize>,
    number: u64,
}

impl ConsumerPlan {
    /// The number of steps it takes in.
    fn len(&self) -> usize {
        self.rows.len() + self.space.is_some() as usize
    }
}

/// Which of the steps `after` reduction step `red` can run inside its
/// kernel, and how: fused groups, first any whose outputs are one value
/// per row (the reduced axes kept as size 1) and whose other inputs are
/// constant along the row, then at most one over the reduction's space;
/// each reads the reduction's per-row results, the earlier row steps'
/// outputs, or values computed before. `None` when not even the first
/// fits. `shape_of` gives the shapes of this call.
fn consumer<'a>(red: &Planned, after: &[Planned], shape_of: &impl Fn(usize) -> &'a [usize]) -> Option<ConsumerPlan> {
    let Kernel::ReduceFused { axes, source, .. } = &red.kernel else {
        return None;
    };
    let space = shape_of(*source);
    let row: Vec<usize> = space.iter().enumerate().map(|(i, &d)| if axes.contains(&i) { 1 } else { d }).collect();
    // Whether a value of `shape` broadcast to the space is constant along
    // the reduced axes.
    let per_row = |shape: &[usize]| {
        let lead = space.len().saturating_sub(shape.len());
        shape.iter().enumerate().all(|(i, &d)| d == 1 || !axes.contains(&(lead + i)))
    };
    let mut avail: Vec<(usize, Src)> = red
        .outputs
        .iter()
        .enumerate()
        .filter(|(_, &o)| shape_of(o) == row)
        .map(|(j, &o)| (o, Src::Reduced(j)))
        .collect();
    let mut plan = ConsumerPlan { rows: vec![], space: None, inputs: vec![], number: 0 };
    for n in after {
        if !matches!(n.kernel, Kernel::Fused(_)) {
            break;
        }
        let is_row = row[..] != *space && n.outputs.iter().all(|&o| shape_of(o) == row);
        if !is_row && n.outputs.iter().any(|&o| shape_of(o) != space) {
            break;
        }
        let mut inputs = plan.inputs.clone();
        let srcs: Option<Vec<Src>> = n
            .inputs
            .iter()
            .map(|&i| {
                if let Some((_, src)) = avail.iter().find(|(v, _)| *v == i) {
                    return Some(*src);
                }
                if red.outputs.contains(&i) || (is_row && !per_row(shape_of(i))) {
                    return None;
                }
                let k = inputs.iter().position(|&v| v == i).unwrap_or_else(|| {
                    inputs.push(i);
                    inputs.len() - 1
                });
                Some(Src::Input(k))
            })
            .collect();
        let Some(srcs) = srcs else { break };
        plan.inputs = inputs;
        if is_row {
            let st = plan.rows.len();
            avail.extend(n.outputs.iter().enumerate().map(|(q, &o)| (o, Src::Row(st, q))));
            plan.rows.push(srcs);
        } else {
            plan.space = Some(srcs);
            break;
        }
    }
    let srcs = plan.rows.iter().chain(&plan.space).flatten().map(|s| match *s {
        Src::Reduced(j) => [0, j as u64, 0],
        Src::Row(st, q) => [1, st as u64, q as u64],
        Src::Input(k) => [2, k as u64, 0],
    });
    let mut parts = vec![plan.rows.len() as u64, plan.space.is_some() as u64];
    parts.extend(srcs.flatten());
    plan.number = variant(&parts) | 1;
    (plan.len() > 0).then_some(plan)
}

/// Per value of `p`, the C literal kernels inline for it: the constants of
/// one element.
fn literals(p: &Program) -> Result<Vec<Option<String>>> {
    p.instrs
        .iter()
        .map(|ins| match &ins.constant {
            Some(d) if d.layout().shape.iter().product::<usize>() == 1 => {
                Ok(source::literal(&for_device(d.device())?.to_host(d)?))
            }
            _ => Ok(None),
        })
        .collect()
}

impl CudaExecutable {
    /// The literals of values `values` (see `literals`).
    fn literals_of<'a>(&self, values: impl IntoIterator<Item = &'a usize>) -> Vec<Option<&str>> {
        values.into_iter().map(|&i| self.literals[i].as_deref()).collect()
    }
}

/// Fused step `n` as a consumer step reading `src`.
fn step<'a>(src: &'a [Src], n: &'a Planned) -> reduce::Step<'a> {
    match &n.kernel {
        Kernel::Fused(group) => reduce::Step { group, inputs: src },
        _ => unreachable!("consumer() takes fused groups"),
    }
}

/// `d` on GPU `gpu` (a copy through the host when it is elsewhere).
fn on_gpu(gpu: &'static Gpu, d: &Data) -> Result<Data> {
    if d.device() == Device::Cuda(gpu.ordinal) {
        return Ok(d.clone());
    }
    let host = for_device(d.device())?.to_host(d)?;
    for_device(Device::Cuda(gpu.ordinal))?.upload(host, &d.layout().shape)
}

impl Executable for CudaExecutable {
    fn program(&self) -> &Program {
        &self.program
    }

    fn run(&self, args: &[&Data], shapes: Option<&[Vec<usize>]>) -> Result<Vec<Data>> {
        let p = &self.program;
        let mut values: Vec<Option<Data>> = vec![None; p.instrs.len()];
        for (i, d) in &self.constants {
            values[*i] = Some(d.clone());
        }
        for (arg, slot) in p.inputs.iter().enumerate() {
            if let Some(i) = slot {
                values[*i] = Some(args[arg].clone());
            }
        }
        let shape_of = |i: usize| -> &[usize] { shapes.map_or(&p.instrs[i].shape, |s| &s[i]) };
        let follows_at = |st: &Planned| shapes.is_none_or(|sh| follows(&st.kernel, &st.members, &st.outputs, p, sh));
        let mut s = 0;
        while s < self.steps.len() {
            let st = &self.steps[s];
            let fused = follows_at(st);
            // Steps this one takes in (a reduction's consumer).
            let mut taken: &[Planned] = &[];
            match &st.kernel {
                Kernel::Fused(g) if fused => {
                    let outs = {
                        let ins: Vec<&Data> =
                            st.inputs.iter().map(|&i| values[i].as_ref().expect("inputs are computed first")).collect();
                        elementwise::run(
                            self.gpu,
                            g,
                            Some(&self.memos[s]),
                            &self.literals_of(&st.inputs),
                            &ins,
                            shape_of(st.outputs[0]),
                        )?
                    };
                    for (&o, d) in st.outputs.iter().zip(outs) {
                        values[o] = Some(d);
                    }
                }
                // A reduction, with the steps after it that read its rows
                // in the same kernel.
                Kernel::ReduceFused { group, reductions, axes, source } if fused => {
                    let replanned;
                    let plan = match shapes {
                        None => self.consumers[s].as_ref(),
                        Some(_) => {
                            // The steps that still fuse at this call's shapes.
                            let n = self.steps[s + 1..].iter().take_while(|n| follows_at(n)).count();
                            replanned = consumer(st, &self.steps[s + 1..s + 1 + n], &shape_of);
                            replanned.as_ref()
                        }
                    };
                    taken = &self.steps[s + 1..s + 1 + plan.map_or(0, |c| c.len())];
                    let (ys, ws) = {
                        let get = |i: usize| values[i].as_ref().expect("inputs are computed first");
                        let ins: Vec<&Data> = st.inputs.iter().map(|&i| get(i)).collect();
                        let cin: Vec<&Data> = plan.iter().flat_map(|c| &c.inputs).map(|&i| get(i)).collect();
                        let lits = self.literals_of(st.inputs.iter().chain(plan.iter().flat_map(|c| &c.inputs)));
                        let shapes: Vec<(Vec<usize>, DType)> =
                            st.outputs.iter().map(|&o| (shape_of(o).to_vec(), p.instrs[o].dtype)).collect();
                        let con = plan.map(|c| reduce::Consumer {
                            rows: c.rows.iter().zip(taken).map(|(src, n)| step(src, n)).collect(),
                            space: c.space.as_ref().map(|src| step(src, &taken[c.rows.len()])),
                        });
                        let memo = Some((&self.memos[s], plan.map_or(0, |c| c.number)));
                        let space = shape_of(*source);
                        let con = con.as_ref().map(|c| (c, &cin[..]));
                        reduce::fold(self.gpu, group, memo, reductions, &ins, &lits, space, axes, &shapes, con)?
                    };
                    let outs = st.outputs.iter().zip(ys).chain(taken.iter().flat_map(|n| &n.outputs).zip(ws));
                    for (&o, d) in outs {
                        values[o] = Some(d);
                    }
                }
                Kernel::MatmulEpilogue(g) if fused => {
                    let outs = {
                        let ins: Vec<&Data> =
                            st.inputs.iter().map(|&i| values[i].as_ref().expect("inputs are computed first")).collect();
                        let head = st.members.iter().copied().find(|&m| p.instrs[m].prim == Primitive::Matmul);
                        let head = head.expect("an epilogue follows a product");
                        let mut lits = vec![None];
                        lits.extend(self.literals_of(&st.inputs[2..]));
                        let (memo, out) = (&self.memos[s], shape_of(st.outputs[0]));
                        let ab = (ins[0], ins[1]);
                        // In one kernel when the epilogue keeps the product's shape.
                        let small = match shape_of(head) == out {
                            true => matmul::small_with_epilogue(self.gpu, ab, out, g, memo, &lits, &ins[2..])?,
                            false => None,
                        };
                        match small {
                            Some(outs) => outs,
                            None => {
                                let product = matmul::matmul(self.gpu, ins[0], ins[1], shape_of(head))?;
                                let mut group_ins = vec![&product];
                                group_ins.extend(&ins[2..]);
                                elementwise::run(self.gpu, g, Some(memo), &lits, &group_ins, out)?
                            }
                        }
                    };
                    for (&o, d) in st.outputs.iter().zip(outs) {
                        values[o] = Some(d);
                    }
                }
                _ => {
                    for &m in &st.members {
                        let ins = &p.instrs[m];
                        let d = {
                            let a: Vec<&Data> = ins
                                .inputs
                                .iter()
                                .map(|&i| values[i].as_ref().expect("inputs are computed first"))
                                .collect();
                            eval(self.gpu, &ins.prim, &a, shape_of(m), ins.dtype)?
                        };
                        values[m] = Some(d);
                    }
                }
            }
            for f in &self.frees[s..=s + taken.len()] {
                for &f in f {
                    values[f] = None;
                }
            }
            s += 1 + taken.len();
        }
        Ok(p.outputs.iter().map(|&o| values[o].clone().expect("outputs are computed")).collect())
    }

    fn kernel_count(&self) -> usize {
        self.steps.iter().filter(|s| !matches!(&s.kernel, Kernel::Single(p) if is_free(p))).count()
    }

    fn steps(&self) -> Vec<StepView<'_>> {
        self.steps
            .iter()
            .map(|st| StepView { kernel: st.kernel.as_ir(), inputs: &st.inputs, outputs: &st.outputs })
            .collect()
    }

    fn step_code(&self, step: usize) -> Option<String> {
        match &self.steps.get(step)?.kernel {
            Kernel::Fused(g) => Some(format!("one CUDA kernel ({} ops, generated C compiled by NVRTC)", g.ops.len())),
            _ => None,
        }
    }

    fn notes(&self) -> Vec<String> {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::array::Array;
    use crate::passes::tests::trace;

    /// The planned steps of `f` traced at `shapes` with the GPU's facts,
    /// and the consumer plan of its first reduction step.
    fn planned(
        shapes: &[&[usize]],
        f: impl Fn(&[Array]) -> Result<Vec<Array>>,
    ) -> (Vec<Planned>, usize, Option<ConsumerPlan>) {
        let mut p = trace(shapes, f);
        crate::passes::optimize(&mut p, false, &super::super::GpuFacts);
        let steps = plan(&p, &super::super::GpuFacts);
        let s = steps.iter().position(|st| matches!(st.kernel, Kernel::ReduceFused { .. })).expect("a reduction");
        let c = consumer(&steps[s], &steps[s + 1..], &|i| &p.instrs[i].shape[..]);
        (steps, s, c)
    }

    fn layernorm(a: &[Array]) -> Result<Vec<Array>> {
        let x = &a[0];
        let mean = x.mean(-1, true)?;
        let xc = (x - &mean)?;
        let var = xc.square()?.mean(-1, true)?;
        let y = (&xc * (var + 1e-5f32)?.rsqrt()?)?;
        Ok(vec![((y * &a[1])? + &a[2])?])
    }

    #[test]
    fn layernorm_runs_as_one_kernel() {
        let (steps, s, c) = planned(&[&[64, 1024], &[1024], &[1024]], layernorm);
        let c = c.expect("the steps after the statistics fuse into their kernel");
        // rsqrt(var + eps) once per row, then the scale and shift.
        assert_eq!(c.rows.len(), 1, "{c:?}");
        assert!(c.rows[0].iter().any(|s| matches!(s, Src::Reduced(_))), "{c:?}");
        let space = c.space.as_ref().expect("a space step");
        assert!(space.contains(&Src::Row(0, 0)), "{c:?}");
        assert_eq!(s + 1 + c.len(), steps.len(), "every step after the statistics is consumed");
    }

    #[test]
    fn softmax_normalization_runs_in_the_reduction_kernel() {
        let (steps, s, c) = planned(&[&[64, 1024]], |a| Ok(vec![a[0].softmax(-1)?]));
        let c = c.expect("softmax's normalization fuses into the reduction");
        // `1 / sum` once per row (ops::softmax), then `e * (1 / sum)` over
        // the row.
        assert_eq!(c.rows.len(), 1, "{c:?}");
        assert!(c.rows[0].iter().any(|s| matches!(s, Src::Reduced(_))), "{c:?}");
        let space = c.space.as_ref().expect("a space step");
        assert!(space.contains(&Src::Row(0, 0)), "{c:?}");
        // The normalization reads the reduction's input again (its row,
        // just read, comes from L2).
        assert!(c.inputs.iter().any(|i| steps[s].inputs.contains(i)), "{c:?}");
        assert_eq!(s + 1 + c.len(), steps.len(), "every step after the statistics is consumed");
    }

    #[test]
    fn per_row_steps_chain_and_a_varying_input_makes_a_space_step() {
        // log(sum(exp(x))) once per row, then y - it, where y varies along
        // the row (a space step, not a row step).
        let (steps, s, c) = planned(&[&[8, 16], &[8, 16]], |a| {
            let s = a[0].exp()?.sum(-1, true)?.log()?;
            Ok(vec![(&a[1] - &s)?])
        });
        let c = c.expect("fused");
        assert_eq!(c.rows.len(), 1, "{c:?}");
        assert_eq!(c.space, Some(vec![Src::Input(0), Src::Row(0, 0)]), "{c:?}");
        assert_eq!(s + 1 + c.len(), steps.len());
    }
}
