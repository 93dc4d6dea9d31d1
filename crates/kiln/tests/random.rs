//! Counter-based random numbers: Threefry known answers, reproducibility,
//! independence of split keys, thread-count independence, and statistical
//! checks with fixed keys (bounds of about 5 standard errors).

use kiln::random::threefry2x32;
use kiln::{random, Array, DType, Result};

const N: usize = 100_000;

fn f64s(a: &Array) -> Result<Vec<f64>> {
    a.astype(DType::F64)?.to_vec::<f64>()
}

fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (m, v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0))
}

/// `|got - want| <= 5 * se`, with a message.
fn within(what: &str, got: f64, want: f64, se: f64) {
    assert!((got - want).abs() <= 5.0 * se, "{what}: got {got}, want {want} +- {}", 5.0 * se);
}

#[test]
fn threefry_known_answers() {
    // Random123's published Threefry-2x32 (20 rounds) test vectors.
    assert_eq!(threefry2x32([0, 0], [0, 0]), [0x6b200159, 0x99ba4efe]);
    assert_eq!(threefry2x32([0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff]), [0x1cb996fc, 0xbb002be7]);
    assert_eq!(threefry2x32([0x13198a2e, 0x03707344], [0x243f6a88, 0x85a308d3]), [0xc4923a9c, 0x483df7a0]);
}

#[test]
fn random_bits_are_threefry_blocks_by_position() -> Result<()> {
    let k = random::key(0x1234_5678_9abc_def0);
    assert_eq!(k.to_vec::<u32>()?, vec![0x1234_5678, 0x9abc_def0]);
    assert_eq!(random::key(7).to_vec::<u32>()?, vec![0, 7]);
    let bits = random::random_bits(&k, &[5, 7])?;
    assert_eq!((bits.shape(), bits.dtype()), (&[5usize, 7][..], DType::U32));
    let words = [0x1234_5678, 0x9abc_def0];
    for (i, b) in bits.to_vec::<u32>()?.into_iter().enumerate() {
        assert_eq!(b, threefry2x32(words, [(i / 2) as u32, 0])[i % 2], "element {i}");
    }
    // Element i depends on (key, i) only: a shorter draw is a prefix.
    let long = random::random_bits(&k, &[35])?.to_vec::<u32>()?;
    let short = random::random_bits(&k, &[3, 3])?.to_vec::<u32>()?;
    assert_eq!(&long[..9], &short[..]);
    // A 0-d draw and an empty one.
    assert_eq!(random::random_bits(&k, &[])?.to_vec::<u32>()?, vec![long[0]]);
    assert!(random::random_bits(&k, &[4, 0])?.to_vec::<u32>()?.is_empty());
    Ok(())
}

#[test]
fn same_key_same_numbers_different_keys_differ() -> Result<()> {
    let (k1, k2) = (random::key(1), random::key(2));
    type Draw = fn(&Array) -> Result<Array>;
    let draws: [Draw; 6] = [
        |k| random::uniform(-3.0, 5.0, &[1000], DType::F32, Some(k)),
        |k| random::uniform(0.0, 1.0, &[1000], DType::F64, Some(k)),
        |k| random::normal(&[1000], DType::F32, 0.0, 1.0, Some(k)),
        |k| random::normal(&[1000], DType::BF16, 1.0, 2.0, Some(k)),
        |k| random::randint(-1000, 1000, &[1000], DType::I32, Some(k)),
        |k| random::bernoulli(0.5, &[1000], Some(k))?.astype(DType::I32),
    ];
    for (i, d) in draws.iter().enumerate() {
        let a = f64s(&d(&k1)?)?;
        assert_eq!(a, f64s(&d(&k1)?)?, "draw {i} with the same key");
        // A key equal in value (a different array) gives the same numbers.
        assert_eq!(a, f64s(&d(&Array::from_slice(&[0u32, 1], &[2])?)?)?, "draw {i} with an equal key");
        let b = f64s(&d(&k2)?)?;
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same < 600, "draw {i}: {same} of 1000 equal under different keys");
    }
    Ok(())
}

