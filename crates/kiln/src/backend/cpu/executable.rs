//! The CPU executable: an optimized program lowered to a list of kernel
//! steps, with the point after which each intermediate value can be
//! released, and the runs of steps that go row by row ([`row_kernel`])
//! or else block of rows by block of rows ([`row_chain`]), and the
//! reductions that fold a product's blocks as it computes them
//! ([`block_fold`]).

use smallvec::{smallvec, SmallVec};

use crate::array::Data;
use crate::backend::cpu::fused::{Args, Outs};
use crate::backend::cpu::{self, block_fold, row_chain, row_kernel, CpuGroup};
use crate::backend::{Executable, StepView};
use crate::error::Result;
use crate::passes::fuse::{follows, is_free, plan, FusedGroup, FusedOp, Kernel};
use crate::passes::Facts;
use crate::primitive::{BinaryOp, Primitive};
use crate::program::Program;

/// One kernel launch: reads some values, writes others.
#[derive(Clone, Debug)]
pub struct Step {
    /// What runs; each fused group keeps its compiled code across calls.
    pub kernel: Kernel<CpuGroup>,
    /// Values read (program instruction indices).
    pub inputs: Vec<usize>,
    /// Values written.
    pub outputs: Vec<usize>,
    /// Values no later step needs (released after this one).
    pub frees: Vec<usize>,
    /// The instructions the kernel computes, in program order (see
    /// [`Step::follows`]).
    pub members: Vec<usize>,
    /// For a matrix product whose epilogue starts with a bias add: the bias
    /// register and the rest of the epilogue, split once here so the rest
    /// keeps its compiled code from call to call (see `split_bias`).
    pub bias_split: Option<(usize, CpuGroup)>,
    /// For a matrix product: how the next step, a reduction of a value
    /// this one writes, folds each block of the product as it is computed
    /// ([`block_fold`]).
    pub fold_next: Option<block_fold::BlockFold>,
}

/// The compiled form of a program on the CPU.
#[derive(Clone, Debug)]
pub struct CpuExecutable {
    /// The optimized program (shapes are re-inferred from it for shapeless calls).
    pub program: Program,
    /// Kernel steps in execution order.
    pub steps: Vec<Step>,
    /// Constant values, by instruction index.
    constants: Vec<(usize, Data)>,
    /// Runs of steps that may run row block by row block (see [`row_chain`]).
    pub chains: Vec<row_chain::Chain>,
    /// Per program output: no later output is the same value (it is moved
    /// out, not cloned).
    last_output: Vec<bool>,
}

impl CpuExecutable {
    /// Lowers an optimized program: fuses it into kernels and computes
    /// lifetimes.
    pub fn new(program: Program) -> CpuExecutable {
        let kernels = plan(&program, &cpu::Cpu as &dyn Facts);
        let mut last_use = vec![usize::MAX; program.instrs.len()];
        for (s, k) in kernels.iter().enumerate() {
            for &i in &k.inputs {
                last_use[i] = s;
            }
        }
        let is_output: Vec<bool> = {
            let mut v = vec![false; program.instrs.len()];
            for &o in &program.outputs {
                v[o] = true;
            }
            v
        };
        let mut steps: Vec<Step> = kernels
            .into_iter()
            .enumerate()
            .map(|(s, k)| {
                let frees = k
                    .inputs
                    .iter()
                    .copied()
                    .filter(|&i| last_use[i] == s && !is_output[i])
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let bias_split = match &k.kernel {
                    Kernel::MatmulEpilogue(g) => split_bias(g).map(|(bias, rest)| (bias, CpuGroup::new(rest))),
                    _ => None,
                };
                let kernel = k.kernel.map(CpuGroup::new);
                Step {
                    kernel,
                    inputs: k.inputs,
                    outputs: k.outputs,
                    frees,
                    members: k.members,
                    bias_split,
                    fold_next: None,
                }
            })
            .collect();
        let constants = program
            .instrs
            .iter()
            .enumerate()
            .filter_map(|(i, ins)| ins.constant.as_ref().map(|d| (i, d.clone())))
            .collect();
        let chains = row_chain::find(&program, &steps);
        let folds = block_fold::find(&program, &steps, |s| chains.iter().any(|c| c.steps.contains(&s)));
        for (st, f) in steps.iter_mut().zip(folds) {
            st.fold_next = f;
        }
        let mut seen = std::collections::HashSet::new();
        let mut last_output: Vec<bool> = program.outputs.iter().rev().map(|&o| seen.insert(o)).collect();
        last_output.reverse();
        CpuExecutable { program, steps, constants, chains, last_output }
    }
}

