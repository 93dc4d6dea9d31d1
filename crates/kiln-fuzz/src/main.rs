//! The stable fuzz driver: runs a target on byte strings made from seeds,
//! in child processes under an address-space limit, and counts what
//! happened to each case: passed, failed (a broken promise or a panic inside
//! kiln), crashed (an abort or a signal took the child down) or hung.
//!
//! ```text
//! kiln-fuzz run <target> [--seconds S] [--cases C] [--seed N] [--mem-mb M] [--out DIR]
//! kiln-fuzz replay <target> <file>
//! ```
//!
//! `run` starts at seed N (default: from the clock) and goes on for S
//! seconds (default 60) or C cases, whichever ends first (a fixed seed and
//! count give the same cases on every run, as CI wants), 500 cases per
//! child, each child under `ulimit -v`
//! of M MiB (default 4096; 0 for none, as fuzzing on a GPU needs) and kiln's allocation limit `KILN_MEMORY_LIMIT`
//! (default 256M: a valid graph whose intermediates are huge then ends in
//! `OutOfMemory` quickly instead of paging for minutes). A failed, crashed or hung case
//! is written to DIR (default `target/fuzz-cases`) as `<target>-<seed>.bin`,
//! which `replay` runs in this process (and which libFuzzer takes as a
//! corpus file). The exit status is 1 when any case did not pass.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Cases per child process.
const BATCH: u64 = 500;
/// A case that runs longer than this is a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(20);

/// The byte string of case `seed`: 16 to 527 bytes from splitmix64.
fn case_bytes(seed: u64) -> Vec<u8> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let len = 16 + (next() % 512) as usize;
    (0..len).map(|_| next() as u8).collect()
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

/// Child mode: runs `count` cases from `start`, reporting each on stdout.
fn child(target: fn(&[u8]), start: u64, count: u64) {
    std::panic::set_hook(Box::new(|_| {}));
    let mut out = std::io::stdout().lock();
    for seed in start..start + count {
        let _ = writeln!(out, "case {seed}");
        let _ = out.flush();
        let bytes = case_bytes(seed);
        match std::panic::catch_unwind(|| target(&bytes)) {
            Ok(()) => {
                let _ = writeln!(out, "ok");
            }
            Err(p) => {
                let msg = panic_text(p.as_ref()).replace('\n', " ");
                let _ = writeln!(out, "fail {msg}");
            }
        }
    }
    let _ = writeln!(out, "done");
    let _ = out.flush();
}

/// What happened to a case.
#[derive(Default)]
struct Tally {
    passed: u64,
    /// Kind and first message -> (count, first seed).
    bad: BTreeMap<String, (u64, u64)>,
}

impl Tally {
    fn bad(&mut self, kind: &str, msg: &str, seed: u64, out: &PathBuf, target: &str) {
        // Group by what broke: the message before the case's story (" | "),
        // with numbers blanked.
        let what = msg.split(" | ").next().unwrap_or(msg);
        let mut key = format!("{kind}: ");
        let mut in_number = false;
        for c in what.chars().take(120) {
            if c.is_ascii_digit() {
                if !in_number {
                    key.push('N');
                }
                in_number = true;
            } else {
                key.push(c);
                in_number = false;
            }
        }
        let e = self.bad.entry(key).or_insert((0, seed));
        e.0 += 1;
        if e.0 == 1 {
            let _ = std::fs::create_dir_all(out);
            let _ = std::fs::write(out.join(format!("{target}-{seed}.bin")), case_bytes(seed));
        }
    }
}

