//! WGAN-GP's double backward (`Sequential::input_grad_param_grad`, `nn::gradient_penalty`):
//! a closed form in f64 on a two-layer MLP, and the whole penalty's parameter gradient against
//! central finite differences on a small conv net. With the `cuda` feature and a GPU, the CUDA
//! path against the CPU on GS-WGAN's two critics (the MLP critic and the conv critic, batch 1
//! and larger, overwrite and accumulate); those skip without a GPU and fail without one when
//! `DPSGD_REQUIRE_GPU=1`.

use dpsgd::nn::{gradient_penalty, Grads, Sequential};
use dpsgd::{Buffer, Device};

mod common;

/// The input gradient of `dy · f(x)` through the library's backward.
fn input_grad(m: &Sequential, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let b = dy.len() / m.output_shape().iter().product::<usize>();
    let mut ws = m.workspace(b).unwrap();
    m.forward(&mut ws, x).unwrap();
    m.set_output_grad(&mut ws, dy).unwrap();
    m.backward(&mut ws, Grads::None, true).unwrap();
    ws.input_grad().unwrap().to_vec()
}

#[test]
fn mlp_closed_form() {
    let dev = Device::Cpu;
    let m = Sequential::builder(&[4])
        .linear(5, true)
        .leaky_relu(0.2)
        .linear(1, true)
        .build(&dev, 11)
        .unwrap();
    let p = m.params().to_vec().unwrap();
    let (w1, b1, w2) = (&p[0..20], &p[20..25], &p[25..30]);
    let b = 3;
    let x = common::uniform(b * 4, 1.0, 5);
    let v = common::uniform(b * 4, 1.0, 6);
    let dy = [1.0f32, -0.5, 2.0];
    let mut g = Buffer::zeros(&dev, m.num_params()).unwrap();
    m.input_grad_param_grad(&x, &dy, &v, &mut g, false).unwrap();
    let g = g.to_vec().unwrap();
    // ⟨v, ∇_x dy·f⟩ = dy · (m ⊙ w2) · (W1 v): ∂/∂W1[j,k] = dy m_j w2_j v_k, ∂/∂w2_j = dy m_j (W1 v)_j.
    let mut want = vec![0f64; 31];
    for i in 0..b {
        for j in 0..5 {
            let pre: f64 = (0..4)
                .map(|k| w1[j * 4 + k] as f64 * x[i * 4 + k] as f64)
                .sum::<f64>()
                + b1[j] as f64;
            let mask = if pre > 0.0 { 1.0 } else { 0.2 };
            let w1v: f64 = (0..4)
                .map(|k| w1[j * 4 + k] as f64 * v[i * 4 + k] as f64)
                .sum();
            for k in 0..4 {
                want[j * 4 + k] += dy[i] as f64 * mask * w2[j] as f64 * v[i * 4 + k] as f64;
            }
            want[25 + j] += dy[i] as f64 * mask * w1v;
        }
    }
    for (k, (&a, &w)) in g.iter().zip(&want).enumerate() {
        assert!(
            (a as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "param {k}: {a} vs {w}"
        );
    }
    // Biases get nothing; accumulate adds.
    assert!(g[20..25].iter().all(|&z| z == 0.0) && g[30] == 0.0);
    let mut acc = Buffer::from_slice(&dev, &[1.0f32; 31]).unwrap();
    m.input_grad_param_grad(&x, &dy, &v, &mut acc, true)
        .unwrap();
    let acc = acc.to_vec().unwrap();
    assert!(acc.iter().zip(&g).all(|(a, g)| (a - 1.0 - g).abs() < 1e-6));
}

/// P(θ) = λ/B Σ (‖∇_x f_{y_i}(x_i)‖ − 1)², from the library's first-order backward.
fn penalty(m: &Sequential, x: &[f32], dy: &[f32], b: usize, lambda: f64) -> f64 {
    let u = input_grad(m, x, dy);
    let mut scratch = vec![0f32; u.len()];
    gradient_penalty(&u, b, lambda, &mut scratch).unwrap()
}

#[test]
fn penalty_gradient_matches_finite_differences() {
    let dev = Device::Cpu;
    let mut m = Sequential::builder(&[1, 6, 6])
        .conv2d(3, 3, 2, 1, true)
        .leaky_relu(0.2)
        .conv2d(4, 3, 2, 1, true)
        .relu()
        .flatten()
        .linear(3, true)
        .build(&dev, 3)
        .unwrap();
    let (b, lambda) = (4, 10.0);
    let x = common::uniform(b * 36, 1.0, 9);
    // A class-conditional critic: example i's score is output y_i.
    let ys = [0usize, 2, 1, 2];
    let mut dy = vec![0f32; b * 3];
    for (i, &y) in ys.iter().enumerate() {
        dy[i * 3 + y] = 1.0;
    }
    // Analytic: u, v = ∂P/∂u, then the double backward.
    let u = input_grad(&m, &x, &dy);
    let mut v = vec![0f32; u.len()];
    let p0 = gradient_penalty(&u, b, lambda, &mut v).unwrap();
    assert!(p0 > 0.0);
    let mut g = Buffer::zeros(&dev, m.num_params()).unwrap();
    m.input_grad_param_grad(&x, &dy, &v, &mut g, false).unwrap();
    let g = g.to_vec().unwrap();
    // Central differences in every parameter (f64 step on the f32 weights).
    let theta = m.params().to_vec().unwrap();
    let scale = g.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
    assert!(scale > 1e-3);
    let h = 1e-3f32;
    let (mut kinks, mut checked) = (0, 0);
    for k in 0..theta.len() {
        let mut t = theta.clone();
        t[k] = theta[k] + h;
        let hp = (t[k] - theta[k]) as f64;
        m.params_mut().copy_from_slice(&t).unwrap();
        let up = penalty(&m, &x, &dy, b, lambda);
        t[k] = theta[k] - h;
        let hm = (theta[k] - t[k]) as f64;
        m.params_mut().copy_from_slice(&t).unwrap();
        let dn = penalty(&m, &x, &dy, b, lambda);
        let fd = (up - dn) / (hp + hm);
        let a = g[k] as f64;
        // A ReLU mask that flips between θ − h and θ + h makes P jump (u is piecewise
        // constant in x but not continuous in θ there): the one-sided differences disagree.
        let (fwd, bwd) = ((up - p0) / hp, (p0 - dn) / hm);
        if (fwd - bwd).abs() > 1e-2 * scale + 1e-2 * fd.abs() {
            kinks += 1;
            continue;
        }
        checked += 1;
        assert!(
            (fd - a).abs() <= 2e-3 * scale + 1e-2 * a.abs(),
            "param {k}: finite difference {fd} vs double backward {a} (scale {scale})"
        );
    }
    assert!(
        kinks * 20 <= theta.len(),
        "{kinks} kinks of {} parameters",
        theta.len()
    );
    assert!(checked > 0);
}

#[test]
fn refuses_smooth_layers_and_bad_shapes() {
    let dev = Device::Cpu;
    let m = Sequential::builder(&[4])
        .linear(3, true)
        .tanh()
        .linear(1, true)
        .build(&dev, 1)
        .unwrap();
    let mut g = Buffer::zeros(&dev, m.num_params()).unwrap();
    assert!(m
        .input_grad_param_grad(&[0.0; 4], &[1.0], &[0.0; 4], &mut g, false)
        .is_err());
    let m = Sequential::builder(&[4])
        .linear(1, true)
        .build(&dev, 1)
        .unwrap();
    let mut g = Buffer::zeros(&dev, m.num_params()).unwrap();
    assert!(m
        .input_grad_param_grad(&[0.0; 4], &[1.0, 2.0], &[0.0; 4], &mut g, false)
        .is_err());
    assert!(m
        .input_grad_param_grad(&[0.0; 4], &[1.0], &[0.0; 3], &mut g, false)
        .is_err());
    let mut out = [0f32; 4];
    assert!(gradient_penalty(&[1.0; 4], 2, -1.0, &mut out).is_err());
    assert!(gradient_penalty(&[1.0; 4], 3, 1.0, &mut out).is_err());
    // ‖u‖ = 1 for both rows: no penalty, no gradient.
    let p = gradient_penalty(&[0.6, 0.8, 1.0, 0.0], 2, 10.0, &mut out).unwrap();
    assert!(p.abs() < 1e-12 && out.iter().all(|v| v.abs() < 1e-6));
}

/// GS-WGAN's MLP critic (`examples/gs_wgan.rs`, `mlp_discriminator`) at `hidden` units.
#[allow(dead_code)]
fn mlp_critic(dev: &Device, hidden: usize, seed: u64) -> Sequential {
    Sequential::builder(&[1, 28, 28])
        .flatten()
        .linear(hidden, true)
        .leaky_relu(0.2)
        .linear(10, true)
        .build(dev, seed)
        .unwrap()
}

/// GS-WGAN's conv critic (`examples/gs_wgan.rs`, `discriminator`) at model_dim `md`.
#[allow(dead_code)]
fn conv_critic(dev: &Device, md: usize, seed: u64) -> Sequential {
    Sequential::builder(&[1, 28, 28])
        .conv2d(md, 5, 2, 2, true)
        .relu()
        .conv2d(2 * md, 5, 2, 2, true)
        .relu()
        .conv2d(4 * md, 5, 2, 2, true)
        .relu()
        .flatten()
        .linear(10, true)
        .build(dev, seed)
        .unwrap()
}

/// The CUDA double backward against the CPU's on the same weights and inputs: `x` (images in
/// [0, 1]), the class selector `dy`, and `v` = `∂P/∂u` of the CPU's input gradient `u` (the
/// WGAN-GP step of `examples/gs_wgan.rs`); batch sizes `batches`, overwrite then accumulate
/// onto a non-zero gradient. The GPU's input gradient is checked against the CPU's too.
///
/// Tolerance: both sides sum the same products in another order (the CPU's GEMM blocks
/// against the GPU's tiles and batch splits), so each value may differ by a relative `1e-4`
/// of itself or of the largest value (as in `tests/nn_cuda.rs` for conv/linear sums).
#[cfg(feature = "cuda")]
fn cuda_vs_cpu(what: &str, make: &dyn Fn(&Device) -> Sequential, batches: &[usize]) {
    let Some(gpu) = common::gpu(what) else {
        return;
    };
    let cpu_m = make(&Device::Cpu);
    let gpu_m = make(&gpu);
    let p = cpu_m.num_params();
    assert_eq!(
        cpu_m.params().to_vec().unwrap(),
        gpu_m.params().to_vec().unwrap()
    );
    let close = |name: &str, g: &[f32], c: &[f32]| {
        assert_eq!(g.len(), c.len());
        let scale = c.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{name}: all zero");
        for (k, (a, b)) in g.iter().zip(c).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * (scale + b.abs()),
                "{what} {name}[{k}]: gpu {a} cpu {b} (scale {scale})"
            );
        }
    };
    for &b in batches {
        let x: Vec<f32> = common::uniform(b * 784, 0.5, 40 + b as u64)
            .iter()
            .map(|v| v + 0.5)
            .collect();
        let mut dy = vec![0f32; b * 10];
        for i in 0..b {
            dy[i * 10 + (i * 7 + 3) % 10] = 1.0;
        }
        let u = input_grad(&cpu_m, &x, &dy);
        // The GPU's input gradient (the `u` a GPU critic step feeds the penalty).
        let mut ws = gpu_m.workspace(b).unwrap();
        gpu_m.forward(&mut ws, &x).unwrap();
        gpu_m.set_output_grad(&mut ws, &dy).unwrap();
        gpu_m.backward(&mut ws, Grads::None, true).unwrap();
        close("u", &ws.input_grad_vec().unwrap().unwrap(), &u);
        let mut v = vec![0f32; u.len()];
        gradient_penalty(&u, b, 10.0, &mut v).unwrap();
        let mut gc = Buffer::zeros(&Device::Cpu, p).unwrap();
        cpu_m
            .input_grad_param_grad(&x, &dy, &v, &mut gc, false)
            .unwrap();
        // Overwrite: the GPU buffer starts as garbage (NaN), which must not survive.
        let mut gg = Buffer::from_slice(&gpu, &vec![f32::NAN; p]).unwrap();
        gpu_m
            .input_grad_param_grad(&x, &dy, &v, &mut gg, false)
            .unwrap();
        let (gc, gv) = (gc.to_vec().unwrap(), gg.to_vec().unwrap());
        close(&format!("batch {b} overwrite"), &gv, &gc);
        // Bias gradients are exactly zero on both.
        for info in cpu_m.param_info() {
            if info.name.ends_with(".bias") {
                assert!(gv[info.range.clone()].iter().all(|&z| z == 0.0));
            }
        }
        // Accumulate onto a non-zero gradient.
        let base = common::uniform(p, 1.0, 77);
        let mut ga = Buffer::from_slice(&gpu, &base).unwrap();
        gpu_m
            .input_grad_param_grad(&x, &dy, &v, &mut ga, true)
            .unwrap();
        let want: Vec<f32> = base.iter().zip(&gc).map(|(a, g)| a + g).collect();
        close(
            &format!("batch {b} accumulate"),
            &ga.to_vec().unwrap(),
            &want,
        );
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_mlp_critic_matches_cpu() {
    cuda_vs_cpu(
        "cuda_mlp_critic_matches_cpu",
        &|d| mlp_critic(d, 128, 21),
        &[1, 5, 64],
    );
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_conv_critic_matches_cpu() {
    cuda_vs_cpu(
        "cuda_conv_critic_matches_cpu",
        &|d| conv_critic(d, 8, 22),
        &[1, 3, 32],
    );
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_refuses_what_the_cpu_refuses_and_foreign_buffers() {
    let Some(gpu) = common::gpu("cuda_refuses_what_the_cpu_refuses_and_foreign_buffers") else {
        return;
    };
    let m = Sequential::builder(&[4])
        .linear(3, true)
        .tanh()
        .linear(1, true)
        .build(&gpu, 1)
        .unwrap();
    let mut g = Buffer::zeros(&gpu, m.num_params()).unwrap();
    assert!(m
        .input_grad_param_grad(&[0.0; 4], &[1.0], &[0.0; 4], &mut g, false)
        .is_err());
    let m = mlp_critic(&gpu, 8, 3);
    // grad on the CPU for a GPU model, and the other way round: a typed device mismatch.
    let mut host = Buffer::zeros(&Device::Cpu, m.num_params()).unwrap();
    let e = m
        .input_grad_param_grad(&[0.5; 784], &[1.0; 10], &[0.1; 784], &mut host, false)
        .unwrap_err();
    assert!(matches!(e, dpsgd::Error::DeviceMismatch { .. }), "{e}");
    let c = mlp_critic(&Device::Cpu, 8, 3);
    let mut dev_g = Buffer::zeros(&gpu, c.num_params()).unwrap();
    let e = c
        .input_grad_param_grad(&[0.5; 784], &[1.0; 10], &[0.1; 784], &mut dev_g, false)
        .unwrap_err();
    assert!(matches!(e, dpsgd::Error::DeviceMismatch { .. }), "{e}");
    // Wrong lengths are refused before anything runs.
    assert!(m
        .input_grad_param_grad(&[0.5; 784], &[1.0; 9], &[0.1; 784], &mut g, false)
        .is_err());
}
