use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() -> Result<(), Box<dyn std::error::Error>> {
    for (m, k, n) in [(2360usize, 576usize, 3072usize), (2360, 1536, 576), (2048, 2048, 2048), (1392, 576, 49152)] {
        let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let b = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        let bt = b.t()?;
        let bc = bt.contiguous()?;
        for (name, rhs) in [("strided", &bt), ("contig", &bc)] {
            let _ = a.matmul(rhs)?;
            let t = Instant::now();
            for _ in 0..3 {
                let _ = a.matmul(rhs)?;
            }
            let s = t.elapsed().as_secs_f64() / 3.0;
            println!("{m}x{k}x{n} {name}: {:.3}s {:.1} GFLOPS", s, 2.0 * (m * k * n) as f64 / s / 1e9);
        }
    }
    Ok(())
}