impl Executable for CpuExecutable {
    fn program(&self) -> &Program {
        &self.program
    }

    /// Runs step by step (a chain of steps block of rows by block of rows
    /// when the run-time shapes allow, a step op by op when its values no
    /// longer share one iteration space, see [`Step::follows`]).
    fn run(&self, args: &[&Data], shapes: Option<&[Vec<usize>]>) -> Result<Vec<Data>> {
        let p = &self.program;
        // Per-call vectors stay on the stack for small programs (no heap
        // allocation per call), filled in place (moving one copies it).
        let mut values: SmallVec<[Option<Data>; 16]> = SmallVec::new();
        values.resize(p.instrs.len(), None);
        for (i, d) in &self.constants {
            values[*i] = Some(d.clone());
        }
        for (arg, slot) in p.inputs.iter().enumerate() {
            if let Some(i) = slot {
                values[*i] = Some(args[arg].clone());
            }
        }
        let shape_of = |i: usize| -> &[usize] { shapes.map_or(&p.instrs[i].shape, |s| &s[i]) };
        // At new shapes (shapeless calls), a fused kernel whose values no
        // longer share its iteration space runs op by op.
        let unfused: SmallVec<[bool; 16]> = match shapes {
            Some(sh) => self.steps.iter().map(|st| !st.follows(p, sh)).collect(),
            None => SmallVec::new(),
        };
        let mut s = 0;
        // Chains are in step order: the next one that may start here.
        let mut next_chain = 0;
        while s < self.steps.len() {
            if let (Some(sh), true) = (shapes, unfused.get(s) == Some(&true)) {
                let step = &self.steps[s];
                run_unfused(p, step, &mut values, sh)?;
                for &f in &step.frees {
                    values[f] = None;
                }
                s += 1;
                continue;
            }
            while self.chains.get(next_chain).is_some_and(|c| c.steps.start < s) {
                next_chain += 1;
            }
            if let Some(chain) = self
                .chains
                .get(next_chain)
                .filter(|c| c.steps.start == s && !c.steps.clone().any(|k| unfused.get(k) == Some(&true)))
            {
                if row_kernel::run(self, chain, &mut values, &shape_of)?
                    || row_chain::run(self, chain, &mut values, &shape_of)?
                {
                    for step in &self.steps[chain.steps.clone()] {
                        for &f in &step.frees {
                            values[f] = None;
                        }
                    }
                    s = chain.steps.end;
                    continue;
                }
            }
            let step = &self.steps[s];
            if let Some(fold) = step.fold_next.as_ref() {
                if unfused.get(s + 1) != Some(&true)
                    && block_fold::run(step, &self.steps[s + 1], fold, &mut values, shape_of)?
                {
                    for st in &self.steps[s..s + 2] {
                        for &f in &st.frees {
                            values[f] = None;
                        }
                    }
                    s += 2;
                    continue;
                }
            }
            // Values this fused step is the last to read, and that nothing
            // else holds, are handed over so an output can reuse the buffer.
            let fused = matches!(step.kernel, Kernel::Fused(_) | Kernel::MatmulEpilogue(_));
            let mut given: SmallVec<[Option<Data>; 4]> = SmallVec::new();
            for &i in &step.inputs {
                let donate = fused
                    && step.frees.contains(&i)
                    && step.inputs.iter().filter(|&&j| j == i).count() == 1
                    && values[i].as_ref().is_some_and(|d| d.is_unique());
                given.push(if donate { values[i].take() } else { None });
            }
            let mut outs = Outs::new();
            {
                // The step's inputs: the given ones owned, the rest borrowed.
                let mut args = Args::new();
                args.extend(step.inputs.iter().zip(given.drain(..)).map(|(&i, g)| match g {
                    Some(d) => cpu::fused::Arg::Owned(d),
                    None => cpu::fused::Arg::Borrowed(values[i].as_ref().expect("inputs are computed first")),
                }));
                run_step(p, step, &mut args, shape_of, &mut outs)?;
            }
            for (&o, d) in step.outputs.iter().zip(outs.drain(..)) {
                values[o] = Some(d);
            }
            for &f in &step.frees {
                values[f] = None;
            }
            s += 1;
        }
        // Each output is moved out, but cloned while a later output is the same value.
        Ok(p.outputs
            .iter()
            .zip(&self.last_output)
            .map(|(&o, &last)| {
                let d = if last { values[o].take() } else { values[o].clone() };
                d.expect("outputs are computed")
            })
            .collect())
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

    /// Generated machine code or the tile interpreter ([`jit::describe`](cpu::jit::describe)),
    /// for the group that runs: after a bias folded into the product, the rest.
    fn step_code(&self, step: usize) -> Option<String> {
        let st = self.steps.get(step)?;
        let elementwise = match (&st.kernel, &st.bias_split) {
            (Kernel::MatmulEpilogue(_), Some((_, rest))) => Some(rest),
            (Kernel::Fused(g) | Kernel::MatmulEpilogue(g), _) => Some(g),
            _ => None,
        };
        elementwise.filter(|g| !g.ops.is_empty()).map(cpu::jit::describe)
    }

    /// The row chains ([`row_chain`]) and the reductions folded into a
    /// product's blocks ([`block_fold`]).
    fn notes(&self) -> Vec<String> {
        let folds = self.steps.iter().enumerate().filter(|(_, st)| st.fold_next.is_some()).map(|(s, _)| {
            format!(
                "block folds: kernel {} reduces each block of kernel {s}'s product on the thread that computed it, \
                 when the shapes allow",
                s + 1
            )
        });
        self.chains
            .iter()
            .map(|c| {
                let kept: Vec<String> = c.escapes.iter().map(|&v| format!("%{v}")).collect();
                format!(
                    "row blocks: kernels {}..={} run block of rows by block of rows when the shapes allow; \
                     written to memory: {}",
                    c.steps.start,
                    c.steps.end - 1,
                    kept.join(", ")
                )
            })
            .chain(folds)
            .collect()
    }
}

impl Step {
    /// True when the kernel still computes its instructions at the
    /// re-inferred `shapes` (see [`follows`]); otherwise the step runs op
    /// by op (`run_unfused`).
    pub fn follows(&self, p: &Program, shapes: &[Vec<usize>]) -> bool {
        follows(&self.kernel, &self.members, &self.outputs, p, shapes)
    }
}

/// Runs a step instruction by instruction, each through the kernel eager
/// evaluation uses, at the re-inferred `shapes`; the step's outputs are
/// stored in `values` (its other instructions' values are dropped).
fn run_unfused(p: &Program, step: &Step, values: &mut [Option<Data>], shapes: &[Vec<usize>]) -> Result<()> {
    for &m in &step.members {
        let ins = &p.instrs[m];
        let d = {
            let args: SmallVec<[&Data; 4]> =
                ins.inputs.iter().map(|&i| values[i].as_ref().expect("inputs are computed first")).collect();
            cpu::eval(&ins.prim, &args, &shapes[m], ins.dtype)?
        };
        values[m] = Some(d);
    }
    for &m in &step.members {
        if !step.outputs.contains(&m) {
            values[m] = None;
        }
    }
    Ok(())
}

/// Runs one step on its evaluated inputs (`args`, drained), pushing its
/// outputs onto `outs`; `shape_of` gives the run-time shape of each value
/// the step writes or iterates over. (Both vectors are the caller's, passed
/// by reference: moving one copies it.)
pub(crate) fn run_step<S: AsRef<[usize]>>(
    p: &Program,
    step: &Step,
    args: &mut Args,
    shape_of: impl Fn(usize) -> S,
    outs: &mut Outs,
) -> Result<()> {
    let out_shape = shape_of(step.outputs[0]);
    let out_shape = out_shape.as_ref();
    fn ins<'s>(args: &'s [cpu::fused::Arg]) -> SmallVec<[&'s Data; 4]> {
        args.iter().map(|a| a.data()).collect()
    }
    match &step.kernel {
        Kernel::Single(prim) => outs.push(cpu::eval(prim, &ins(args), out_shape, p.instrs[step.outputs[0]].dtype)?),
        Kernel::Fused(group) => cpu::fused::launch(group, args, out_shape, &[], outs)?,
        Kernel::ReduceFused { group, reductions, axes, source } => {
            let reduced =
                cpu::fused_reduce::run_reduce(group, &ins(args), shape_of(*source).as_ref(), reductions, axes)?;
            // keepdims only changes the shape, not the order of elements.
            outs.extend(
                reduced
                    .into_iter()
                    .zip(&step.outputs)
                    .map(|(d, &o)| d.relayout(crate::layout::Layout::contiguous(shape_of(o).as_ref()))),
            )
        }
        Kernel::MatmulEpilogue(group) => matmul_epilogue(group, step.bias_split.as_ref(), args, out_shape, outs)?,
    }
    Ok(())
}

