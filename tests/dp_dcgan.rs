//! The DP-DCGAN example (`examples/dp_dcgan/`), run in-process on a tiny synthetic MNIST-shaped
//! dataset: outputs, ε, bit-exact resume, bad input refused before training, and D's gradient
//! (clipped real half + un-clipped fake half) against an f64 reference.

mod common;
#[allow(dead_code)]
#[path = "../examples/dp_dcgan/dcgan.rs"]
mod dcgan;

use clap::Parser;
use dcgan::{Args, Gan};
use dpsgd::accounting::Method;
use dpsgd::engine::{NoiseSpec, PrivacyConfig, PrivacyEngine};
use dpsgd::nn::models::{self, DcganConfig};
use dpsgd::nn::{Grads, Loss, Reduction};
use dpsgd::ops::Clipping;
use dpsgd::optim::AdamConfig;
use dpsgd::rng::RunKeys;
use dpsgd::{Buffer, Device};
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dpsgd-dcgan-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A tiny MNIST-shaped dataset: 48 training and 16 test images, labels 8 and 3 alternating.
fn synthetic_mnist(dir: &Path) {
    common::write_synthetic_mnist(dir, 48, 16, |i| if i % 2 == 0 { 8 } else { 3 });
}

fn args(data: &Path, out: &Path, extra: &[&str]) -> Args {
    let mut v: Vec<String> = [
        "dp_dcgan",
        "--ngf",
        "4",
        "--ndf",
        "4",
        "--groups",
        "2",
        "--nz",
        "8",
        "--batch-size",
        "6",
        "--epochs",
        "2",
        "--no-progress",
        "--gen-samples",
        "20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !extra.contains(&"--data-dir") {
        v.extend(["--data-dir".to_string(), data.display().to_string()]);
    }
    v.extend(["--out".to_string(), out.display().to_string()]);
    v.extend(extra.iter().map(|s| s.to_string()));
    Args::try_parse_from(v).unwrap()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// metrics.jsonl without the wall-clock field.
fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

#[test]
fn end_to_end_outputs_epsilon_and_bit_exact_resume() {
    let data = tmp("data");
    synthetic_mnist(&data);
    // 24 images of class 8, B = 6: q = 1/4, 4 steps per epoch, 8 steps.
    let a = tmp("straight");
    let s = dcgan::run(&args(&data, &a, &[])).unwrap();
    assert_eq!(s.steps, 8);
    let eps = s.epsilon.unwrap();
    assert!(eps.is_finite() && eps > 0.0, "ε = {eps}");
    for f in [
        "real_samples.png",
        "fake_samples_epoch_000.png",
        "fake_samples_epoch_001.png",
        "netG.safetensors",
        "netD.safetensors",
        "optim.safetensors",
        "checkpoint.json",
        "gen_data.safetensors",
    ] {
        assert!(a.join(f).is_file(), "missing {f}");
    }
    let m = metrics(&a);
    assert_eq!(m.len(), 2);
    for (e, line) in m.iter().enumerate() {
        assert_eq!(line["epoch"], e as u64);
        assert!(line["epsilon"].as_f64().unwrap() > 0.0);
        assert!(line["loss_g"].as_f64().unwrap().is_finite());
        // Private run: the values computed from the real lot are withheld.
        assert!(line["loss_d"].is_null() && line["d_x"].is_null(), "{line}");
    }
    assert_eq!(m[1]["epsilon"].as_f64().unwrap(), eps);
    // Checkpoints load into the PyTorch-named models; gen_data is labelled with the class.
    let cfg = DcganConfig {
        ngf: 4,
        ndf: 4,
        groups: 2,
        nz: 8,
        ..Default::default()
    };
    let mut g = models::dcgan_generator_builder(&cfg)
        .unwrap()
        .build_zeroed(&Device::Cpu)
        .unwrap();
    g.load_safetensors(a.join("netG.safetensors")).unwrap();
    let gen = dpsgd::data::load_labelled_images(a.join("gen_data.safetensors")).unwrap();
    assert_eq!(gen.len(), 20);
    assert!(gen.labels().iter().all(|&l| l == 8));

    // Stopped after 3 steps (mid-epoch), then resumed: the same bytes.
    let b = tmp("resumed");
    let s1 = dcgan::run(&args(&data, &b, &["--max-steps", "3"])).unwrap();
    assert_eq!(s1.steps, 3);
    assert!(!b.join("gen_data.safetensors").exists());
    let s2 = dcgan::run(&args(&data, &b, &["--resume"])).unwrap();
    assert_eq!(s2.steps, 8);
    assert_eq!(s2.epsilon, s.epsilon);
    for f in [
        "netG.safetensors",
        "netD.safetensors",
        "optim.safetensors",
        "fake_samples_epoch_001.png",
    ] {
        assert!(
            read(&a.join(f)) == read(&b.join(f)),
            "{f} differs after resume"
        );
    }
    // (its metadata's key order is a HashMap's: compare the contents)
    let load =
        |d: &Path| dpsgd::data::load_labelled_images(d.join("gen_data.safetensors")).unwrap();
    assert!(load(&a) == load(&b), "gen_data differs after resume");
    assert_eq!(metrics(&a), metrics(&b));
    // A resume with other settings is refused.
    let e = dcgan::run(&args(&data, &b, &["--resume", "--lr", "0.001"]));
    assert!(e.is_err());

    // --release-private-metrics writes them, labelled; --disable-dp reports no ε.
    let c = tmp("released");
    dcgan::run(&args(
        &data,
        &c,
        &["--max-steps", "4", "--release-private-metrics"],
    ))
    .unwrap();
    let m = metrics(&c);
    assert!(m[0]["d_x"].as_f64().is_some());
    assert_eq!(
        m[0]["not_covered_by_epsilon"],
        serde_json::json!(["loss_d", "d_x"])
    );
    let d = tmp("nodp");
    let s = dcgan::run(&args(&data, &d, &["--max-steps", "4", "--disable-dp"])).unwrap();
    assert!(s.epsilon.is_none());
    assert!(metrics(&d)[0]["epsilon"].is_null());
    for p in [&data, &a, &b, &c, &d] {
        let _ = std::fs::remove_dir_all(p);
    }
}

#[test]
fn bad_input_is_an_error_before_training() {
    let data = tmp("bad-data");
    synthetic_mnist(&data);
    let cases: [(&str, Vec<&str>); 6] = [
        ("digit 10", vec!["--target-digit", "10"]),
        ("image size 48", vec!["--image-size", "48"]),
        ("sigma < 0", vec!["--sigma", "-1"]),
        ("epsilon 0", vec!["--epsilon", "0"]),
        ("C = 0", vec!["--max-per-sample-grad-norm", "0"]),
        ("missing dataset", vec!["--data-dir", "/nonexistent/mnist"]),
    ];
    for (what, extra) in cases {
        let out = tmp("bad-out");
        let e = dcgan::run(&args(&data, &out, &extra));
        let msg = match e {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{what}: accepted"),
        };
        assert!(!out.exists(), "{what}: the run started ({msg})");
        let key = match what {
            "digit 10" => "--target-digit",
            "image size 48" => "--image-size",
            "sigma < 0" => "--sigma",
            "epsilon 0" => "--epsilon",
            "C = 0" => "--max-per-sample-grad-norm",
            _ => "does not exist",
        };
        assert!(msg.contains(key), "{what}: {msg}");
    }
    // A class with no images in the data.
    let out = tmp("bad-out2");
    let e = dcgan::run(&args(&data, &out, &["--target-digit", "5"])).unwrap_err();
    assert!(e.to_string().contains("--target-digit"), "{e}");
    let _ = std::fs::remove_dir_all(&data);
}

/// D's update gradient: the real examples' per-sample gradients clipped to C, the fakes' added
/// un-clipped, divided by the expected lot size — against the same sum formed in f64 from the
/// per-sample rows. σ = 0 so that the value is deterministic.
#[test]
fn d_gradient_clips_real_half_only() {
    let cfg = DcganConfig {
        ngf: 2,
        ndf: 2,
        groups: 2,
        nz: 4,
        ..Default::default()
    };
    let keys = RunKeys::seeded(5);
    let (b, c) = (3usize, 1e-3f32);
    let mut gan = Gan::new(&cfg, b, AdamConfig::new(2e-4), &keys).unwrap();
    let per = 784;
    let real: Vec<f32> = (0..2 * per)
        .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
        .collect();
    let z = dcgan::latents(&keys, 0, b, cfg.nz);
    let fake = gan.generate(&z).unwrap();
    let pcfg = PrivacyConfig {
        noise: NoiseSpec::NoiseMultiplier(0.0),
        delta: 1e-5,
        clipping: Clipping::Flat(c),
        sample_rate: 0.5,
        dataset_size: 6, // E = q·N = 3 = B
        planned_steps: 1,
        accountant: Method::Rdp,
    };
    let mut engine =
        PrivacyEngine::with_keys(pcfg, gan.d.layout().clone(), &Device::Cpu, &keys).unwrap();
    let p = gan.d.num_params();
    let mut out = Buffer::zeros(&Device::Cpu, p).unwrap();
    gan.d_gradient(Some(&mut engine), &real, &fake, false, &mut out)
        .unwrap();
    let got = out.to_vec().unwrap();

    // Reference: per-sample rows, clipped / summed in f64.
    let rows = |x: &[f32], target: f32| -> Vec<Vec<f64>> {
        let n = x.len() / per;
        let mut ws = gan.d.workspace(n).unwrap();
        let mut buf = Buffer::zeros(&Device::Cpu, n * p).unwrap();
        gan.d.forward(&mut ws, x).unwrap();
        gan.d
            .loss(
                &mut ws,
                Loss::BceWithLogits(&vec![target; n]),
                Reduction::Sum,
            )
            .unwrap();
        gan.d
            .backward(&mut ws, Grads::PerSample(&mut buf), false)
            .unwrap();
        let v = buf.to_vec().unwrap();
        (0..n)
            .map(|i| v[i * p..(i + 1) * p].iter().map(|&x| x as f64).collect())
            .collect()
    };
    let norm = |r: &[f64]| r.iter().map(|x| x * x).sum::<f64>().sqrt();
    let real_rows = rows(&real, 1.0);
    let fake_rows = rows(&fake, 0.0);
    let mut want = vec![0f64; p];
    for r in &real_rows {
        let n = norm(r);
        assert!(
            n > 10.0 * c as f64,
            "the test needs clipped real rows ({n})"
        );
        let f = (c as f64 / (n + 1e-6)).min(1.0);
        want.iter_mut().zip(r).for_each(|(w, x)| *w += f * x);
    }
    for r in &fake_rows {
        assert!(norm(r) > 10.0 * c as f64, "clipping the fakes must matter");
        want.iter_mut().zip(r).for_each(|(w, x)| *w += x);
    }
    want.iter_mut().for_each(|w| *w /= 3.0);
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    let err = got
        .iter()
        .zip(&want)
        .fold(0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
    assert!(err <= 1e-5 * scale, "max error {err} vs scale {scale}");
    // The un-clipped fake half dominates: clipping it too would give a far smaller gradient.
    let clipped_all: f64 = {
        let mut s = vec![0f64; p];
        for r in real_rows.iter().chain(&fake_rows) {
            let f = (c as f64 / (norm(r) + 1e-6)).min(1.0);
            s.iter_mut().zip(r).for_each(|(w, x)| *w += f * x);
        }
        norm(&s) / 3.0
    };
    assert!(norm(&want) > 10.0 * clipped_all);
}

#[test]
fn bilinear_resize_matches_pytorch_half_pixel_rule() {
    // 2×2 → 4×4 with align_corners=False: F.interpolate([[0, 1], [2, 3]], size=4,
    // mode="bilinear") = rows [0, .25, .75, 1], [.5, .75, 1.25, 1.5], [1.5, ...], [2, ..., 3].
    let out = dcgan::resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4);
    let want = [
        0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
    ];
    for (a, b) in out.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{out:?}");
    }
}
