//! Human-readable views of an executable: `explain` text and Graphviz DOT.

use std::fmt::Write;

use crate::backend::Executable;
use crate::compile::signature::describe;
use crate::passes::fuse::{is_free, FusedGroup, Kernel};
use crate::primitive::Primitive;

fn value(exe: &dyn Executable, v: usize) -> String {
    let ins = &exe.program().instrs[v];
    let what = match &ins.prim {
        Primitive::Placeholder { index } => format!(" (arg {index})"),
        Primitive::Constant => " (const)".to_string(),
        _ => String::new(),
    };
    format!("%{v} {}{what}", describe(ins.dtype, &ins.shape))
}

fn bytes(exe: &dyn Executable, v: usize) -> usize {
    let ins = &exe.program().instrs[v];
    ins.shape.iter().product::<usize>() * ins.dtype.size()
}

/// The ops a kernel runs, in order; reductions computed together are joined by `+`.
fn kernel_ops(k: &Kernel<&FusedGroup>) -> Vec<String> {
    let names = |g: &FusedGroup| g.ops.iter().map(|o| o.prim.name().to_string()).collect();
    match k {
        Kernel::Single(p) => vec![p.name().to_string()],
        Kernel::Fused(g) => names(g),
        Kernel::MatmulEpilogue(g) => [vec!["matmul".to_string()], names(g)].concat(),
        Kernel::ReduceFused { group, reductions, .. } => {
            let reds = reductions.iter().map(|(op, _)| op.name()).collect::<Vec<_>>().join(" + ");
            [names(group), vec![reds]].concat()
        }
    }
}

/// The `explain` text.
pub fn text(exe: &dyn Executable, traced_instrs: usize, misses: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "program: {traced_instrs} instructions traced, {} after optimization, {} kernel(s)",
        exe.program().instrs.len(),
        exe.kernel_count()
    );
    for (i, step) in exe.steps().iter().enumerate() {
        let kind = match &step.kernel {
            Kernel::Fused(_) | Kernel::MatmulEpilogue(_) | Kernel::ReduceFused { .. } => "fused",
            Kernel::Single(p) if is_free(p) => "view",
            Kernel::Single(_) => "kernel",
        };
        let read: usize = step.inputs.iter().map(|&v| bytes(exe, v)).sum();
        let written: usize = step.outputs.iter().map(|&v| bytes(exe, v)).sum();
        let ins: Vec<String> = step.inputs.iter().map(|&v| value(exe, v)).collect();
        let outs: Vec<String> = step.outputs.iter().map(|&v| value(exe, v)).collect();
        let _ = writeln!(
            s,
            "kernel {i} [{kind}] {}\n  inputs:  {}\n  outputs: {}\n  bytes:   {read} read, {written} written",
            kernel_ops(&step.kernel).join(" -> "),
            ins.join(", "),
            outs.join(", ")
        );
        // The elementwise work, as the backend runs it (machine code, an interpreter).
        if let Some(code) = exe.step_code(i) {
            let _ = writeln!(s, "  code:    {code}");
        }
    }
    for note in exe.notes() {
        let _ = writeln!(s, "{note}");
    }
    let outs: Vec<String> = exe.program().outputs.iter().map(|&v| value(exe, v)).collect();
    let _ = writeln!(s, "outputs: {}", outs.join(", "));
    let _ = writeln!(s, "cache misses ({}):", misses.len());
    for (i, m) in misses.iter().enumerate() {
        let _ = writeln!(s, "  {}. {m}", i + 1);
    }
    s
}

/// Graphviz DOT: one node per value, fused kernels as clusters of their ops.
pub fn dot(exe: &dyn Executable) -> String {
    let p = exe.program();
    let mut s = String::from("digraph kiln {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n");
    let mut drawn = vec![false; p.instrs.len()];
    for (k, step) in exe.steps().iter().enumerate() {
        if let Kernel::Fused(g) | Kernel::MatmulEpilogue(g) | Kernel::ReduceFused { group: g, .. } = &step.kernel {
            let _ = writeln!(s, "  subgraph cluster_{k} {{\n    label=\"kernel {k}: fused\";\n    style=rounded;");
            // Fused ops are drawn as their own nodes inside the cluster.
            for (j, op) in g.ops.iter().enumerate() {
                let _ = writeln!(s, "    k{k}r{} [label=\"{}\"];", g.inputs.len() + j, op.prim.name());
            }
            s.push_str("  }\n");
            // Register `a` < inputs is a step input; in an epilogue, register 0
            // is the product and the step's inputs start with its two operands.
            let epilogue = matches!(step.kernel, Kernel::MatmulEpilogue(_));
            if epilogue {
                let _ = writeln!(s, "  subgraph cluster_{k} {{ k{k}r0 [label=\"matmul\"]; }}");
                let _ = writeln!(s, "  v{} -> k{k}r0;\n  v{} -> k{k}r0;", step.inputs[0], step.inputs[1]);
            }
            for (j, op) in g.ops.iter().enumerate() {
                for &a in &op.args {
                    let from = if a >= g.inputs.len() || (epilogue && a == 0) {
                        format!("k{k}r{a}")
                    } else if epilogue {
                        format!("v{}", step.inputs[a + 1])
                    } else {
                        format!("v{}", step.inputs[a])
                    };
                    let _ = writeln!(s, "  {from} -> k{k}r{};", g.inputs.len() + j);
                }
            }
            if let Kernel::ReduceFused { reductions, .. } = &step.kernel {
                for (j, (&o, (op, idx))) in step.outputs.iter().zip(reductions).enumerate() {
                    let _ = writeln!(s, "  subgraph cluster_{k} {{ k{k}red{j} [label=\"{}\"]; }}", op.name());
                    let _ =
                        writeln!(s, "  k{k}r{} -> k{k}red{j};\n  k{k}red{j} -> v{o} [style=dashed];", g.outputs[*idx]);
                }
            } else {
                for (o, &r) in step.outputs.iter().zip(&g.outputs) {
                    let _ = writeln!(s, "  k{k}r{r} -> v{o} [style=dashed];");
                }
            }
        } else {
            for &o in step.outputs {
                drawn[o] = true;
                let _ = writeln!(
                    s,
                    "  v{o} [label=\"{}\\n{}\"];",
                    p.instrs[o].prim.name(),
                    describe(p.instrs[o].dtype, &p.instrs[o].shape)
                );
                for &i in &p.instrs[o].inputs {
                    let _ = writeln!(s, "  v{i} -> v{o};");
                }
            }
        }
    }
    for (v, ins) in p.instrs.iter().enumerate() {
        if !drawn[v] {
            let _ = writeln!(
                s,
                "  v{v} [label=\"{}\\n{}\", shape=ellipse];",
                ins.prim.name(),
                describe(ins.dtype, &ins.shape)
            );
        }
    }
    s.push_str("}\n");
    s
}
