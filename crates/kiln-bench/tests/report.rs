//! The report writer on synthetic records: ratios, floor fractions, floors,
//! missing entries, targets and the JSON round trip, with expected values
//! worked out by hand from the synthetic times.

use kiln_bench::{
    add_matmul_floors, best_of_rounds, floor_fraction, markdown, percentile, ratio_to_kiln, read_parts, summarize,
    targets, write_outputs, Missing, Part, Record,
};

fn rec(workload: &str, imp: &str, median_ms: f64, bytes: u64, flops: u64) -> Record {
    Record {
        workload: workload.into(),
        imp: imp.into(),
        median_ms,
        p10_ms: median_ms * 0.9,
        p90_ms: median_ms * 1.1,
        bytes,
        flops,
    }
}

fn synthetic() -> Part {
    let mb = 128 << 20;
    Part {
        records: vec![
            rec("gelu_tanh", "kiln", 5.0, mb, 0),
            rec("gelu_tanh", "kiln-eager", 12.5, mb, 0),
            rec("gelu_tanh", "numpy", 100.0, mb, 0),
            rec("gelu_tanh", "jax-jit", 20.0, mb, 0),
            rec("gelu_tanh", "torch-compile", 15.0, mb, 0),
            rec("gelu_tanh", "floor", 4.0, mb, 0),
            rec("mlp", "kiln", 2.0, 1000, 1_600_000_000),
            rec("mlp", "numpy", 3.0, 1000, 1_600_000_000),
            rec("sgemm", "kiln", 100.0, 12, 2_000_000_000),
            rec("sgemm", "numpy", 80.0, 12, 2_000_000_000),
            rec("tiny", "kiln", 0.0015, 128, 16),
            rec("tiny", "jax-jit", 0.0047, 128, 16),
        ],
        missing: vec![Missing {
            imp: "mlx-compile".into(),
            workload: "*".into(),
            reason: "pip install mlx[cpu] failed".into(),
        }],
        notes: vec!["synthetic".into()],
        header: vec!["CPU: synthetic".into()],
    }
}

#[test]
fn ratios_to_kiln_are_impl_over_kiln() {
    let p = synthetic();
    assert_eq!(ratio_to_kiln(&p.records, "gelu_tanh", "kiln"), Some(1.0));
    assert_eq!(ratio_to_kiln(&p.records, "gelu_tanh", "jax-jit"), Some(4.0));
    assert_eq!(ratio_to_kiln(&p.records, "gelu_tanh", "kiln-eager"), Some(2.5));
    assert_eq!(ratio_to_kiln(&p.records, "gelu_tanh", "numpy"), Some(20.0));
    assert_eq!(ratio_to_kiln(&p.records, "gelu_tanh", "mlx-eager"), None);
    assert_eq!(ratio_to_kiln(&p.records, "softmax", "numpy"), None);
    assert_eq!(floor_fraction(&p.records, "gelu_tanh"), Some(0.8));
    assert_eq!(floor_fraction(&p.records, "mlp"), None);
}

#[test]
fn matmul_floor_uses_the_best_sgemm_rate() {
    let mut p = synthetic();
    // numpy's sgemm: 2e9 flops in 80 ms = 2.5e7 flops/ms (kiln: 2e7).
    let rate = add_matmul_floors(&mut p.records).expect("a rate");
    assert!((rate - 2.5e7).abs() < 1e-6, "rate {rate}");
    // mlp floor: 1.6e9 flops / 2.5e7 flops per ms = 64 ms.
    let f = p.records.iter().find(|r| r.workload == "mlp" && r.imp == "floor").expect("mlp floor");
    assert!((f.median_ms - 64.0).abs() < 1e-9, "{}", f.median_ms);
    // The sgemm row's own floor is the fastest sgemm time.
    let f = p.records.iter().find(|r| r.workload == "sgemm" && r.imp == "floor").expect("sgemm floor");
    assert!((f.median_ms - 80.0).abs() < 1e-9);
    // A second call adds nothing.
    let n = p.records.len();
    add_matmul_floors(&mut p.records);
    assert_eq!(p.records.len(), n);
}

