//! One DP-SGD step on random per-sample gradients, on the CPU or a GPU:
//! norms → clip factors → fused clip-and-accumulate → fused noisy SGD step.
//!
//! `cargo run --release --example dp_step [-- --device cuda --batch 256 --params 26010]`

use dpsgd::ops::{self, ClipWorkspace, Clipping};
use dpsgd::{Buffer, Device, Layout, NoiseKey, NoisyStep, SgdConfig};
use std::time::Instant;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let device = Device::from_name(&arg(&args, "--device", "cpu"))?;
    let batch: usize = arg(&args, "--batch", "256").parse()?;
    let p: usize = arg(&args, "--params", "26010").parse()?;
    let (sigma, c, lr) = (1.1f32, 1.0f32, 0.1f32);
    let seed = 2026;
    println!(
        "device {}: batch {batch}, P = {p}, σ = {sigma}, C = {c}, lr = {lr}",
        device.describe()
    );

    // Random per-sample gradients with norms around 2C, so most rows get clipped.
    let mut host = vec![0f32; batch * p];
    // One key per purpose: the synthetic data never shares a stream with the noise.
    let keys = dpsgd::rng::RunKeys::seeded(seed);
    dpsgd::cpu::noise::add_gaussian(
        &mut host,
        2.0 * c as f64 / (p as f64).sqrt(),
        NoiseKey::new(keys.key(dpsgd::rng::Purpose::Shuffle), 0),
    )?;
    let layout = Layout::flat(p);
    let grads = Buffer::from_slice(&device, &host)?;
    let mut params = Buffer::<f32>::zeros(&device, p)?;
    let mut sum = Buffer::<f32>::zeros(&device, p)?;
    let mut ws = ClipWorkspace::new(&device, batch, &layout)?;

    let t0 = Instant::now();
    ops::clip_and_accumulate(
        &grads,
        batch,
        &layout,
        &Clipping::Flat(c),
        &mut ws,
        &mut sum,
    )?;
    let noise_key = keys.key(dpsgd::rng::Purpose::GradientNoise);
    let noisy = NoisyStep::new(
        sigma as f64,
        c as f64,
        batch as f64,
        NoiseKey::for_step_with(noise_key, 0, 0)?,
    )?;
    ops::noisy_sgd_step(&mut params, &sum, None, &SgdConfig::new(lr), &noisy)?;
    device.synchronize()?;
    let dt = t0.elapsed();

    let norms = ws.norms.to_vec()?;
    let clipped = norms.iter().filter(|&&n| n > c).count();
    let mean_norm = norms.iter().sum::<f32>() / batch.max(1) as f32;
    let s = sum.to_vec()?;
    let sum_norm = s.iter().map(|x| x * x).sum::<f32>().sqrt();
    let pv = params.to_vec()?;
    let step_norm = pv.iter().map(|x| x * x).sum::<f32>().sqrt();
    println!("per-sample norms: mean {mean_norm:.3}, {clipped}/{batch} clipped to C = {c}");
    println!(
        "clipped sum: L2 norm {sum_norm:.3} (at most B·C = {})",
        batch as f32 * c
    );
    println!(
        "noisy step: noise std σC = {:.2} per coordinate, ‖Δp‖ = {step_norm:.4}",
        sigma * c
    );
    println!("one DP-SGD step took {:.2} ms", dt.as_secs_f64() * 1e3);
    Ok(())
}
