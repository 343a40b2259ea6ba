//! `Layer::Unflatten` (`nn.Unflatten(1, shape)`), the layer added through the one-file layer
//! design (first `src/nn/layer/unflatten.rs` + one registration arm in `src/nn/layer.rs`; since merged with Flatten into `reshape.rs`, as both are copies): shape
//! rule and errors, forward/backward as an exact copy, per-sample gradients of
//! Linear → Unflatten → Conv2d against a batch of one, the fused clipped path, the double
//! backward, serde and safetensors round trips.

use dpsgd::cpu::philox::Philox;
use dpsgd::nn::{Grads, Layer, Loss, Reduction, Sequential};
use dpsgd::rng::RandomBits;
use dpsgd::{Buffer, ClipWorkspace, Clipping, Device, Error};

fn unflatten(shape: &[usize]) -> Layer {
    Layer::Unflatten {
        shape: shape.to_vec(),
    }
}

fn rand(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Philox::new(seed, 0);
    (0..n)
        .map(|_| (2.0 * rng.next_f64() - 1.0) as f32)
        .collect()
}

/// `[8]` → Linear(8, 32) → Unflatten([2, 4, 4]) → Conv2d(2, 3, 3, 1, 1) → ReLU → Flatten →
/// Linear(48, 3).
fn lin_unflatten_conv(seed: u64) -> Sequential {
    Sequential::builder(&[8])
        .linear(32, true)
        .push(unflatten(&[2, 4, 4]))
        .conv2d(3, 3, 1, 1, true)
        .relu()
        .flatten()
        .linear(3, true)
        .build(&Device::Cpu, seed)
        .unwrap()
}

#[test]
fn shape_rule_and_errors() {
    let l = unflatten(&[2, 4, 4]);
    assert_eq!(l.name(), "Unflatten");
    assert_eq!(l.out_shape(&[32]).unwrap(), vec![2, 4, 4]);
    // nn.Unflatten(1, ·) of a [n, rest…] example keeps the rest.
    assert_eq!(
        unflatten(&[2, 3]).out_shape(&[6, 5]).unwrap(),
        vec![2, 3, 5]
    );
    assert!(l.param_tensors().is_empty());
    assert_eq!(l.num_params(), 0);
    // Product mismatch: a shape error that names both.
    let e = l.out_shape(&[31]).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("32") && msg.contains("[31]"), "{msg}");
    // Empty or zero-sized target shapes are invalid parameters.
    assert!(matches!(
        unflatten(&[]).out_shape(&[4]),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        unflatten(&[0, 4]).out_shape(&[0]),
        Err(Error::InvalidParameter { .. })
    ));
    // The builder and Sequential::new report it with the layer index, no panic.
    let e = Sequential::builder(&[8])
        .linear(30, true)
        .push(unflatten(&[2, 4, 4]))
        .build(&Device::Cpu, 1)
        .unwrap_err();
    assert!(e.to_string().contains("layer 1 (Unflatten)"), "{e}");
    let e = Sequential::new(
        &Device::Cpu,
        &[8],
        vec![
            Layer::Linear {
                inf: 8,
                outf: 4,
                bias: true,
            },
            unflatten(&[3]),
        ],
        1,
    )
    .unwrap_err();
    assert!(e.to_string().contains("Unflatten"), "{e}");
    // The layers after it see the new shape.
    let m = lin_unflatten_conv(1);
    assert_eq!(m.shape_at(2).unwrap(), &[2, 4, 4]);
    assert_eq!(m.output_shape(), &[3]);
}