#[test]
fn markdown_tables_show_ratios_floor_fraction_and_missing() {
    let md = markdown(&synthetic());
    // Per-workload table rows: jax-jit at 20 ms is 4.00x kiln's 5 ms, numpy 20.00x.
    assert!(md.contains("| jax-jit | 20.00 ms | 18.00 ms | 22.00 ms |"), "{md}");
    assert!(md.contains("| 4.00x |"), "{md}");
    assert!(md.contains("| numpy | 100.00 ms | 90.00 ms | 110.00 ms |"), "{md}");
    assert!(md.contains("| 20.00x |"));
    assert!(md.contains("| torch-compile | 15.00 ms | 13.50 ms | 16.50 ms |"));
    assert!(md.contains("| 3.00x |"));
    // Floor 4 ms over kiln 5 ms.
    assert!(md.contains("kiln runs at 80% of the copy-bandwidth floor."), "{md}");
    // Summary row of gelu_tanh: kiln, then kiln-eager 2.50x ... and 80%.
    let row = md.lines().find(|l| l.starts_with("| gelu_tanh | 5.00 ms |")).expect("summary row");
    assert!(row.contains("| 2.50x |") && row.contains("| 20.00x |") && row.ends_with("| 80% |"), "{row}");
    // Microsecond formatting for the tiny row.
    assert!(md.contains("| kiln | 1.50 us |"), "{md}");
    // A missing peer is listed, in the tables and in the Missing section.
    assert!(md.contains("| mlx-compile | missing: pip install mlx[cpu] failed |"), "{md}");
    assert!(md.contains("- mlx-compile (all workloads): pip install mlx[cpu] failed"));
    assert!(md.contains("- synthetic"));
}

#[test]
fn targets_are_checked_against_the_right_peer() {
    let p = synthetic();
    let t = targets(&p.records);
    let get = |what: &str| t.iter().find(|t| t.what.starts_with(what)).expect(what);
    // 5 ms vs faster of jax 20 / torch 15 -> 0.33x torch-compile: met (<= 0.5).
    let g = get("gelu_tanh: kiln <= 0.5x");
    assert_eq!(g.met, Some(true));
    assert_eq!(g.measured, "0.33x torch-compile");
    // Floor fraction 80% >= 60%.
    assert_eq!(get("gelu_tanh: kiln at >= 60%").met, Some(true));
    // mlp: 2 ms vs numpy 3 ms.
    assert_eq!(get("mlp: kiln <= 1.0x the fastest peer").met, Some(true));
    // sgemm: 100 ms vs numpy 80 ms.
    let g = get("sgemm: kiln <= 1.0x");
    assert_eq!((g.met, g.measured.as_str()), (Some(false), "1.25x numpy"));
    // tiny: 1.5 us <= 2 us.
    assert_eq!(get("tiny: kiln <= 2 us").met, Some(true));
    // The new rows are listed, without records.
    assert_eq!(get("adam: kiln <= 0.5x").met, None);
    assert_eq!(get("layernorm_1024x64: kiln at >= 60%").met, None);
    // softmax has no records at all.
    assert_eq!(get("softmax: kiln <= 0.5x").met, None);
    // A slower kiln fails the target.
    let mut p = synthetic();
    p.records[0].median_ms = 8.0; // 8 / 15 = 0.53x
    assert_eq!(targets(&p.records)[0].met, Some(false));
}

#[test]
fn targets_hold_against_the_faster_allocator_setting() {
    let mut p = synthetic();
    // torch-compile with reused blocks: 9 ms, so kiln's 5 ms is 0.56x of it.
    p.records.push(rec("gelu_tanh", "torch-compile+reuse", 9.0, 128 << 20, 0));
    p.records.push(rec("mlp", "torch-eager+reuse", 1.0, 1000, 1_600_000_000));
    let t = targets(&p.records);
    let get = |what: &str| t.iter().find(|t| t.what.starts_with(what)).expect(what);
    let g = get("gelu_tanh: kiln <= 0.5x");
    assert_eq!((g.met, g.measured.as_str()), (Some(false), "0.56x torch-compile+reuse"));
    let m = get("mlp: kiln <= 1.0x");
    assert_eq!((m.met, m.measured.as_str()), (Some(false), "2.00x torch-eager+reuse"));
    // The summary shows the faster setting, marked r; the workload table both.
    let md = markdown(&p);
    let row = md.lines().find(|l| l.starts_with("| gelu_tanh | 5.00 ms |")).expect("summary row");
    assert!(row.contains("| 1.80x r |"), "{row}");
    assert!(md.contains("| torch-compile+reuse | 9.00 ms |"), "{md}");
    assert!(md.contains("| torch-compile | 15.00 ms |"), "{md}");
}

