//! The flat SSA program: a traced graph as a list of instructions in
//! topological order. Optimization passes rewrite it; the executor runs it.

use std::collections::HashMap;

use crate::array::{Array, Data};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::primitive::Primitive;

/// One instruction: a primitive applied to earlier instructions' values.
#[derive(Clone, Debug)]
pub struct Instr {
    /// What it computes.
    pub prim: Primitive,
    /// Indices of the instructions whose values it reads.
    pub inputs: Vec<usize>,
    /// Output shape (as traced; re-inferred for shapeless calls).
    pub shape: Vec<usize>,
    /// Output dtype.
    pub dtype: DType,
    /// The value of a `Constant` instruction.
    pub constant: Option<Data>,
}

/// A program: instructions in topological order, the instructions holding
/// each argument (`Placeholder`s) and the outputs.
#[derive(Clone, Debug, Default)]
pub struct Program {
    /// Instructions, inputs before consumers.
    pub instrs: Vec<Instr>,
    /// For each argument, the index of its placeholder instruction (`None`
    /// when the argument is unused).
    pub inputs: Vec<Option<usize>>,
    /// Indices of the output values, in the order the function returned them.
    pub outputs: Vec<usize>,
}

impl Program {
    /// Captures the graph from `outputs` back to the placeholders in
    /// `params`. Evaluated arrays become constants; pending arrays that do
    /// not depend on any placeholder are evaluated now (once) and become
    /// constants too.
    pub fn from_graph(params: &[Array], outputs: &[Array]) -> Result<Program> {
        let param_ids: HashMap<u64, usize> = params.iter().enumerate().map(|(i, a)| (a.id(), i)).collect();
        // Which pending nodes depend on a placeholder (memoized DFS, iterative).
        let order = crate::array::topo_sort(&outputs.iter().collect::<Vec<_>>(), true);
        let mut depends: HashMap<u64, bool> = HashMap::new();
        for a in &order {
            let d = match a.primitive() {
                Primitive::Placeholder { .. } => true,
                _ if a.is_evaluated() => false,
                _ => a.inputs().iter().any(|i| depends.get(&i.id()).copied().unwrap_or(false)),
            };
            depends.insert(a.id(), d);
        }
        // Captured lazy arrays are computed once, at trace time.
        let frozen: Vec<&Array> = order
            .iter()
            .filter(|a| !a.is_evaluated() && !depends[&a.id()])
            .filter(|a| !matches!(a.primitive(), Primitive::Placeholder { .. }))
            .collect();
        crate::array::eval(&frozen)?;

        let mut prog = Program { instrs: vec![], inputs: vec![None; params.len()], outputs: vec![] };
        let mut index: HashMap<u64, usize> = HashMap::new();
        for a in &order {
            let instr = if let Some(d) = a.data() {
                Instr {
                    prim: Primitive::Constant,
                    inputs: vec![],
                    shape: a.shape().to_vec(),
                    dtype: a.dtype(),
                    constant: Some(d.clone()),
                }
            } else if let Primitive::Placeholder { .. } = a.primitive() {
                let Some(&arg) = param_ids.get(&a.id()) else {
                    return Err(Error::Invalid {
                        op: "compile",
                        msg: "the function uses a placeholder of another traced function \
                              (arrays from one trace cannot leak into another)"
                            .into(),
                    });
                };
                prog.inputs[arg] = Some(prog.instrs.len());
                Instr {
                    prim: Primitive::Placeholder { index: arg },
                    inputs: vec![],
                    shape: a.shape().to_vec(),
                    dtype: a.dtype(),
                    constant: None,
                }
            } else {
                Instr {
                    prim: a.primitive().clone(),
                    inputs: a.inputs().iter().map(|i| index[&i.id()]).collect(),
                    shape: a.shape().to_vec(),
                    dtype: a.dtype(),
                    constant: None,
                }
            };
            index.insert(a.id(), prog.instrs.len());
            prog.instrs.push(instr);
        }
        prog.outputs = outputs.iter().map(|o| index[&o.id()]).collect();
        Ok(prog)
    }