/// Linear → Unflatten → Flatten → Linear is Linear → Linear with the same parameters: the same
/// output, input gradient and per-sample rows bit for bit (Unflatten copies both ways), on
/// both CPU schedules; and the activation after Unflatten is the one before it.
#[test]
fn forward_backward_are_exact_copies() {
    let dev = Device::Cpu;
    let with = Sequential::builder(&[6])
        .linear(12, true)
        .push(unflatten(&[3, 2, 2]))
        .flatten()
        .linear(2, true)
        .build(&dev, 5)
        .unwrap();
    let mut without = Sequential::builder(&[6])
        .linear(12, true)
        .linear(2, true)
        .build(&dev, 99)
        .unwrap();
    assert_eq!(with.num_params(), without.num_params());
    *without.params_mut() = Buffer::from_slice(&dev, &with.params().to_vec().unwrap()).unwrap();
    let b = 7;
    let x = rand(3, b * 6);
    let y: Vec<u32> = (0..b as u32).map(|i| i % 2).collect();
    for depth_first in [true, false] {
        let run = |m: &Sequential| {
            let mut ws = m.workspace(b).unwrap();
            ws.set_depth_first(depth_first);
            m.forward(&mut ws, &x).unwrap();
            let acts: Vec<Vec<f32>> = (0..=m.layers().len())
                .map(|i| ws.activation(i).unwrap().to_vec())
                .collect();
            m.loss(&mut ws, Loss::CrossEntropy(&y), Reduction::Sum)
                .unwrap();
            let mut rows = Buffer::zeros(&dev, b * m.num_params()).unwrap();
            m.backward(&mut ws, Grads::PerSample(&mut rows), true)
                .unwrap();
            (
                ws.output().to_vec(),
                ws.input_grad().unwrap().to_vec(),
                rows.to_vec().unwrap(),
                acts,
            )
        };
        let (o1, g1, r1, a1) = run(&with);
        let (o2, g2, r2, _) = run(&without);
        assert_eq!(o1, o2);
        assert_eq!(g1, g2);
        assert_eq!(r1, r2);
        assert_eq!(a1[1], a1[2], "Unflatten's forward is a copy");
        assert!(r1.iter().any(|v| *v != 0.0));
    }
}

/// Per-sample gradients (and input gradients) of Linear → Unflatten → Conv2d → … in one batch
/// against each example alone (micro-batching with a batch of one), to 1e-5 relative; the
/// summed gradient against the sum of the rows.
#[test]
fn per_sample_gradients_equal_batch_of_one() {
    let dev = Device::Cpu;
    let m = lin_unflatten_conv(7);
    let (b, per, p) = (5, 8, m.num_params());
    let x = rand(11, b * per);
    let y = [0u32, 2, 1, 1, 0];
    let mut ws = m.workspace(b).unwrap();
    m.forward(&mut ws, &x).unwrap();
    m.loss(&mut ws, Loss::CrossEntropy(&y), Reduction::Sum)
        .unwrap();
    let mut rows = Buffer::zeros(&dev, b * p).unwrap();
    m.backward(&mut ws, Grads::PerSample(&mut rows), true)
        .unwrap();
    let rows = rows.to_vec().unwrap();
    let ig = ws.input_grad().unwrap().to_vec();
    let mut total = vec![0f64; p];
    for i in 0..b {
        let mut one = m.workspace(1).unwrap();
        m.forward(&mut one, &x[i * per..(i + 1) * per]).unwrap();
        m.loss(&mut one, Loss::CrossEntropy(&y[i..i + 1]), Reduction::Sum)
            .unwrap();
        let mut g = Buffer::zeros(&dev, p).unwrap();
        m.backward(
            &mut one,
            Grads::Sum {
                grad: &mut g,
                accumulate: false,
            },
            true,
        )
        .unwrap();
        let g = g.to_vec().unwrap();
        for j in 0..p {
            let (a, r) = (rows[i * p + j], g[j]);
            assert!(
                (a - r).abs() <= 1e-5 * (1.0 + r.abs()),
                "example {i} param {j}: {a} vs {r}"
            );
            total[j] += a as f64;
        }
        assert!(g.iter().any(|v| *v != 0.0));
        for (a, r) in ig[i * per..(i + 1) * per]
            .iter()
            .zip(one.input_grad().unwrap())
        {
            assert!((a - r).abs() <= 1e-5 * (1.0 + r.abs()), "{a} vs {r}");
        }
    }
    m.forward(&mut ws, &x).unwrap();
    m.loss(&mut ws, Loss::CrossEntropy(&y), Reduction::Sum)
        .unwrap();
    let mut g = Buffer::zeros(&dev, p).unwrap();
    m.backward(
        &mut ws,
        Grads::Sum {
            grad: &mut g,
            accumulate: false,
        },
        false,
    )
    .unwrap();
    for (a, r) in g.to_vec().unwrap().iter().zip(&total) {
        assert!(
            (*a as f64 - r).abs() <= 1e-4 * (1.0 + r.abs()),
            "{a} vs {r}"
        );
    }
}

