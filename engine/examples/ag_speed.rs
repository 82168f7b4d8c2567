use candle_core::Device;
use orchard_engine::autograd::*;
use std::time::Instant;
extern "C" {
    fn mallopt(param: i32, value: i32) -> i32;
}
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var("NO_MALLOPT").is_err() {
        unsafe {
            mallopt(-3, 1 << 30);
            mallopt(-1, i32::MAX);
        }
    }
    let threads = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    orchard_engine::init_threads(Some(threads));
    let engine = orchard_engine::Engine::load("default")?;
    let lora = std::env::args().nth(1).as_deref() == Some("lora");
    let tuning = if lora { Tuning::Lora(LoraConfig::default()) } else { Tuning::Full };
    let t0 = Instant::now();
    let m = DiffModel::new(engine.model(), &tuning, &Device::Cpu, 0)?;
    eprintln!("build {:?}", t0.elapsed());
    let lens = [280usize, 310, 260, 330, 300, 290, 270, 320];
    let seqs: Vec<Vec<u32>> = lens
        .iter()
        .enumerate()
        .map(|(k, &l)| (0..l).map(|i| ((i * 131 + k * 7) % 49000) as u32 + 10).collect())
        .collect();
    let batch = Packed::new(&seqs);
    let mut rows = vec![];
    let mut targets = vec![];
    for (k, &(s, l)) in batch.seqs().iter().enumerate() {
        for i in 120..l - 1 {
            rows.push(s + i);
            targets.push(seqs[k][i + 1]);
        }
    }
    eprintln!("T={} N={}", batch.rows(), rows.len());
    for _ in 0..2 {
        let t = Instant::now();
        let lp = m.token_logprobs(&batch, &rows, &targets, Mode::Train { dropout_seed: 1 })?;
        let loss = lp.sum_all()?;
        let tf = t.elapsed();
        let g = loss.backward()?;
        let tb = t.elapsed() - tf;
        eprintln!("fwd {:?} bwd {:?} grads {}", tf, tb, g.get_ids().count());
        drop(g);
        let t = Instant::now();
        let _ = m.token_logprobs(&batch, &rows, &targets, Mode::Eval)?;
        eprintln!("eval fwd {:?}", t.elapsed());
    }
    Ok(())
}
