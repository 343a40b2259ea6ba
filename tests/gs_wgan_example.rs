//! A tiny end-to-end run of `examples/gs_wgan.rs` (compiled into this test as a module): the
//! outputs exist, ε is reported, `--resume` continues bit-exactly on the CPU, and bad input is
//! an error before anything is trained. `--device cuda`: a typed error without the `cuda`
//! feature; with it and a GPU, the critic step (WGAN-GP's double backward included), the
//! private generator gradient (same noise stream) and a tiny run against the CPU's (these skip
//! without a GPU, and fail without one when `DPSGD_REQUIRE_GPU=1`).

mod common;
#[allow(dead_code)]
#[path = "../examples/gs_wgan.rs"]
mod gs_wgan;

use clap::Parser;
use std::path::Path;
use std::sync::OnceLock;

/// A tiny MNIST-shaped dataset written once per test binary (a clean clone has no MNIST): 120
/// training and 20 test images, labels 0–9 in turn.
fn data_dir() -> &'static str {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dpsgd-gswgan-data-{}", std::process::id()));
        common::write_synthetic_mnist(&dir, 120, 20, |i| (i % 10) as u8);
        dir.display().to_string()
    })
}

/// The tiny settings, with `extra` flags (`--flag value`, `--flag=value` or `--flag`) replacing
/// the defaults of the same name.
fn args(out: &Path, extra: &[&str]) -> gs_wgan::Args {
    let base = [
        ("--seed", "3"),
        ("--data-dir", data_dir()),
        ("--train-subset", "120"),
        ("--discriminators", "60"),
        ("--pretrain-iterations", "1"),
        ("--model-dim", "2"),
        ("--batch-size", "4"),
        ("--critic-iters", "2"),
        ("--log-every", "2"),
        ("--gen-samples", "20"),
        ("--iterations", "2"),
    ];
    let given = |f: &str| {
        extra
            .iter()
            .any(|e| *e == f || e.starts_with(&format!("{f}=")))
    };
    let mut v = vec!["gs_wgan".to_string()];
    for (f, val) in base {
        if !given(f) {
            v.push(f.to_string());
            v.push(val.to_string());
        }
    }
    v.push("--out".into());
    v.push(out.display().to_string());
    v.extend(extra.iter().map(|s| s.to_string()));
    gs_wgan::Args::try_parse_from(v).unwrap()
}

fn tensors(path: &Path, names: &[&str]) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    names
        .iter()
        .map(|n| t.tensor(n).unwrap().data().to_vec())
        .collect()
}

