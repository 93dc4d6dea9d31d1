//! An executable: an optimized program lowered to a list of kernel steps,
//! with the point after which each intermediate value can be released.

use crate::array::Data;
use crate::backend::cpu;
use crate::error::Result;
use crate::passes::fuse::{plan, Kernel};
use crate::primitive::Primitive;
use crate::program::Program;

/// One kernel launch: reads some values, writes others.
#[derive(Clone, Debug)]
pub struct Step {
    /// What runs.
    pub kernel: Kernel,
    /// Values read (program instruction indices).
    pub inputs: Vec<usize>,
    /// Values written.
    pub outputs: Vec<usize>,
    /// Values no later step needs (released after this one).
    pub frees: Vec<usize>,
}

/// The compiled form of a program.
#[derive(Clone, Debug)]
pub struct Executable {
    /// The optimized program (shapes are re-inferred from it for shapeless calls).
    pub program: Program,
    /// Kernel steps in execution order.
    pub steps: Vec<Step>,
    /// Constant values, by instruction index.
    constants: Vec<(usize, Data)>,
}

impl Executable {
    /// Lowers an optimized program: fuses it into kernels and computes
    /// lifetimes.
    pub fn new(program: Program) -> Executable {
        let kernels = plan(&program);
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
        let steps = kernels
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
                Step { kernel: k.kernel, inputs: k.inputs, outputs: k.outputs, frees }
            })
            .collect();
        let constants = program
            .instrs
            .iter()
            .enumerate()
            .filter_map(|(i, ins)| ins.constant.as_ref().map(|d| (i, d.clone())))
            .collect();
        Executable { program, steps, constants }
    }

    /// Runs on evaluated arguments. `shapes` holds every value's shape when
    /// it differs from the traced one (shapeless calls).
    pub fn run(&self, args: &[&Data], shapes: Option<&[Vec<usize>]>) -> Result<Vec<Data>> {
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
        for step in &self.steps {
            // Values this fused step is the last to read, and that nothing
            // else holds, are handed over so an output can reuse the buffer.
            let fused = matches!(step.kernel, Kernel::Fused(_) | Kernel::MatmulEpilogue(_));
            let donate: Vec<bool> = step
                .inputs
                .iter()
                .map(|&i| {
                    fused
                        && step.frees.contains(&i)
                        && step.inputs.iter().filter(|&&j| j == i).count() == 1
                        && values[i].as_ref().is_some_and(|d| std::sync::Arc::strong_count(&d.buffer) == 1)
                })
                .collect();
            let given: Vec<Option<Data>> =
                step.inputs.iter().zip(&donate).map(|(&i, &d)| if d { values[i].take() } else { None }).collect();
            let outs: Vec<Data> = {
                let ins: Vec<&Data> = step
                    .inputs
                    .iter()
                    .zip(&given)
                    .map(|(&i, g)| g.as_ref().or(values[i].as_ref()).expect("inputs are computed first"))
                    .collect();
                let out_shape = shape_of(step.outputs[0]);
                match &step.kernel {
                    Kernel::Single(prim) => {
                        vec![cpu::eval(prim, &ins, out_shape, p.instrs[step.outputs[0]].dtype)?]
                    }
                    Kernel::Fused(group) => {
                        drop(ins);
                        cpu::fused::run_args(group, group_args(&step.inputs, given, &values), out_shape)?
                    }
                    Kernel::ReduceFused { group, reduce: Primitive::Reduce { op, axes, .. }, source } => {
                        let dtype = p.instrs[step.outputs[0]].dtype;
                        let d = cpu::fused::run_reduce(group, &ins, shape_of(*source), *op, axes, dtype)?;
                        // keepdims only changes the shape, not the order of elements.
                        vec![Data { layout: crate::layout::Layout::contiguous(out_shape), ..d }]
                    }
                    Kernel::ReduceFused { .. } => unreachable!("the fuser absorbs only Reduce primitives"),
                    Kernel::MatmulEpilogue(group) => {
                        let product = cpu::eval(&Primitive::Matmul, &ins[..2], out_shape, group.inputs[0])?;
                        drop(ins);
                        // The product is the epilogue's to overwrite.
                        let mut args = vec![cpu::fused::Arg::Owned(product)];
                        args.extend(group_args(&step.inputs[2..], given.into_iter().skip(2).collect(), &values));
                        cpu::fused::run_args(group, args, out_shape)?
                    }
                }
            };
            for (&o, d) in step.outputs.iter().zip(outs) {
                values[o] = Some(d);
            }
            for &f in &step.frees {
                values[f] = None;
            }
        }
        Ok(p.outputs.iter().map(|&o| values[o].clone().expect("outputs are computed")).collect())
    }

    /// Number of kernel launches.
    pub fn kernel_count(&self) -> usize {
        self.steps.iter().filter(|s| !matches!(&s.kernel, Kernel::Single(p) if is_free(p))).count()
    }
}

/// A fused step's inputs: the given (donatable) ones owned, the rest borrowed.
fn group_args<'a>(inputs: &[usize], given: Vec<Option<Data>>, values: &'a [Option<Data>]) -> Vec<cpu::fused::Arg<'a>> {
    inputs
        .iter()
        .zip(given)
        .map(|(&i, g)| match g {
            Some(d) => cpu::fused::Arg::Owned(d),
            None => cpu::fused::Arg::Borrowed(values[i].as_ref().expect("inputs are computed first")),
        })
        .collect()
}

/// Views cost nothing at run time.
pub(crate) fn is_free(p: &Primitive) -> bool {
    matches!(p.class(), crate::primitive::FusionClass::View) && !matches!(p, Primitive::Reshape { .. })
}