#[test]
fn split_keys_are_distinct_and_independent() -> Result<()> {
    let k = random::key(99);
    let keys = random::split(&k, 4)?;
    assert_eq!(keys.len(), 4);
    let words: Vec<Vec<u32>> = keys.iter().map(|x| x.to_vec::<u32>()).collect::<Result<_>>()?;
    // Splitting is deterministic and is the rows of random_bits(key, [n, 2]).
    let again: Vec<Vec<u32>> = random::split(&k, 4)?.iter().map(|x| x.to_vec::<u32>()).collect::<Result<_>>()?;
    assert_eq!(words, again);
    for (i, w) in words.iter().enumerate() {
        let block = threefry2x32([0, 99], [i as u32, 0]);
        assert_eq!(w, &block.to_vec(), "key {i}");
        assert_ne!(w, &vec![0, 99]);
    }
    // Uniforms from different split keys (and from the parent) are
    // uncorrelated: |corr| of independent samples has standard error 1/sqrt(n).
    let draws: Vec<Vec<f64>> = std::iter::once(&k)
        .chain(&keys)
        .map(|key| f64s(&random::uniform(0.0, 1.0, &[N], DType::F64, Some(key))?))
        .collect::<Result<_>>()?;
    for i in 0..draws.len() {
        for j in i + 1..draws.len() {
            let (mi, vi) = mean_var(&draws[i]);
            let (mj, vj) = mean_var(&draws[j]);
            let cov = draws[i].iter().zip(&draws[j]).map(|(x, y)| (x - mi) * (y - mj)).sum::<f64>() / N as f64;
            within(&format!("corr of draws {i} and {j}"), cov / (vi * vj).sqrt(), 0.0, 1.0 / (N as f64).sqrt());
        }
    }
    assert!(random::split(&k, 0)?.is_empty());
    Ok(())
}

/// The only test that uses the global key (tests run in parallel).
#[test]
fn global_key_and_seed() -> Result<()> {
    let draw = || random::normal(&[8], DType::F64, 0.0, 1.0, None)?.to_vec::<f64>();
    random::seed(42);
    let (a, b) = (draw()?, draw()?);
    assert_ne!(a, b, "each draw splits the global key");
    random::seed(42);
    assert_eq!((draw()?, draw()?), (a.clone(), b.clone()), "seed(42) replays the same draws");
    random::seed(43);
    assert_ne!(draw()?, a);
    // The first draw after seed(s) uses the second half of split(key(s), 2);
    // the first half becomes the global key for the next draw.
    let halves = random::split(&random::key(42), 2)?;
    let explicit = random::normal(&[8], DType::F64, 0.0, 1.0, Some(&halves[1]))?.to_vec::<f64>()?;
    assert_eq!(explicit, a);
    let next = random::split(&halves[0], 2)?;
    assert_eq!(random::normal(&[8], DType::F64, 0.0, 1.0, Some(&next[1]))?.to_vec::<f64>()?, b);
    // Every distribution draws from the global key.
    random::seed(7);
    let u = random::uniform(0.0, 1.0, &[4], DType::F32, None)?.to_vec::<f32>()?;
    let r = random::randint(0, 100, &[4], DType::I64, None)?.to_vec::<i64>()?;
    let p = random::bernoulli(0.5, &[64], None)?.to_vec::<bool>()?;
    random::seed(7);
    assert_eq!(random::uniform(0.0, 1.0, &[4], DType::F32, None)?.to_vec::<f32>()?, u);
    assert_eq!(random::randint(0, 100, &[4], DType::I64, None)?.to_vec::<i64>()?, r);
    assert_eq!(random::bernoulli(0.5, &[64], None)?.to_vec::<bool>()?, p);
    Ok(())
}