#[test]
fn runs_and_resumes_bit_exactly() {
    let dir = std::env::temp_dir().join(format!("dpsgd-gswgan-{}", std::process::id()));
    let (a, b) = (dir.join("straight"), dir.join("resumed"));
    let _ = std::fs::remove_dir_all(&dir);
    gs_wgan::run(args(&a, &["--iterations", "4"])).unwrap();
    for f in [
        "checkpoint.safetensors",
        "gen_data.safetensors",
        "metrics.jsonl",
        "samples_000004.png",
        "class_9.png",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert!(last["epsilon"].as_f64().unwrap() > 0.0);
    assert_eq!(last["iteration"].as_u64(), Some(4));
    let gen = tensors(&a.join("gen_data.safetensors"), &["images", "labels"]);
    assert_eq!(gen[0].len(), 20 * 784 * 4);
    assert_eq!(gen[1].len(), 20 * 8);
    // Two iterations, then two more with --resume: the same state, bit for bit.
    gs_wgan::run(args(&b, &["--iterations", "2"])).unwrap();
    gs_wgan::run(args(&b, &["--iterations", "4", "--resume"])).unwrap();
    let names = ["g", "g_ema", "g_m", "g_v", "d_all", "d_m", "d_v", "d_steps"];
    assert_eq!(
        tensors(&a.join("checkpoint.safetensors"), &names),
        tensors(&b.join("checkpoint.safetensors"), &names)
    );
    assert_eq!(
        std::fs::read(a.join("gen_data.safetensors")).unwrap(),
        std::fs::read(b.join("gen_data.safetensors")).unwrap()
    );
    // Resuming with other settings is refused.
    assert!(gs_wgan::run(args(&b, &["--iterations", "6", "--resume", "--sigma", "2"])).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_an_error_before_training() {
    let dir = std::env::temp_dir().join(format!("dpsgd-gswgan-bad-{}", std::process::id()));
    for extra in [
        &["--sigma=-1"][..],
        &["--sigma", "0"],
        &["--discriminators", "0"],
        &["--discriminators", "1000"],
        &["--discriminators", "121"],
        &["--model-dim", "0"],
        &["--clip", "0"],
        &["--delta", "1"],
        &["--data-dir", "/nonexistent/mnist"],
        &["--ema-decay", "1"],
        &["--ema-decay=-0.1"],
        &["--critics-per-iteration", "0"],
        &["--critic", "mlp", "--critic-hidden", "0"],
        &["--lr-g=-1"],
        &["--refresh-every", "1", "--refresh-steps", "0"],
        &["--critic-batch-size", "0"],
    ] {
        let out = dir.join("x");
        let e = gs_wgan::run(args(&out, extra));
        assert!(e.is_err(), "{extra:?} accepted");
        assert!(
            !out.join("checkpoint.safetensors").exists(),
            "{extra:?} trained"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--disable-dp` (the non-private control) trains, writes the raw generator's samples beside
/// the average's, and claims no ε: `metrics.jsonl` says so and has no number for it.
#[test]
fn disable_dp_claims_no_privacy() {
    let dir = std::env::temp_dir().join(format!("dpsgd-gswgan-nodp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    gs_wgan::run(args(
        &dir,
        &[
            "--disable-dp",
            "--discriminators",
            "1",
            "--iterations",
            "2",
            "--gen-samples",
            "0",
        ],
    ))
    .unwrap();
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert!(last["epsilon"].is_null(), "{last}");
    assert_eq!(last["no_privacy_disable_dp"].as_bool(), Some(true));
    assert!(
        last["gradient_penalty_not_covered_by_epsilon"]
            .as_f64()
            .unwrap()
            >= 0.0
    );
    assert!(dir.join("samples_raw_000002.png").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The warm start trains the discriminators in parallel: its result (and so the whole run)
/// does not depend on the number of threads, for the pool warm start (`initial-dimmed`, the
/// CPU preset's, here with the MLP generator) and `own` (the paper's throw-away generators,
/// here with the conv critic).
#[test]
fn warm_start_does_not_depend_on_the_thread_count() {
    let dir = std::env::temp_dir().join(format!("dpsgd-gswgan-threads-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for mode in [
        &[
            "--critic",
            "mlp",
            "--pretrain-fakes",
            "initial-dimmed",
            "--generator",
            "mlp",
        ][..],
        &["--critic", "conv", "--pretrain-fakes", "own"],
    ] {
        let mut outs = Vec::new();
        for threads in [1, 3] {
            let out = dir.join(format!("{}-{threads}", mode[1]));
            let mut extra = mode.to_vec();
            extra.extend(["--iterations", "2", "--pretrain-iterations", "2"]);
            extra.extend(["--gen-samples", "0", "--discriminators", "12"]);
            let a = args(&out, &extra);
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| gs_wgan::run(a))
                .unwrap();
            let f32s = |b: &Vec<u8>| -> Vec<f32> {
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            };
            let t = tensors(&out.join("checkpoint.safetensors"), &["d_all", "g"]);
            outs.push((f32s(&t[0]), f32s(&t[1])));
        }
        // The library's kernels split batches by thread count, so sums may differ in the last
        // bits; a discriminator trained on another's stream or partition would differ by the
        // weights' own scale (≈ 0.05), and one left untrained by its Adam steps (≈ 1e-4 each).
        let max_diff = |a: &[f32], b: &[f32]| {
            assert_eq!(a.len(), b.len());
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        let (dd, dg) = (
            max_diff(&outs[0].0, &outs[1].0),
            max_diff(&outs[0].1, &outs[1].1),
        );
        assert!(dd < 2e-5 && dg < 2e-5, "{mode:?}: d {dd}, g {dg}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--refresh-every N --refresh-steps S`: every N iterations **every** discriminator takes S
/// critic steps against the current generator's pool (each discriminator's Adam step count
/// shows it), in parallel without depending on the thread count, and `--resume` across a
/// round is bit-exact.
#[test]
fn refresh_rounds_train_every_discriminator() {
    let dir = std::env::temp_dir().join(format!("dpsgd-gswgan-refresh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let steps = |out: &Path| -> Vec<u64> {
        tensors(&out.join("checkpoint.safetensors"), &["d_steps"])[0]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let base = [
        "--critic",
        "mlp",
        "--discriminators",
        "12",
        "--critics-per-iteration",
        "1",
        "--gen-samples",
        "0",
    ];
    // Without refresh rounds: 4 iterations × 1 critic × 2 critic steps, so at most 4 of the
    // 12 discriminators were trained in the private phase.
    let off = dir.join("off");
    let mut extra = base.to_vec();
    extra.extend(["--iterations", "4", "--refresh-every", "0"]);
    gs_wgan::run(args(&off, &extra)).unwrap();
    let s = steps(&off);
    assert_eq!(s.iter().sum::<u64>(), 4 * 2);
    assert!(s.iter().filter(|&&x| x == 0).count() >= 8, "{s:?}");
    // Rounds after iterations 2 and 4, 3 steps each: every discriminator has ≥ 6 steps, and
    // exactly 6 more than the per-iteration schedule gave it (the same ω stream as above).
    let mut on = Vec::new();
    for threads in [1, 3] {
        let out = dir.join(format!("on-{threads}"));
        let mut extra = base.to_vec();
        extra.extend(["--iterations", "4", "--refresh-every", "2"]);
        extra.extend(["--refresh-steps", "3"]);
        let a = args(&out, &extra);
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| gs_wgan::run(a))
            .unwrap();
        on.push(out);
    }
    let r = steps(&on[0]);
    assert_eq!(
        r.iter().zip(&s).map(|(a, b)| a - b).collect::<Vec<_>>(),
        vec![6; 12]
    );
    let d = |out: &Path| -> Vec<f32> {
        tensors(&out.join("checkpoint.safetensors"), &["d_all"])[0]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let (d1, d3, d0) = (d(&on[0]), d(&on[1]), d(&off));
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    // Thread count: last-bit differences only (see the warm-start test); the rounds
    // themselves move the discriminators by far more.
    assert!(max_diff(&d1, &d3) < 2e-5, "{}", max_diff(&d1, &d3));
    assert!(max_diff(&d1, &d0) > 1e-4, "{}", max_diff(&d1, &d0));
    // Resume across the round at iteration 2: the same state, bit for bit.
    let res = dir.join("resumed");
    let mut extra = base.to_vec();
    extra.extend(["--refresh-every", "2", "--refresh-steps", "3"]);
    let mut two = extra.clone();
    two.extend(["--iterations", "2"]);
    gs_wgan::run(args(&res, &two)).unwrap();
    let mut four = extra.clone();
    four.extend(["--iterations", "4", "--resume"]);
    gs_wgan::run(args(&res, &four)).unwrap();
    let straight = dir.join("straight");
    let mut four = extra.clone();
    four.extend(["--iterations", "4"]);
    gs_wgan::run(args(&straight, &four)).unwrap();
    let names = ["g", "g_ema", "d_all", "d_m", "d_v", "d_steps"];
    assert_eq!(
        tensors(&straight.join("checkpoint.safetensors"), &names),
        tensors(&res.join("checkpoint.safetensors"), &names)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--critic-batch-size` changes the critics' batches only: the run trains, its ε (a function
/// of K, σ, B and T) is the same as with the default, and the discriminators differ.
#[test]
fn critic_batch_size_changes_the_critics_not_epsilon() {
    let dir = std::env::temp_dir().join(format!("dpsgd-gswgan-cbs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut outs = Vec::new();
    for cbs in [None, Some("7")] {
        let out = dir.join(cbs.unwrap_or("default"));
        let mut extra = vec!["--critic", "mlp", "--gen-samples", "0", "--iterations", "2"];
        if let Some(c) = cbs {
            extra.extend(["--critic-batch-size", c]);
        }
        gs_wgan::run(args(&out, &extra)).unwrap();
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let last: serde_json::Value =
            serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
        let d = tensors(&out.join("checkpoint.safetensors"), &["d_all"]).remove(0);
        outs.push((last["epsilon"].as_f64().unwrap(), d));
    }
    assert!(outs[0].0 > 0.0);
    assert_eq!(outs[0].0, outs[1].0);
    assert_ne!(outs[0].1, outs[1].1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Cosine similarity and relative error of `a` against the reference `r`.
fn compare(a: &[f64], r: &[f64]) -> (f64, f64) {
    let dot: f64 = a.iter().zip(r).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nr = r.iter().map(|x| x * x).sum::<f64>().sqrt();
    let diff = a
        .iter()
        .zip(r)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    (dot / (na * nr), diff / nr)
}

/// Central differences of `f` at `p` over the coordinates `idx` (step `h`).
fn finite_differences(
    p: &[f32],
    idx: &[usize],
    h: f32,
    mut f: impl FnMut(&[f32]) -> f64,
) -> Vec<f64> {
    idx.iter()
        .map(|&i| {
            let mut q = p.to_vec();
            q[i] = p[i] + h;
            let up = f(&q);
            q[i] = p[i] - h;
            let down = f(&q);
            (up - down) / (2.0 * h as f64)
        })
        .collect()
}

/// The whole generator-through-critic chain (`generator_grad` without privacy: G's forward, the
/// conditional D's input gradient of `−mean D(G(z), y)`, fed back into G's backward) against
/// central differences of that loss in G's parameters, on tiny nets.
#[test]
fn generator_gradient_through_the_critic_matches_finite_differences() {
    let d = gs_wgan::discriminator(&dpsgd::Device::Cpu, 2, 6).unwrap();
    check_generator_gradient(&d);
}

/// The same chain through the MLP critic (its input gradient at the class-selected output).
#[test]
fn generator_gradient_through_the_mlp_critic_matches_finite_differences() {
    let d = gs_wgan::mlp_discriminator(&dpsgd::Device::Cpu, 16, 6).unwrap();
    check_generator_gradient(&d);
}

fn check_generator_gradient(d: &dpsgd::nn::Sequential) {
    use dpsgd::rng::{Purpose, RunKeys};
    use dpsgd::Device;
    let dir = std::env::temp_dir().join(format!("dpsgd-gswgan-fdg-{}", std::process::id()));
    let cfg = gs_wgan::resolve(
        &args(&dir, &["--batch-size", "3", "--latent", "normal"]),
        120,
    )
    .unwrap();
    let dev = Device::Cpu;
    let mut g = gs_wgan::generator(&dev, 10, 2, 5).unwrap();
    let key = RunKeys::from_seed(Some(9)).unwrap().key(Purpose::Sampling);
    let (grad, loss) = gs_wgan::generator_grad(&cfg, &mut g, d, &mut key.rng(0), None).unwrap();
    assert!(loss.is_finite());
    let p0 = g.params().to_vec().unwrap();
    let idx: Vec<usize> = (0..p0.len()).step_by(5).collect();
    let fd = finite_differences(&p0, &idx, 1e-2, |q| {
        g.params_mut().copy_from_slice(q).unwrap();
        gs_wgan::generator_grad(&cfg, &mut g, d, &mut key.rng(0), None)
            .unwrap()
            .1
    });
    let an: Vec<f64> = idx.iter().map(|&i| grad[i] as f64).collect();
    let (cos, rel) = compare(&an, &fd);
    assert!(
        cos > 0.995 && rel < 0.1,
        "cosine {cos}, relative error {rel}"
    );
}

/// The critic's whole WGAN-GP gradient (`critic_step`: real and fake terms, λ_ε drift, and the
/// gradient penalty's double backward through the conditional, class-selected D that runs)
/// against central differences of the critic loss in D's parameters. A ReLU mask that flips
/// between θ − h and θ + h makes the penalty jump (the input gradient is not continuous in θ
/// there); those coordinates, found by disagreeing one-sided differences, are skipped, as in
/// `tests/double_backward.rs`.
#[test]
fn critic_gradient_with_penalty_matches_finite_differences() {
    let d = gs_wgan::discriminator(&dpsgd::Device::Cpu, 2, 6).unwrap();
    check_critic_gradient(d, "conv");
}

/// The same check for the small MLP critic of `--preset cpu` (Linear → LeakyReLU(0.2) →
/// Linear with a class-selected output): the label enters through the output selector, so the
/// real, fake and penalty terms each differ per class, and a wrong class selection in any of
/// them fails this.
#[test]
fn mlp_critic_gradient_with_penalty_matches_finite_differences() {
    let d = gs_wgan::mlp_discriminator(&dpsgd::Device::Cpu, 6, 6).unwrap();
    check_critic_gradient(d, "mlp");
}

fn check_critic_gradient(mut d: dpsgd::nn::Sequential, arch: &str) {
    use dpsgd::rng::{Purpose, RandomBits, RunKeys};
    use dpsgd::{Buffer, Device};
    let dir = std::env::temp_dir().join(format!("dpsgd-gswgan-fdd-{}", std::process::id()));
    let cfg = gs_wgan::resolve(
        &args(
            &dir,
            &[
                "--batch-size",
                "3",
                "--lambda-eps",
                "0.5",
                "--critic",
                arch,
                "--critic-hidden",
                "6",
            ],
        ),
        120,
    )
    .unwrap();
    let dev = Device::Cpu;
    let g = gs_wgan::generator(&dev, 10, 2, 5).unwrap();
    let key = RunKeys::from_seed(Some(9)).unwrap().key(Purpose::Sampling);
    let mut r = key.rng(7);
    let real: Vec<f32> = (0..3 * 784).map(|_| r.next_f64() as f32).collect();
    let labels = [3u32, 0, 9];
    let mut grad = Buffer::<f32>::zeros(&dev, d.num_params()).unwrap();
    let (_, gp, l0) =
        gs_wgan::critic_step(&cfg, &d, &g, &real, &labels, &mut key.rng(1), &mut grad).unwrap();
    // The penalty is most of the loss here (an untrained critic's gradients are far from
    // norm 1), so its double backward is what this checks.
    assert!(gp > 0.5 * l0.abs(), "gp {gp}, loss {l0}");
    let grad = grad.to_vec().unwrap();
    let theta = d.params().to_vec().unwrap();
    let scale = grad.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
    assert!(scale > 1e-3);
    let mut scratch = Buffer::<f32>::zeros(&dev, d.num_params()).unwrap();
    let mut loss = |d: &mut dpsgd::nn::Sequential, t: &[f32]| {
        d.params_mut().copy_from_slice(t).unwrap();
        gs_wgan::critic_step(&cfg, d, &g, &real, &labels, &mut key.rng(1), &mut scratch)
            .unwrap()
            .2
    };
    let h = 1e-3f32;
    let (mut kinks, mut checked) = (0, 0);
    for k in 0..theta.len() {
        let mut t = theta.clone();
        t[k] = theta[k] + h;
        let hp = (t[k] - theta[k]) as f64;
        let up = loss(&mut d, &t);
        t[k] = theta[k] - h;
        let hm = (theta[k] - t[k]) as f64;
        let dn = loss(&mut d, &t);
        let fd = (up - dn) / (hp + hm);
        let (fwd, bwd) = ((up - l0) / hp, (l0 - dn) / hm);
        if (fwd - bwd).abs() > 1e-2 * scale + 1e-2 * fd.abs() {
            kinks += 1;
            continue;
        }
        checked += 1;
        let a = grad[k] as f64;
        // A jump below the kink test's threshold still moves the central difference by up to
        // 1e-2·scale/2: the tolerance allows for it.
        assert!(
            (fd - a).abs() <= 6e-3 * scale + 1e-2 * a.abs(),
            "param {k}: finite difference {fd} vs critic_step {a} (scale {scale})"
        );
    }
    assert!(
        kinks * 10 <= theta.len(),
        "{kinks} kinks of {} parameters",
        theta.len()
    );
    assert!(checked * 2 > theta.len());
}

/// `--device cuda` in a build without the `cuda` feature: a typed error that says to rebuild
/// with `--features cuda`, before anything is read or written (no silent fallback to the CPU).
#[cfg(not(feature = "cuda"))]
#[test]
fn device_cuda_without_the_feature_is_a_typed_error() {
    let dir = std::env::temp_dir().join(format!("dpsgd-gswgan-nocuda-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let e = gs_wgan::run(args(&dir, &["--device", "cuda"])).unwrap_err();
    assert!(
        matches!(e, dpsgd::Error::InvalidParameter { name: "device", .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("--features cuda"), "{e}");
    // Refused first: not even the output folder was made.
    assert!(!dir.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--preset gpu` resolves to the CPU preset's privacy budget with every critic trained 5
/// steps every iteration (refresh rounds 1 × 5), and the accountant gives it ε ≤ 10.
#[test]
fn gpu_preset_trains_every_critic_every_iteration_at_epsilon_below_10() {
    use dpsgd::accounting::gs_wgan::{DiscriminatorSampling, GsWganAccountant};
    let a =
        gs_wgan::Args::try_parse_from(["gs_wgan", "--preset", "gpu", "--device", "cuda"]).unwrap();
    let cfg = serde_json::to_value(gs_wgan::resolve(&a, 60_000).unwrap()).unwrap();
    assert_eq!(cfg["k"], 1000);
    assert_eq!(cfg["refresh_every"], 1);
    assert_eq!(cfg["refresh_steps"], 5);
    assert_eq!(cfg["critic"], 5);
    assert_eq!(cfg["critic_arch"], "mlp");
    let (k, sigma, b, t) = (
        cfg["k"].as_u64().unwrap(),
        cfg["sigma"].as_f64().unwrap(),
        cfg["b"].as_u64().unwrap(),
        cfg["iterations"].as_u64().unwrap(),
    );
    let acc = GsWganAccountant::new(k, sigma, b, DiscriminatorSampling::IndependentPerRow).unwrap();
    let keys = dpsgd::rng::RunKeys::from_seed(Some(1)).unwrap();
    let eps = acc
        .epsilon_charged(t, cfg["delta"].as_f64().unwrap(), 784, keys.generator())
        .unwrap()
        .epsilon;
    assert!(eps > 9.0 && eps <= 10.0, "ε = {eps}");
}

/// GPU vs CPU, the same weights and random streams: one critic step (real, fake, λ_ε and the
/// gradient penalty's double backward) for the conv and the MLP critic, and the private
/// generator gradient (per-row critics, `ops::sanitize_rows` with the same noise key). The
/// GPU sums f32 products in another order: each value within a relative 1e-4 of itself or of
/// the largest value (1e-3 for the generator gradient, which passes through two networks and
/// the noise).
#[cfg(feature = "cuda")]
#[test]
fn cuda_critic_step_and_generator_gradient_match_the_cpu() {
    use dpsgd::rng::{Purpose, RandomBits, RunKeys};
    use dpsgd::{Buffer, Device, NoiseKey};
    let Some(gpu) = common::gpu("cuda_critic_step_and_generator_gradient_match_the_cpu") else {
        return;
    };
    let close = |what: &str, g: &[f32], c: &[f32], tol: f32| {
        assert_eq!(g.len(), c.len());
        let scale = c.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{what}: all zero");
        for (k, (a, b)) in g.iter().zip(c).enumerate() {
            assert!(
                (a - b).abs() <= tol * (scale + b.abs()),
                "{what}[{k}]: gpu {a} cpu {b} (scale {scale})"
            );
        }
    };
    let dir = std::env::temp_dir().join(format!("dpsgd-gswgan-gpu1-{}", std::process::id()));
    for arch in ["conv", "mlp"] {
        let cfg = gs_wgan::resolve(
            &args(
                &dir,
                &[
                    "--batch-size",
                    "5",
                    "--critic",
                    arch,
                    "--critic-hidden",
                    "32",
                ],
            ),
            120,
        )
        .unwrap();
        let key = RunKeys::from_seed(Some(9)).unwrap().key(Purpose::Sampling);
        let mut r = key.rng(7);
        let real: Vec<f32> = (0..5 * 784).map(|_| r.next_f64() as f32).collect();
        let labels = [3u32, 0, 9, 9, 1];
        let mut grads = Vec::new();
        let mut dims = Vec::new();
        for dev in [Device::Cpu, gpu.clone()] {
            let d = gs_wgan::critic(&dev, &cfg, 6).unwrap();
            let g = gs_wgan::generator(&dev, 10, 2, 5).unwrap();
            let mut grad = Buffer::<f32>::zeros(&dev, d.num_params()).unwrap();
            let (w, gp, l) =
                gs_wgan::critic_step(&cfg, &d, &g, &real, &labels, &mut key.rng(1), &mut grad)
                    .unwrap();
            grads.push(grad.to_vec().unwrap());
            dims.push([w, gp, l]);
        }
        close(
            &format!("{arch} critic gradient"),
            &grads[1],
            &grads[0],
            1e-4,
        );
        for (a, b) in dims[1].iter().zip(&dims[0]) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{arch}: {a} vs {b}"
            );
        }
        // The private generator gradient: rows 0..5 through critics 2, 0, 1, 2, 2 of three.
        let mut outs = Vec::new();
        for dev in [Device::Cpu, gpu.clone()] {
            let d = gs_wgan::critic(&dev, &cfg, 6).unwrap();
            let dp = d.num_params();
            let mut d_all = Vec::new();
            for k in 0..3 {
                d_all.extend(
                    gs_wgan::critic(&Device::Cpu, &cfg, 40 + k)
                        .unwrap()
                        .params()
                        .to_vec()
                        .unwrap(),
                );
            }
            assert_eq!(d_all.len(), 3 * dp);
            let mut g = gs_wgan::generator(&dev, 10, 2, 5).unwrap();
            let nk = NoiseKey::for_step(11, 4, 0).unwrap();
            let (gg, _) = gs_wgan::generator_grad(
                &cfg,
                &mut g,
                &d,
                &mut key.rng(2),
                Some((&[2, 0, 1, 2, 2], &d_all, nk)),
            )
            .unwrap();
            outs.push(gg);
        }
        close(
            &format!("{arch} private generator gradient"),
            &outs[1],
            &outs[0],
            1e-3,
        );
    }
}

/// A tiny run on the GPU against the same run on the CPU: the same ε and critic schedule, and
/// weights and samples that agree to what f32 summation order can move through a few Adam
/// steps (each moves a weight by at most ≈ lr = 1e-4 · a few; a sign flip of a near-zero
/// gradient component is the worst case).
#[cfg(feature = "cuda")]
#[test]
fn cuda_tiny_run_matches_the_cpu_run() {
    let Some(_gpu) = common::gpu("cuda_tiny_run_matches_the_cpu_run") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("dpsgd-gswgan-gpu2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (c, g) = (dir.join("cpu"), dir.join("gpu"));
    let extra = [
        "--iterations",
        "3",
        "--refresh-every",
        "2",
        "--refresh-steps",
        "1",
    ];
    gs_wgan::run(args(&c, &extra)).unwrap();
    let mut ge = extra.to_vec();
    ge.extend(["--device", "cuda"]);
    gs_wgan::run(args(&g, &ge)).unwrap();
    let last = |d: &Path| -> serde_json::Value {
        let m = std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
        serde_json::from_str(m.lines().last().unwrap()).unwrap()
    };
    assert_eq!(last(&c)["epsilon"], last(&g)["epsilon"]);
    let names = ["d_steps"];
    assert_eq!(
        tensors(&c.join("checkpoint.safetensors"), &names),
        tensors(&g.join("checkpoint.safetensors"), &names)
    );
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    for name in ["g", "d_all"] {
        let a = f32s(&tensors(&c.join("checkpoint.safetensors"), &[name])[0]);
        let b = f32s(&tensors(&g.join("checkpoint.safetensors"), &[name])[0]);
        let max = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(max <= 1e-2, "{name}: max |cpu − gpu| = {max}");
    }
    let a = f32s(&tensors(&c.join("gen_data.safetensors"), &["images"])[0]);
    let b = f32s(&tensors(&g.join("gen_data.safetensors"), &["images"])[0]);
    let mean = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() as f64)
        .sum::<f64>()
        / a.len() as f64;
    assert!(mean <= 1e-2, "samples: mean |cpu − gpu| = {mean}");
    let _ = std::fs::remove_dir_all(&dir);
}