    /// Consumers of each instruction, each listed once, in increasing order.
    /// One pass over the program (a consumer reading a value twice is
    /// pushed once: its earlier push is the last one in that list).
    pub fn consumers(&self) -> Vec<Vec<usize>> {
        let mut c = vec![vec![]; self.instrs.len()];
        for (n, ins) in self.instrs.iter().enumerate() {
            for &i in &ins.inputs {
                if c[i].last() != Some(&n) {
                    c[i].push(n);
                }
            }
        }
        c
    }

    /// Keeps only the instructions for which `keep` is true (and that are
    /// not needed by kept ones: callers guarantee closure), renumbering.
    pub fn retain(&mut self, keep: &[bool]) {
        let mut new_index = vec![usize::MAX; self.instrs.len()];
        let mut out = Vec::with_capacity(self.instrs.len());
        for (i, ins) in std::mem::take(&mut self.instrs).into_iter().enumerate() {
            if keep[i] {
                new_index[i] = out.len();
                out.push(ins);
            }
        }
        for ins in &mut out {
            for x in &mut ins.inputs {
                *x = new_index[*x];
            }
        }
        self.instrs = out;
        for inp in &mut self.inputs {
            *inp = inp.and_then(|i| (new_index[i] != usize::MAX).then_some(new_index[i]));
        }
        for o in &mut self.outputs {
            *o = new_index[*o];
        }
    }

    /// Replaces values in one pass: `merge(p, i)` is called for each
    /// instruction in order, after its inputs have been renamed, and returns
    /// the earlier value that replaces `i` (one that is not itself replaced),
    /// or `None` to keep it. Outputs are renamed at the end. Linear in the
    /// program's size however many values are replaced (calling
    /// [`Program::replace_uses`] per value would rescan the program each time).
    pub fn replace_forward(&mut self, mut merge: impl FnMut(&Program, usize) -> Option<usize>) {
        let mut to: Vec<usize> = (0..self.instrs.len()).collect();
        for i in 0..self.instrs.len() {
            for x in &mut self.instrs[i].inputs {
                *x = to[*x];
            }
            if let Some(j) = merge(self, i) {
                debug_assert!(j < i && to[j] == j, "replaced by an earlier kept value");
                to[i] = j;
            }
        }
        for o in &mut self.outputs {
            *o = to[*o];
        }
    }

    /// Replaces every use of value `from` by value `to` (`to < from`).
    /// Scans the whole program: to replace many values, use
    /// [`Program::replace_forward`].
    pub fn replace_uses(&mut self, from: usize, to: usize) {
        for ins in &mut self.instrs {
            for x in &mut ins.inputs {
                if *x == from {
                    *x = to;
                }
            }
        }
        for o in &mut self.outputs {
            if *o == from {
                *o = to;
            }
        }
    }

    /// Re-infers every shape from new argument shapes (shapeless calls).
    /// Errors name the op that cannot follow the new shapes.
    pub fn infer_shapes(&self, arg_shapes: &[&[usize]]) -> Result<Vec<Vec<usize>>> {
        let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(self.instrs.len());
        for ins in &self.instrs {
            let s = match &ins.prim {
                Primitive::Placeholder { index } => arg_shapes[*index].to_vec(),
                Primitive::Constant => ins.shape.clone(),
                p => {
                    let sigs: Vec<(&[usize], DType)> =
                        ins.inputs.iter().map(|&i| (shapes[i].as_slice(), self.instrs[i].dtype)).collect();
                    p.infer(&sigs).map_err(|e| shapeless_error(p, &ins.shape, &sigs, e))?.0
                }
            };
            shapes.push(s);
        }
        Ok(shapes)
    }
}

fn shapeless_error(p: &Primitive, traced: &[usize], inputs: &[(&[usize], DType)], e: Error) -> Error {
    let new: Vec<String> = inputs.iter().map(|(s, _)| crate::error::shape_str(s)).collect();
    Error::Shape {
        op: p.name(),
        msg: format!(
            "in a shapeless compiled function this op was traced with output shape {} and cannot follow \
             its new input shape(s) {}: {e}. Use -1 in reshape, or shape-relative ops (zeros_like, \
             broadcast against an input), or compile without shapeless",
            crate::error::shape_str(traced),
            new.join(", ")
        ),
    }
}
