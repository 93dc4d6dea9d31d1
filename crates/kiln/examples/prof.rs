use kiln::*;
use std::time::Instant;
fn t(name: &str, mut f: impl FnMut() -> Result<()>) -> Result<()> {
    f()?;
    let mut v = vec![];
    for _ in 0..7 { let s = Instant::now(); f()?; v.push(s.elapsed().as_secs_f64() * 1e3); }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("{name:30} {:8.2} ms", v[3]);
    Ok(())
}
fn main() -> Result<()> {
    let x = random::normal(&[4096, 4096], DType::F32, 0.0, 1.0, None)?; x.eval()?;
    let sm = compile(|x: &Array| x.softmax(-1));
    t("softmax compiled", || sm.call(&x)?.eval())?;
    let st = compile(|x: &Array| Ok((x.max(-1, true)?, (x - &x.max(-1, true)?)?.exp()?.sum(-1, true)?)));
    t("max+sumexp compiled", || { let (a, b) = st.call(&x)?; eval(&[&a, &b]) })?;
    t("sumexp eager", || kiln::reduce(kiln::primitive::ReduceOp::SumExp, &x, -1, true)?.eval())?;
    t("max eager", || x.max(-1, true)?.eval())?;
    t("sum eager", || x.sum(-1, true)?.eval())?;
    t("var eager", || x.var(-1, true, 0)?.eval())?;
    let m = x.max(-1, true)?; m.eval()?;
    let ex = compile(|x: &Array, m: &Array| (x - m)?.exp());
    t("exp(x-m) compiled", || ex.call((&x, &m))?.eval())?;
    t("exp eager", || x.exp()?.eval())?;
    let cp = compile(|x: &Array| x * 2.0f32);
    t("x*2 compiled", || cp.call(&x)?.eval())?;
    println!("{}", sm.explain(&x)?);
    Ok(())
}
