//! The CUDA executable: an optimized program planned into kernel steps
//! ([`plan`]) with the GPU backend's facts. Each fused elementwise group is
//! one generated kernel, and so is each fused reduction (its producer
//! group evaluated inside the reduction kernel, [`reduce::fold`]); an
//! elementwise step right after a reduction that reads its results per
//! row (softmax's division, layernorm's scale and shift) runs in the
//! reduction's kernel, over the row it just reduced ([`reduce::Consumer`]);
//! a product with an epilogue is the product (cuBLAS) and then one kernel
//! for the epilogue; views cost nothing. Values are released after
//! their last reader, so their memory returns to the stream-ordered pool
//! while later kernels run.

use crate::array::Data;
use crate::backend::cuda::{elementwise, eval, matmul, reduce, Gpu};
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
    /// Per step, how the next step runs inside its reduction kernel at the
    /// traced shapes (see `consumer`); shapeless calls check it again.
    consumers: Vec<Option<Vec<std::result::Result<usize, usize>>>>,
}

impl CudaExecutable {
    /// Plans `program`'s kernels and the lifetimes of its values, and moves
    /// its constants to the GPU (once, here, not on each call).
    pub fn new(gpu: &'static Gpu, program: Program) -> Result<CudaExecutable> {
        let facts = super::Cuda { gpu };
        let steps = plan(&program, &facts);
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
        let traced = |i: usize| -> &[usize] { &program.instrs[i].shape };
        let consumers = (0..steps.len())
            .map(|s| steps.get(s + 1).and_then(|n| consumer(&program, &steps[s], n, &traced)))
            .collect();
        Ok(CudaExecutable { gpu, program, steps, frees, constants, consumers })
    }
}

/// How fused step `next` reads reduction step `red`'s results, when it can
/// run over each row inside the reduction's kernel ([`reduce::Consumer`]):
/// `next` is an elementwise group over the reduction's space (every
/// output of that shape), and each of its inputs that `red` writes is kept
/// as size-1 axes over the reduced ones (a per-row value); `None`
/// otherwise. `shape_of` gives the shapes of this call.
fn consumer<'a>(
    p: &Program,
    red: &Planned,
    next: &Planned,
    shape_of: &impl Fn(usize) -> &'a [usize],
) -> Option<Vec<std::result::Result<usize, usize>>> {
    let (Kernel::ReduceFused { axes, source, .. }, Kernel::Fused(_)) = (&red.kernel, &next.kernel) else {
        return None;
    };
    let space = shape_of(*source);
    if next.outputs.iter().any(|&o| shape_of(o) != space) {
        return None;
    }
    let row: Vec<usize> = space.iter().enumerate().map(|(i, &d)| if axes.contains(&i) { 1 } else { d }).collect();
    let mut k = 0;
    next.inputs
        .iter()
        .map(|&i| match red.outputs.iter().position(|&o| o == i) {
            Some(j) => (shape_of(i) == row && p.instrs[i].dtype == p.instrs[red.outputs[j]].dtype).then_some(Ok(j)),
            None => {
                k += 1;
                Some(Err(k - 1))
            }
        })
        .collect()
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
            // A reduction and the normalization after it, in one kernel.
            if let (Kernel::ReduceFused { group, reductions, axes, source }, true) = (&st.kernel, fused) {
                let next = self.steps.get(s + 1);
                let plan = match shapes {
                    None => self.consumers[s].clone(),
                    Some(_) => next.filter(|n| follows_at(n)).and_then(|n| consumer(p, st, n, &shape_of)),
                };
                if let (Some(n), Some(c)) = (next, plan) {
                    let Kernel::Fused(g2) = &n.kernel else { unreachable!("consumer() takes fused groups") };
                    let (ys, zs) = {
                        let get = |i: usize| values[i].as_ref().expect("inputs are computed first");
                        let ins: Vec<&Data> = st.inputs.iter().map(|&i| get(i)).collect();
                        let space_ins: Vec<&Data> =
                            n.inputs.iter().zip(&c).filter(|(_, c)| c.is_err()).map(|(&i, _)| get(i)).collect();
                        let shapes: Vec<(Vec<usize>, DType)> =
                            st.outputs.iter().map(|&o| (shape_of(o).to_vec(), p.instrs[o].dtype)).collect();
                        let con = reduce::Consumer { group: g2, inputs: c };
                        let space = shape_of(*source);
                        reduce::fold(self.gpu, group, reductions, &ins, space, axes, &shapes, Some((&con, &space_ins)))?
                    };
                    for (&o, d) in st.outputs.iter().zip(ys).chain(n.outputs.iter().zip(zs)) {
                        values[o] = Some(d);
                    }
                    for &f in self.frees[s].iter().chain(&self.frees[s + 1]) {
                        values[f] = None;
                    }
                    s += 2;
                    continue;
                }
            }
            match &st.kernel {
                Kernel::Fused(g) if fused => {
                    let outs = {
                        let ins: Vec<&Data> =
                            st.inputs.iter().map(|&i| values[i].as_ref().expect("inputs are computed first")).collect();
                        elementwise::run(self.gpu, g, &ins, shape_of(st.outputs[0]))?
                    };
                    for (&o, d) in st.outputs.iter().zip(outs) {
                        values[o] = Some(d);
                    }
                }
                Kernel::ReduceFused { group, reductions, axes, source } if fused => {
                    let outs = {
                        let ins: Vec<&Data> =
                            st.inputs.iter().map(|&i| values[i].as_ref().expect("inputs are computed first")).collect();
                        let shapes: Vec<(Vec<usize>, DType)> =
                            st.outputs.iter().map(|&o| (shape_of(o).to_vec(), p.instrs[o].dtype)).collect();
                        reduce::fold(self.gpu, group, reductions, &ins, shape_of(*source), axes, &shapes, None)?.0
                    };
                    for (&o, d) in st.outputs.iter().zip(outs) {
                        values[o] = Some(d);
                    }
                }
                Kernel::MatmulEpilogue(g) if fused => {
                    let outs = {
                        let ins: Vec<&Data> =
                            st.inputs.iter().map(|&i| values[i].as_ref().expect("inputs are computed first")).collect();
                        let head = st.members.iter().copied().find(|&m| p.instrs[m].prim == Primitive::Matmul);
                        let head = head.expect("an epilogue follows a product");
                        let product = matmul::matmul(self.gpu, ins[0], ins[1], shape_of(head))?;
                        let mut group_ins = vec![&product];
                        group_ins.extend(&ins[2..]);
                        elementwise::run(self.gpu, g, &group_ins, shape_of(st.outputs[0]))?
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
            for &f in &self.frees[s] {
                values[f] = None;
            }
            s += 1;
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