/// The fused forward-backward into a clipped sum (Conv2d's kept im2col, the Linear layers'
/// ghost norms, Unflatten in between) against per-sample rows clipped by
/// `ops::clip_and_accumulate`.
#[test]
fn fused_clipped_sum_equals_per_sample_then_clip() {
    let dev = Device::Cpu;
    let m = lin_unflatten_conv(9);
    let (b, p) = (6, m.num_params());
    let x = rand(13, b * 8);
    let y = [0u32, 1, 2, 0, 1, 2];
    let clipping = Clipping::Flat(0.05);
    let mut ws = m.workspace(b).unwrap();
    let mut fused = Buffer::zeros(&dev, p).unwrap();
    m.forward_backward(
        &mut ws,
        &x,
        Loss::CrossEntropy(&y),
        Reduction::Sum,
        Grads::ClippedSum {
            layout: m.layout(),
            clipping: &clipping,
            sum: &mut fused,
        },
        false,
    )
    .unwrap();
    m.forward(&mut ws, &x).unwrap();
    m.loss(&mut ws, Loss::CrossEntropy(&y), Reduction::Sum)
        .unwrap();
    let mut rows = Buffer::zeros(&dev, b * p).unwrap();
    m.backward(&mut ws, Grads::PerSample(&mut rows), false)
        .unwrap();
    let mut cws = ClipWorkspace::new(&dev, b, m.layout()).unwrap();
    let mut reference = Buffer::zeros(&dev, p).unwrap();
    dpsgd::ops::clip_and_accumulate(&rows, b, m.layout(), &clipping, &mut cws, &mut reference)
        .unwrap();
    let (f, r) = (fused.to_vec().unwrap(), reference.to_vec().unwrap());
    assert!(r.iter().any(|v| *v != 0.0));
    for (a, e) in f.iter().zip(&r) {
        assert!((a - e).abs() <= 1e-5 * (1.0 + e.abs()), "{a} vs {e}");
    }
}

/// Unflatten is a linear map: the double backward accepts it, and through
/// Linear → Unflatten → Flatten → Linear it equals that of Linear → Linear.
#[test]
fn double_backward_passes_through() {
    let dev = Device::Cpu;
    let with = Sequential::builder(&[4])
        .linear(6, true)
        .leaky_relu(0.2)
        .push(unflatten(&[6, 1, 1]))
        .flatten()
        .linear(1, true)
        .build(&dev, 2)
        .unwrap();
    let mut without = Sequential::builder(&[4])
        .linear(6, true)
        .leaky_relu(0.2)
        .linear(1, true)
        .build(&dev, 3)
        .unwrap();
    *without.params_mut() = Buffer::from_slice(&dev, &with.params().to_vec().unwrap()).unwrap();
    let (x, v, dy) = (rand(1, 12), rand(2, 12), [1.0f32, -0.5, 2.0]);
    let grad = |m: &Sequential| {
        let mut g = Buffer::zeros(&dev, m.num_params()).unwrap();
        m.input_grad_param_grad(&x, &dy, &v, &mut g, false).unwrap();
        g.to_vec().unwrap()
    };
    let (a, b) = (grad(&with), grad(&without));
    assert_eq!(a, b);
    assert!(a.iter().any(|g| *g != 0.0));
}

#[test]
fn serde_and_safetensors_round_trip() {
    let m = lin_unflatten_conv(4);
    let json = serde_json::to_string(m.layers()).unwrap();
    assert!(
        json.contains(r#"{"Unflatten":{"shape":[2,4,4]}}"#),
        "{json}"
    );
    let back: Vec<Layer> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, m.layers());
    // PyTorch names count Unflatten as a layer (it has no parameters).
    let names: Vec<&str> = m.param_info().iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        ["0.weight", "0.bias", "2.weight", "2.bias", "5.weight", "5.bias"]
    );
    let dir = std::env::temp_dir().join(format!("dpsgd-unflatten-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.safetensors");
    m.save_safetensors(&path).unwrap();
    let mut z = Sequential::zeroed(&Device::Cpu, &[8], back).unwrap();
    z.load_safetensors(&path).unwrap();
    assert_eq!(z.params().to_vec().unwrap(), m.params().to_vec().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}