/// A matrix product and its elementwise epilogue (`ins` = `a`, `b`, then the
/// group's other inputs). An epilogue that is only a bias seeds the
/// product's output where the product's kernel reads it
/// ([`cpu::matmul::matmul_bias`]). Any other runs on each block of rows of
/// the product as it is computed, on the thread that computed it
/// ([`cpu::matmul::f32_row_blocks`], `f32` products of mid size). Else,
/// when the epilogue starts by adding a bias that nothing else reads bare,
/// the bias seeds the product and the rest of the group runs on the sum
/// after it; otherwise the product runs alone and the whole group after it.
/// The product's buffer is fresh, so the epilogue writes over it. `split`
/// is [`split_bias`] of `group`, made when the executable was built.
fn matmul_epilogue(
    group: &CpuGroup,
    split: Option<&(usize, CpuGroup)>,
    args: &mut Args,
    out_shape: &[usize],
    outs: &mut Outs,
) -> Result<()> {
    let (a, b) = (args[0].data(), args[1].data());
    // A bias alone starts the product's output, where its kernel reads it
    // (no pass over the output at all); any other epilogue runs on each
    // block of rows as it is computed, where the product's size allows.
    let bias_alone = split.is_some_and(|(_, rest)| rest.ops.is_empty());
    if !bias_alone && !group.ops.is_empty() && cpu::matmul::row_blocks_take(a, b, out_shape) {
        let done = {
            let others: SmallVec<[&Data; 4]> = args[2..].iter().map(|a| a.data()).collect();
            let product = |then: &cpu::matmul::Then<'_>| cpu::matmul::f32_row_blocks(a, b, out_shape, then);
            cpu::fused::launch_blocks(group, &others, out_shape, outs, product)?
        };
        if done {
            args.clear();
            return Ok(());
        }
    }
    let with_bias = match split {
        Some((bias, rest)) => cpu::matmul::matmul_bias(a, b, args[bias + 1].data(), out_shape)?.map(|buf| (buf, rest)),
        None => None,
    };
    let (product, g) = match with_bias {
        Some((buf, rest)) => (Data::contiguous(buf, out_shape), rest),
        None => (cpu::eval(&Primitive::Matmul, &[a, b], out_shape, group.inputs[0])?, group),
    };
    if g.ops.is_empty() {
        outs.extend(g.outputs.iter().map(|_| product.clone()));
        return Ok(());
    }
    let mut group_args: Args = smallvec![cpu::fused::Arg::Owned(product)];
    group_args.extend(args.drain(2..));
    cpu::fused::launch(g, &mut group_args, out_shape, &[], outs)
}

