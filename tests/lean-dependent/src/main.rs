//! One DP-SGD step through dpsgd's public library API, as a crate that depends on dpsgd with
//! `default-features = false` would write it: a privacy engine, a few per-sample gradient rows
//! clipped into the lot, the noised mean gradient, and ε.

use dpsgd::accounting::Method;
use dpsgd::engine::{NoiseSpec, PrivacyConfig, PrivacyEngine};
use dpsgd::{Buffer, Clipping, Device, Layout};

fn main() -> dpsgd::Result<()> {
    let device = Device::Cpu;
    // A model with a 3-value weight and a 1-value bias: P = 4.
    let layout = Layout::from_sizes(&[3, 1])?;
    let p = layout.num_params();
    let cfg = PrivacyConfig {
        noise: NoiseSpec::NoiseMultiplier(1.0),
        delta: 1e-5,
        clipping: Clipping::Flat(1.0),
        sample_rate: 0.01,
        dataset_size: 1000,
        planned_steps: 100,
        accountant: Method::Rdp,
    };
    let mut engine = PrivacyEngine::new(cfg, layout, &device, Some(1))?;

    // Three examples' gradients, one row of P values each (the second one gets clipped).
    let rows: [f32; 12] = [
        0.1, -0.2, 0.3, 0.05, //
        3.0, 4.0, 0.0, 0.0, //
        -0.4, 0.0, 0.2, 0.1,
    ];
    engine.accumulate(&Buffer::from_slice(&device, &rows)?, 3)?;
    let mut noisy = Buffer::<f32>::zeros(&device, p)?;
    let eps = engine.noisy_gradient(&mut noisy)?;

    let g = noisy.to_vec()?;
    println!("noisy mean gradient {g:?}");
    println!("ε = {eps:.4} (δ = 1e-5) after {} step", engine.steps());
    if g.len() != p || !g.iter().all(|x| x.is_finite()) || !(eps.is_finite() && eps > 0.0) {
        eprintln!("error: unexpected result (gradient {g:?}, ε {eps})");
        std::process::exit(1);
    }
    Ok(())
}
