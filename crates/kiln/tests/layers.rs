//! The layer rule of `ARCHITECTURE.md`: the graph layer (everything under
//! `src/` outside `src/backend/`) never names the CPU backend; only
//! `backend/mod.rs`, which picks the backend for a device, names concrete
//! backends, in code and in doc links alike.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src is readable") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_graph_layer_never_imports_a_concrete_backend() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found the sources ({} files)", files.len());
    let mut bad = vec![];
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src").to_string_lossy().replace('\\', "/");
        if rel.starts_with("backend/") {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("readable source");
        for (i, line) in text.lines().enumerate() {
            if line.contains("backend::cpu") || line.contains("cpu::Cpu") || line.contains("backend::cuda") {
                bad.push(format!("src/{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(bad.is_empty(), "graph-layer code names a concrete backend:\n{}", bad.join("\n"));
}

/// Backends import the graph layer and their shared math, never each
/// other: the CUDA backend does not name the CPU's modules, nor the CPU
/// backend the CUDA one's.
#[test]
fn backends_do_not_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backend");
    let mut bad = vec![];
    for (dir, other) in [("cpu", "backend::cuda"), ("cuda", "backend::cpu")] {
        let mut files = vec![];
        rust_files(&src.join(dir), &mut files);
        for f in &files {
            let text = std::fs::read_to_string(f).expect("readable source");
            for (i, line) in text.lines().enumerate() {
                // Comments may point at the other backend's counterpart.
                if line.contains(other) && !line.trim_start().starts_with("//") {
                    bad.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
                }
            }
        }
        assert!(dir == "cpu" || !files.is_empty(), "found the CUDA backend's sources");
    }
    assert!(bad.is_empty(), "a backend names another:\n{}", bad.join("\n"));
}