/// For an epilogue whose first op is `product + bias` (either order, one
/// dtype, `bias` another input register) and whose other ops and outputs
/// never read the bare product: the bias register and the group with that
/// add removed, its result now in register 0. An output that is the sum
/// itself must then be the only kind of output (a group of no ops).
fn split_bias(g: &FusedGroup) -> Option<(usize, FusedGroup)> {
    let n_in = g.inputs.len();
    let first = g.ops.first()?;
    let bias = match (&first.prim, first.args.as_slice()) {
        (Primitive::Binary(BinaryOp::Add), &[0, r] | &[r, 0]) if r != 0 && r < n_in => r,
        _ => return None,
    };
    if first.dtype != g.inputs[0] || g.inputs[bias] != g.inputs[0] {
        return None;
    }
    // Registers: the sum (n_in) becomes 0; later ones shift down by one.
    let remap = |r: usize| match r {
        0 => None,
        r if r == n_in => Some(0),
        r if r > n_in => Some(r - 1),
        r => Some(r),
    };
    let ops = g.ops[1..]
        .iter()
        .map(|o| {
            let args = o.args.iter().map(|&r| remap(r)).collect::<Option<Vec<_>>>()?;
            Some(FusedOp { prim: o.prim.clone(), args, dtype: o.dtype })
        })
        .collect::<Option<Vec<_>>>()?;
    let outputs = g.outputs.iter().map(|&r| remap(r)).collect::<Option<Vec<_>>>()?;
    if !ops.is_empty() && outputs.contains(&0) {
        return None;
    }
    Some((bias, FusedGroup { inputs: g.inputs.clone(), ops, outputs }))
}
