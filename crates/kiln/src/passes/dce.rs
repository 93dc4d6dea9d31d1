//! Dead-code elimination: drops instructions no output depends on.

use crate::passes::{Facts, Pass};
use crate::program::Program;

/// Removes instructions whose values are never used by an output.
pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn run(&self, p: &mut Program, _: &dyn Facts) {
        let mut live = vec![false; p.instrs.len()];
        for &o in &p.outputs {
            live[o] = true;
        }
        for i in (0..p.instrs.len()).rev() {
            if live[i] {
                for &x in &p.instrs[i].inputs {
                    live[x] = true;
                }
            }
        }
        p.retain(&live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::tests::trace;

    #[test]
    fn drops_unused_work() {
        let mut p = trace(&[&[4]], |a| Ok(vec![a[0].sin()?, a[0].exp()?]));
        p.outputs.truncate(1);
        let mut q = p.clone();
        Dce.run(&mut q, &crate::passes::tests::Facts);
        assert_eq!(p.instrs.len(), 3);
        assert_eq!(q.instrs.len(), 2);
        assert!(q.instrs.iter().all(|i| i.prim.name() != "exp"));
    }
}
