//! Embedding dpsgd's privacy engine in another trainer: a hand-written logistic regression
//! computes its own per-sample gradients; the engine clips, noises, accounts and returns the
//! noised mean gradient, which this trainer's own optimizer applies.
//!
//! `cargo run --release --example embed_engine`

use dpsgd::accounting::Method;
use dpsgd::cpu::philox::Philox;
use dpsgd::engine::{NoiseSpec, PrivacyConfig, PrivacyEngine};
use dpsgd::ops::Clipping;
use dpsgd::rng::RandomBits;
use dpsgd::sampling::PoissonSampler;
use dpsgd::{Buffer, Device, Layout};

fn main() -> dpsgd::Result<()> {
    // Data: y = 1 if x·w* > 0, d = 20 features.
    let (n, d) = (5000usize, 20usize);
    let mut rng = Philox::new(7, 0);
    let w_true: Vec<f64> = (0..d).map(|_| rng.next_normal_f64()).collect();
    let x: Vec<f32> = (0..n * d).map(|_| rng.next_normal_f64() as f32).collect();
    let y: Vec<f32> = (0..n)
        .map(|i| {
            let s: f64 = (0..d).map(|j| x[i * d + j] as f64 * w_true[j]).sum();
            (s > 0.0) as u8 as f32
        })
        .collect();

    let layout = Layout::from_sizes(&[d, 1])?; // weight, bias
    let p = layout.num_params();
    let (q, epochs) = (0.02, 10u64);
    let mut sampler = PoissonSampler::new(n, q, 1)?;
    let steps = epochs * sampler.steps_per_epoch();
    let cfg = PrivacyConfig {
        noise: NoiseSpec::TargetEpsilon(1.0),
        delta: 1e-5,
        clipping: Clipping::Flat(1.0),
        sample_rate: q,
        dataset_size: n,
        planned_steps: steps,
        accountant: Method::Rdp,
    };
    let device = Device::Cpu;
    let mut engine = PrivacyEngine::new(cfg, layout, &device, Some(42))?;
    println!(
        "σ = {:.3} for ε = 1 over {steps} steps",
        engine.noise_multiplier()
    );

    let mut w = vec![0f32; p];
    let mut lot = Vec::new();
    let mut grads = vec![0f32; n * p];
    let mut noisy = Buffer::<f32>::zeros(&device, p)?;
    let mut eps = 0.0;
    for _ in 0..steps {
        sampler.sample_into(&mut lot);
        // This trainer's own per-sample gradients of the logistic loss: (σ(w·x + b) − y)·(x, 1).
        for (r, &i) in lot.iter().enumerate() {
            let xi = &x[i * d..(i + 1) * d];
            let z: f32 = xi.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>() + w[d];
            let g = 1.0 / (1.0 + (-z).exp()) - y[i];
            let row = &mut grads[r * p..(r + 1) * p];
            row[..d].iter_mut().zip(xi).for_each(|(o, a)| *o = g * a);
            row[d] = g;
        }
        let b = lot.len();
        engine.accumulate(&Buffer::from_slice(&device, &grads[..b * p])?, b)?;
        eps = engine.noisy_gradient(&mut noisy)?;
        // This trainer's own optimizer: plain SGD.
        for (wi, gi) in w.iter_mut().zip(noisy.to_vec()?) {
            *wi -= 0.5 * gi;
        }
    }
    let correct = (0..n)
        .filter(|&i| {
            let z: f32 = x[i * d..(i + 1) * d]
                .iter()
                .zip(&w)
                .map(|(a, b)| a * b)
                .sum::<f32>()
                + w[d];
            (z > 0.0) == (y[i] > 0.5)
        })
        .count();
    println!(
        "training accuracy {:.1}% at ε = {eps:.3} (δ = 1e-5)",
        100.0 * correct as f64 / n as f64
    );
    Ok(())
}
