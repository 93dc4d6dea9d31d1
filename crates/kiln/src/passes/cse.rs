//! Common subexpression elimination: an instruction equal to an earlier one
//! (same primitive with the same parameters, same inputs) reuses its value.
//! Small constants are merged by dtype, shape and bit pattern (so `0.0` and
//! `-0.0` stay apart).

use std::collections::HashMap;

use crate::passes::{Facts, Pass};
use crate::primitive::Primitive;
use crate::program::{Instr, Program};

/// Constants with at most this many elements are compared by value.
const SMALL_CONSTANT: usize = 64;

/// Merges repeated instructions.
pub struct Cse;

fn constant_key(ins: &Instr) -> Option<String> {
    let d = ins.constant.as_ref()?;
    if d.layout().numel() > SMALL_CONSTANT {
        // Large constants merge only when they are the same buffer view.
        return Some(format!("buf{:p}{:?}", std::sync::Arc::as_ptr(d.storage()) as *const (), d.layout()));
    }
    // Debug prints floats in their shortest exact form (-0.0 kept apart).
    let values = format!("{:?}", d.to_host().ok()?);
    Some(format!("const{}{:?}{values}", ins.dtype, ins.shape))
}

fn key(ins: &Instr) -> Option<String> {
    match &ins.prim {
        Primitive::Placeholder { .. } => None,
        Primitive::Constant => constant_key(ins),
        // Debug formatting keeps every parameter, with floats printed
        // exactly (-0.0 differs from 0.0).
        p => Some(format!("{p:?}|{:?}|{}", ins.inputs, ins.dtype)),
    }
}

impl Pass for Cse {
    fn name(&self) -> &'static str {
        "cse"
    }

    fn run(&self, p: &mut Program, _: &dyn Facts) {
        // Value numbering: one pass in topological order; an instruction's
        // inputs are already renamed to their kept values when its key is made.
        let mut seen: HashMap<String, usize> = HashMap::new();
        p.replace_forward(|p, i| {
            let k = key(&p.instrs[i])?;
            match seen.entry(k) {
                std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                    None
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::tests::{count, run, trace};

    #[test]
    fn merges_repeated_ops_and_scalars() {
        let mut p = trace(&[&[4]], |a| {
            let x = &a[0];
            let y = (x.exp()? + 1.0f32)?;
            let z = (x.exp()? + 1.0f32)?;
            Ok(vec![(y * z)?])
        });
        assert_eq!(count(&p, "exp"), 2);
        run(&mut p, &[&Cse]);
        assert_eq!(count(&p, "exp"), 1);
        assert_eq!(count(&p, "add"), 1);
        assert_eq!(count(&p, "constant"), 1);
    }

    #[test]
    fn keeps_ops_that_differ_in_a_parameter() {
        let mut p = trace(&[&[4]], |a| {
            let x = &a[0];
            Ok(vec![x.log2()?, x.log10()?, (x + 0.0f32)?, (x + (-0.0f32))?])
        });
        run(&mut p, &[&Cse]);
        assert_eq!(count(&p, "log2"), 1);
        assert_eq!(count(&p, "log10"), 1);
        assert_eq!(count(&p, "add"), 2, "0.0 and -0.0 must stay distinct");
    }
}