fn run(target: &str, seconds: u64, cases: u64, seed: u64, mem_mb: u64, out: PathBuf) -> bool {
    let exe = std::env::current_exe().expect("own path");
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut next = seed;
    let (mut crashed, mut hung) = (0u64, 0u64);
    let end = seed.saturating_add(cases);
    while started.elapsed() < Duration::from_secs(seconds) && next < end {
        let batch = BATCH.min(end - next);
        // `--mem-mb 0`: no address-space limit (a CUDA context reserves
        // far more address space than any limit that would catch a leak).
        let limit = if mem_mb == 0 { String::new() } else { format!("ulimit -v {}; ", mem_mb * 1024) };
        let script = format!("{limit}exec \"$0\" child {target} {next} {batch}");
        let mut ch = match Command::new("sh")
            .arg("-c")
            .arg(&script)
            .arg(&exe)
            .env("KILN_MEMORY_LIMIT", std::env::var("KILN_MEMORY_LIMIT").unwrap_or_else(|_| "256M".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("kiln-fuzz: cannot start a child: {e}");
                return false;
            }
        };
        let stdout = ch.stdout.take().expect("piped");
        let stderr = ch.stderr.take().expect("piped");
        let err_text = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut current: Option<u64> = None;
        let mut finished = false;
        let mut resume = None;
        loop {
            match rx.recv_timeout(CASE_TIMEOUT) {
                Ok(line) => {
                    if let Some(s) = line.strip_prefix("case ") {
                        current = s.parse().ok();
                    } else if line == "ok" {
                        tally.passed += 1;
                        current = None;
                    } else if let Some(msg) = line.strip_prefix("fail ") {
                        let s = current.take().unwrap_or(next);
                        tally.bad("failed", msg, s, &out, target);
                    } else if line == "done" {
                        finished = true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = ch.kill();
                    if let Some(s) = current.take() {
                        hung += 1;
                        tally.bad("hung", "no result within the case timeout", s, &out, target);
                        resume = Some(s + 1);
                    }
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = ch.wait();
        let stderr_text = err_text.join().unwrap_or_default();
        if let Some(s) = current {
            // The child died inside case `s`: an abort or a signal.
            crashed += 1;
            let why = match &status {
                Ok(st) => format!("{st}"),
                Err(e) => e.to_string(),
            };
            // The line that says why: an allocation failure, a panic in a
            // context that cannot unwind, or else the last line written.
            let markers = ["memory allocation of", "panicked", "fatal runtime error", "overflow", "error"];
            let last = stderr_text
                .lines()
                .find(|l| markers.iter().any(|m| l.contains(m)))
                .or_else(|| stderr_text.lines().rev().find(|l| !l.trim().is_empty()))
                .unwrap_or("")
                .to_string();
            tally.bad("crashed", &format!("{why}: {last}"), s, &out, target);
            next = s + 1;
        } else if finished {
            next += batch;
        } else if let Some(r) = resume {
            next = r;
        } else {
            break;
        }
    }
    let bad: u64 = tally.bad.values().map(|(n, _)| n).sum();
    println!(
        "kiln-fuzz {target}: {} cases in {:.0} s from seed {seed}: {} passed, {} failed, {crashed} crashed, {hung} hung",
        tally.passed + bad,
        started.elapsed().as_secs_f64(),
        tally.passed,
        bad - crashed - hung
    );
    for (what, (n, s)) in &tally.bad {
        println!("  {n} x {what} (first: seed {s}, {}/{target}-{s}.bin)", out.display());
    }
    bad == 0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: kiln-fuzz run <target> [--seconds S] [--cases C] [--seed N] [--mem-mb M] [--out DIR] | kiln-fuzz replay <target> <file>";
    let target_fn = |name: &str| {
        kiln_fuzz::target(name).unwrap_or_else(|| {
            let names: Vec<&str> = kiln_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
            eprintln!("kiln-fuzz: no target {name:?} (targets: {})", names.join(", "));
            std::process::exit(2)
        })
    };
    match args.get(1).map(String::as_str) {
        Some("child") if args.len() == 5 => {
            let (start, count) = (args[3].parse().expect("start"), args[4].parse().expect("count"));
            child(target_fn(&args[2]), start, count);
        }
        Some("replay") if args.len() == 4 => {
            let f = target_fn(&args[2]);
            let bytes = std::fs::read(&args[3]).unwrap_or_else(|e| {
                eprintln!("kiln-fuzz: cannot read {}: {e}", args[3]);
                std::process::exit(2)
            });
            f(&bytes);
            println!("kiln-fuzz {}: {} passed", args[2], args[3]);
        }
        Some("run") if args.len() >= 3 => {
            target_fn(&args[2]);
            let mut opts = BTreeMap::new();
            for pair in args[3..].chunks(2) {
                match pair {
                    [k, v] if k.starts_with("--") => {
                        opts.insert(k.trim_start_matches("--").to_string(), v.clone());
                    }
                    _ => {
                        eprintln!("{usage}");
                        std::process::exit(2);
                    }
                }
            }
            let num = |k: &str, d: u64| opts.get(k).map_or(Some(d), |v| v.parse().ok());
            let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let (Some(seconds), Some(cases), Some(seed), Some(mem)) =
                (num("seconds", 60), num("cases", u64::MAX), num("seed", clock), num("mem-mb", 4096))
            else {
                eprintln!("{usage}");
                std::process::exit(2)
            };
            let out = PathBuf::from(opts.get("out").cloned().unwrap_or_else(|| "target/fuzz-cases".into()));
            if !run(&args[2], seconds, cases, seed, mem, out) {
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
