//! WGAN-GP's double backward (`Sequential::input_grad_param_grad`, `nn::gradient_penalty`):
//! a closed form in f64 on a two-layer MLP, and the whole penalty's parameter gradient against
//! central finite differences on a small conv net.

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
