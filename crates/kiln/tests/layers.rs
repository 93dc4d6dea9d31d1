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
            if line.contains("backend::cpu") || line.contains("cpu::Cpu") {
                bad.push(format!("src/{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(bad.is_empty(), "graph-layer code names the CPU backend:\n{}", bad.join("\n"));
}