#[test]
fn same_numbers_on_one_thread_and_many() -> Result<()> {
    let k = random::key(2024);
    let n = 1 << 20; // far above the parallel threshold
    let run = || -> Result<(Vec<u32>, Vec<f32>, Vec<i32>)> {
        Ok((
            random::random_bits(&k, &[n])?.to_vec::<u32>()?,
            random::normal(&[n / 4], DType::F32, 0.0, 1.0, Some(&k))?.to_vec::<f32>()?,
            random::randint(-50, 50, &[n / 4], DType::I32, Some(&k))?.to_vec::<i32>()?,
        ))
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a 1-thread pool");
    let one = pool.install(run)?;
    let many = run()?;
    assert!(one == many, "results depend on the thread count");
    // Spot-check the parallel bits against the block function.
    let words = [0, 2024];
    for i in [0, 1, 16383, 16384, 16385, n / 2 + 1, n - 1] {
        assert_eq!(many.0[i], threefry2x32(words, [(i / 2) as u32, 0])[i % 2], "element {i}");
    }
    Ok(())
}

#[test]
fn normal_moments_and_shape() -> Result<()> {
    for (dt, seed) in [(DType::F32, 10), (DType::F64, 11), (DType::F16, 12), (DType::BF16, 13)] {
        let (loc, scale) = (3.0, 2.0);
        let x = random::normal(&[N], dt, loc, scale, Some(&random::key(seed)))?;
        assert_eq!((x.shape(), x.dtype()), (&[N][..], dt));
        let v = f64s(&x)?;
        assert!(v.iter().all(|x| x.is_finite()));
        let (m, var) = mean_var(&v);
        let n = N as f64;
        // Rounding to bf16 (8 bits) adds variance of about (2^-8 x)^2 / 3; allow it.
        let round = if dt == DType::BF16 { 0.02 } else { 0.0 };
        within(&format!("{dt} mean"), m, loc, scale / n.sqrt());
        within(&format!("{dt} variance"), var, scale * scale, scale * scale * (2.0 / n).sqrt() + round);
        // The shape of the distribution: mass within one and two sigma.
        for (k, p) in [(1.0, 0.682689492137), (2.0, 0.954499736104)] {
            let frac = v.iter().filter(|&&x| ((x - loc) / scale).abs() < k).count() as f64 / n;
            within(&format!("{dt} P(|z| < {k})"), frac, p, (p * (1.0 - p) / n).sqrt() + round);
        }
        // Symmetry.
        let above = v.iter().filter(|&&x| x > loc).count() as f64 / n;
        within(&format!("{dt} P(x > loc)"), above, 0.5, (0.25 / n).sqrt() + round);
    }
    // scale = 0 gives loc exactly.
    let c = random::normal(&[10], DType::F32, -1.5, 0.0, Some(&random::key(1)))?;
    assert_eq!(c.to_vec::<f32>()?, vec![-1.5; 10]);
    Ok(())
}

#[test]
fn uniform_range_mean_and_histogram() -> Result<()> {
    for (dt, low, high, seed) in [
        (DType::F32, -3.0, 5.0, 20),
        (DType::F64, 10.0, 10.5, 21),
        (DType::F16, 0.0, 1.0, 22),
        (DType::BF16, -1.0, 1.0, 23),
        (DType::F32, 1.0, 2.0, 24),
    ] {
        let x = random::uniform(low, high, &[N], dt, Some(&random::key(seed)))?;
        assert_eq!(x.dtype(), dt);
        let v = f64s(&x)?;
        assert!(v.iter().all(|&x| low <= x && x < high), "{dt} values outside [{low}, {high})");
        let n = N as f64;
        let (m, var) = mean_var(&v);
        let w = high - low;
        // bf16's coarse grid shifts the mean by up to half a step.
        let grid = if dt == DType::BF16 { 2f64.powi(-8) } else { 0.0 };
        within(&format!("{dt} mean"), m, (low + high) / 2.0, w / (12.0 * n).sqrt() + grid);
        within(&format!("{dt} variance"), var, w * w / 12.0, w * w * (1.0 / (180.0 * n)).sqrt() * 2.0 + grid);
        let mut bins = [0usize; 10];
        for &x in &v {
            bins[((((x - low) / w) * 10.0) as usize).min(9)] += 1;
        }
        for (b, &c) in bins.iter().enumerate() {
            within(&format!("{dt} bin {b}"), c as f64 / n, 0.1, (0.09 / n).sqrt() + grid);
        }
    }
    // A range holding a single f32 value gives that value.
    let one = random::uniform(1.0, 1.0 + f32::EPSILON as f64, &[100], DType::F32, Some(&random::key(3)))?;
    assert_eq!(one.to_vec::<f32>()?, vec![1.0; 100]);
    Ok(())
}

#[test]
fn randint_covers_the_range_and_stays_inside() -> Result<()> {
    let n = N as f64;
    // Every u8 value, each about equally often.
    let x = random::randint(0, 256, &[N], DType::U8, Some(&random::key(30)))?;
    assert_eq!(x.dtype(), DType::U8);
    let mut counts = [0usize; 256];
    for v in x.to_vec::<u8>()? {
        counts[v as usize] += 1;
    }
    let p = 1.0 / 256.0;
    for (v, &c) in counts.iter().enumerate() {
        within(&format!("u8 count of {v}"), c as f64 / n, p, (p * (1.0 - p) / n).sqrt());
    }
    // Negative bounds, i32 and i64.
    for dt in [DType::I32, DType::I64] {
        let x = random::randint(-5, 5, &[N], dt, Some(&random::key(31)))?;
        let v = x.astype(DType::I64)?.to_vec::<i64>()?;
        let mut counts = [0usize; 10];
        for &x in &v {
            assert!((-5..5).contains(&x), "{dt}: {x} outside [-5, 5)");
            counts[(x + 5) as usize] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            within(&format!("{dt} count of {}", i as i64 - 5), c as f64 / n, 0.1, (0.09 / n).sqrt());
        }
    }
    // u32 up to its maximum, and a single-value range.
    let v = random::randint(4_000_000_000, 4_294_967_296, &[N], DType::U32, Some(&random::key(32)))?.to_vec::<u32>()?;
    assert!(v.iter().all(|&x| x >= 4_000_000_000));
    let (m, _) = mean_var(&v.iter().map(|&x| x as f64).collect::<Vec<_>>());
    let w = 294_967_296.0;
    within("u32 mean", m, 4_000_000_000.0 + w / 2.0, w / (12.0 * n).sqrt());
    let one = random::randint(9, 10, &[50], DType::I32, Some(&random::key(1)))?.to_vec::<i32>()?;
    assert_eq!(one, vec![9; 50]);
    // An i64 range wider than 2^53 (the 64-bit path).
    let (lo, hi) = (-(1i64 << 61), (1i64 << 61) + 12345);
    let v = random::randint(lo, hi, &[N], DType::I64, Some(&random::key(33)))?.to_vec::<i64>()?;
    assert!(v.iter().all(|&x| lo <= x && x < hi));
    let f: Vec<f64> = v.iter().map(|&x| x as f64 / (1u64 << 61) as f64).collect();
    let (m, var) = mean_var(&f);
    within("wide i64 mean", m, 0.0, 2.0 / (12.0 * n).sqrt());
    within("wide i64 variance", var, 4.0 / 12.0, 4.0 * (1.0 / (180.0 * n)).sqrt() * 2.0);
    Ok(())
}

#[test]
fn bernoulli_frequency() -> Result<()> {
    let n = N as f64;
    for (p, seed) in [(0.3, 40), (0.5, 41), (0.999, 42), (1e-3, 43)] {
        let x = random::bernoulli(p, &[N], Some(&random::key(seed)))?;
        assert_eq!(x.dtype(), DType::Bool);
        let hits = x.to_vec::<bool>()?.iter().filter(|&&b| b).count() as f64;
        within(&format!("bernoulli({p}) frequency"), hits / n, p, (p * (1.0 - p) / n).sqrt());
    }
    let k = random::key(44);
    assert!(random::bernoulli(0.0, &[N], Some(&k))?.to_vec::<bool>()?.iter().all(|&b| !b));
    assert!(random::bernoulli(1.0, &[N], Some(&k))?.to_vec::<bool>()?.iter().all(|&b| b));
    Ok(())
}

#[test]
fn draws_are_lazy_graph_nodes() -> Result<()> {
    let k = random::key(5);
    for x in [
        random::uniform(0.0, 1.0, &[3], DType::F32, Some(&k))?,
        random::normal(&[3], DType::F32, 0.0, 1.0, Some(&k))?,
        random::randint(0, 3, &[3], DType::I32, Some(&k))?,
        random::bernoulli(0.5, &[3], Some(&k))?,
        random::split(&k, 2)?.remove(0),
    ] {
        assert!(!x.is_evaluated(), "{x:?} was computed eagerly");
        x.eval()?;
        assert!(x.is_evaluated());
    }
    Ok(())
}

#[test]
fn argument_errors() -> Result<()> {
    let k = random::key(0);
    let msg = |r: Result<Array>| r.unwrap_err().to_string();
    let m = msg(random::normal(&[2], DType::I32, 0.0, 1.0, Some(&k)));
    assert!(m.contains("normal") && m.contains("i32"), "{m}");
    let m = msg(random::normal(&[2], DType::F32, 0.0, -1.0, Some(&k)));
    assert!(m.contains("normal") && m.contains("scale"), "{m}");
    let m = msg(random::uniform(0.0, 1.0, &[2], DType::U8, Some(&k)));
    assert!(m.contains("uniform") && m.contains("u8"), "{m}");
    for (lo, hi) in [(1.0, 1.0), (2.0, 1.0), (0.0, f64::INFINITY), (f64::NAN, 1.0)] {
        let m = msg(random::uniform(lo, hi, &[2], DType::F32, Some(&k)));
        assert!(m.contains("uniform") && m.contains("low < high"), "{m}");
    }
    // No f16 value lies in [1.0001, 1.0002) (f16 steps from 1 to 1.000977).
    let m = msg(random::uniform(1.0001, 1.0002, &[2], DType::F16, Some(&k)));
    assert!(m.contains("uniform") && m.contains("f16"), "{m}");
    let m = msg(random::randint(0, 10, &[2], DType::F32, Some(&k)));
    assert!(m.contains("randint") && m.contains("f32"), "{m}");
    let m = msg(random::randint(5, 5, &[2], DType::I32, Some(&k)));
    assert!(m.contains("randint") && m.contains("low < high"), "{m}");
    let m = msg(random::randint(0, 257, &[2], DType::U8, Some(&k)));
    assert!(m.contains("randint") && m.contains("u8"), "{m}");
    let m = msg(random::randint(-1, 3, &[2], DType::U32, Some(&k)));
    assert!(m.contains("randint") && m.contains("u32"), "{m}");
    let m = msg(random::randint(i64::MIN, i64::MAX, &[2], DType::I64, Some(&k)));
    assert!(m.contains("randint") && m.contains("wider"), "{m}");
    for p in [-0.1, 1.5, f64::NAN] {
        let m = msg(random::bernoulli(p, &[2], Some(&k)));
        assert!(m.contains("bernoulli") && m.contains("[0, 1]"), "{m}");
    }
    // Keys must be u32 of shape (2).
    let m = msg(random::random_bits(&Array::from_slice(&[1.0f32, 2.0], &[2])?, &[3]));
    assert!(m.contains("random_bits") && m.contains("f32"), "{m}");
    let m = msg(random::uniform(0.0, 1.0, &[3], DType::F32, Some(&Array::from_slice(&[1u32, 2, 3], &[3])?)));
    assert!(m.contains("random_bits") && m.contains("(3)"), "{m}");
    assert!(random::split(&Array::from_slice(&[1u32], &[1])?, 2).is_err());
    Ok(())
}
