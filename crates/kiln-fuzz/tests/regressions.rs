//! Every case the fuzzers found (a wrong result, a panic, an abort, a hang)
//! stays fixed: `regressions/<target>-<seed>.bin` is replayed through its
//! target. Runs in this process under a 1 GiB allocation limit, so a case
//! that tries to allocate too much again fails as an error inside kiln
//! instead of taking the machine's memory.

use std::path::Path;

#[test]
fn every_saved_fuzz_case_passes() {
    kiln::set_memory_limit(Some(1 << 30));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the regressions folder")
        .map(|e| e.expect("a folder entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    assert!(files.len() >= 40, "expected the saved cases in {}, found {}", dir.display(), files.len());
    let mut targets_seen = std::collections::BTreeSet::new();
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).expect("a file name");
        let target_name = name.split('-').next().expect("<target>-<seed>.bin");
        let target = kiln_fuzz::target(target_name).unwrap_or_else(|| panic!("{name}: no target {target_name}"));
        let bytes = std::fs::read(f).expect("a saved case");
        if let Err(p) = std::panic::catch_unwind(|| target(&bytes)) {
            let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
            panic!("{name} fails again: {msg}");
        }
        targets_seen.insert(target_name.to_string());
    }
    assert_eq!(targets_seen.len(), kiln_fuzz::TARGETS.len(), "a saved case for every target");
}