#[test]
fn header_names_the_machine_and_the_copy_bandwidth() {
    let mut p = synthetic();
    // 256 MiB read + written in 20 ms: 26.8 GB/s; the gelu_tanh floor record
    // (128 MiB in 4 ms) says 33.6 GB/s.
    p.records.push(rec("copy", "floor", 20.0, 2 * (256 << 20), 0));
    let md = markdown(&p);
    assert!(md.contains("- CPU: synthetic"), "{md}");
    assert!(md.contains("- copy bandwidth: 26.8 GB/s (calibration copy), 33.6-33.6 GB/s"), "{md}");
    assert!(md.contains("## Targets (issue 17)"), "{md}");
}

#[test]
fn summarize_uses_linear_percentiles() {
    let r = summarize("w", "kiln", &[5.0, 1.0, 4.0, 2.0, 3.0], 10, 20);
    assert_eq!(r.median_ms, 3.0);
    assert!((r.p10_ms - 1.4).abs() < 1e-12, "{}", r.p10_ms);
    assert!((r.p90_ms - 4.6).abs() < 1e-12, "{}", r.p90_ms);
    assert_eq!((r.bytes, r.flops), (10, 20));
    assert_eq!(percentile(&[7.0], 0.9), 7.0);
}

#[test]
fn outputs_round_trip_through_json() {
    let dir = std::env::temp_dir().join(format!("kiln-bench-test-{}", std::process::id()));
    let part_path = dir.join("part.json");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&part_path, serde_json::to_string(&synthetic()).unwrap()).unwrap();
    let part = read_parts(&[&part_path]).unwrap();
    assert_eq!(part, synthetic());
    let md = write_outputs(&dir, part).unwrap();
    assert!(md.contains("| 4.00x |"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cpu.json")).unwrap()).unwrap();
    let list = json.as_array().expect("a list of records");
    // 12 synthetic records + matmul floors for mlp and sgemm.
    assert_eq!(list.len(), 14);
    let first = &list[0];
    for key in ["workload", "impl", "median_ms", "p10_ms", "p90_ms", "bytes", "flops"] {
        assert!(first.get(key).is_some(), "record lacks {key}: {first}");
    }
    assert_eq!(first["impl"], "kiln");
    let missing: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("missing.json")).unwrap()).unwrap();
    assert_eq!(missing[0]["impl"], "mlx-compile");
    assert!(std::fs::read_to_string(dir.join("cpu.md")).unwrap().contains("## Targets"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn quick_mode_runs_kiln_and_writes_the_outputs() {
    let dir = std::env::temp_dir().join(format!("kiln-bench-quick-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-bench"))
        .args(["--quick", "--out"])
        .arg(&dir)
        .output()
        .expect("run kiln-bench --quick");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let recs: Vec<Record> = serde_json::from_str(&std::fs::read_to_string(dir.join("cpu.json")).unwrap()).unwrap();
    for w in [
        "gelu_tanh",
        "gelu_erf",
        "softmax",
        "layernorm",
        "matmul_add",
        "mlp",
        "tiny",
        "first_call",
        "sgemm",
        "adam",
        "rmsnorm",
        "logsumexp",
        "cross_entropy",
        "polynomial",
        "matmul_gelu",
        "layernorm_1024x64",
        "layernorm_1024x4096",
    ] {
        let k = recs.iter().find(|r| r.workload == w && r.imp == "kiln").unwrap_or_else(|| panic!("no kiln {w}"));
        assert!(k.median_ms > 0.0 && k.p10_ms <= k.median_ms && k.median_ms <= k.p90_ms, "{k:?}");
    }
    assert!(recs.iter().any(|r| r.workload == "gelu_tanh" && r.imp == "floor"));
    assert!(recs.iter().any(|r| r.workload == "mlp" && r.imp == "floor"));
    let md = std::fs::read_to_string(dir.join("cpu.md")).unwrap();
    assert!(md.contains("- numpy (all workloads): not run (--quick)"), "{md}");
    assert!(md.contains("- torch-eager+reuse (all workloads): not run (--quick)"), "{md}");
    assert!(md.contains("- SIMD flags in /proc/cpuinfo: avx2 "), "{md}");
    assert!(md.contains("GB/s (calibration copy)"), "{md}");
    assert!(!md.contains("CHECK"), "compiled and eager kiln disagree: {md}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compile_time_reports_each_size_and_the_ratio() {
    let dir = std::env::temp_dir().join(format!("kiln-bench-ctime-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-bench"))
        .args(["compile-time", "--quick", "--out"])
        .arg(&dir)
        .output()
        .expect("run kiln-bench compile-time --quick");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("compile_time.json")).unwrap()).unwrap();
    let rows = v["rows"].as_array().expect("rows");
    let ns: Vec<u64> = rows.iter().map(|r| r["n"].as_u64().expect("n")).collect();
    assert_eq!(ns, vec![1_000, 10_000]);
    assert!(rows.iter().all(|r| r["median_ms"].as_f64().is_some_and(|t| t > 0.0)), "{v}");
    let ratio = v["ratio_10k_1k"].as_f64().expect("ratio");
    assert!(ratio > 0.0 && ratio < 100.0, "time(10k) / time(1k) = {ratio}");
    let md = std::fs::read_to_string(dir.join("compile_time.md")).unwrap();
    assert!(md.contains("| 10000 |") && md.contains("time(10k) / time(1k)"), "{md}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rounds_keep_each_pairs_faster_median() {
    let mb = 128 << 20;
    let mut records = vec![
        rec("softmax", "kiln", 9.0, mb, 0),
        rec("softmax", "torch-eager", 7.0, mb, 0),
        rec("softmax", "floor", 5.5, mb, 0),
        rec("softmax", "kiln", 8.0, mb, 0),
        rec("softmax", "torch-eager", 11.0, mb, 0),
        rec("softmax", "floor", 5.0, mb, 0),
        rec("tiny", "kiln", 0.001, 128, 16),
    ];
    assert_eq!(best_of_rounds(&mut records), 2);
    let median = |w: &str, i: &str| {
        records.iter().filter(|r| r.workload == w && r.imp == i).map(|r| r.median_ms).collect::<Vec<_>>()
    };
    assert_eq!(median("softmax", "kiln"), vec![8.0]);
    assert_eq!(median("softmax", "torch-eager"), vec![7.0]);
    assert_eq!(median("softmax", "floor"), vec![5.0]);
    assert_eq!(median("tiny", "kiln"), vec![0.001]);
    assert_eq!(records.len(), 4);
    assert_eq!(ratio_to_kiln(&records, "softmax", "torch-eager"), Some(7.0 / 8.0));
    assert_eq!(best_of_rounds(&mut records), 1);
}

#[test]
fn a_pair_one_round_skipped_is_not_missing() {
    let dir = std::env::temp_dir().join(format!("kiln-bench-rounds-{}", std::process::id()));
    let mut first = synthetic();
    first.records.push(rec("first_call", "jax-jit", 80.0, 0, 0));
    let mut second = synthetic();
    second.records.iter_mut().for_each(|r| r.median_ms *= 2.0);
    second.missing.push(Missing {
        imp: "jax-jit".into(),
        workload: "first_call".into(),
        reason: "fresh-process workloads run in the first round only".into(),
    });
    let mut part = first;
    part.extend(second);
    assert_eq!(part.missing.len(), 2, "the same missing entry is kept once");
    assert_eq!(part.header.len(), 1, "the same header line is kept once");
    let md = write_outputs(&dir, part).unwrap();
    assert!(md.contains("measured in 2 rounds"), "{md}");
    assert!(md.contains("| 4.00x |"), "the faster round's ratio: {md}");
    let missing: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("missing.json")).unwrap()).unwrap();
    let missing = missing.as_array().expect("a list");
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(missing[0]["impl"], "mlx-compile");
    std::fs::remove_dir_all(&dir).unwrap();
}
