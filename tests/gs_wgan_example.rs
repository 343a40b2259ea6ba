//! A tiny end-to-end run of `examples/gs_wgan.rs` (compiled into this test as a module): the
//! outputs exist, ε is reported, `--resume` continues bit-exactly on the CPU, and bad input is
//! an error before anything is trained.

#[allow(dead_code)]
#[path = "../examples/gs_wgan.rs"]
mod gs_wgan;

use clap::Parser;
use dpsgd::data::idx::write_idx;
use std::path::Path;
use std::sync::OnceLock;

/// A tiny MNIST-shaped dataset written once per test binary (a clean clone has no MNIST): 120
/// training and 20 test images, labels 0–9 in turn.
fn data_dir() -> &'static str {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dpsgd-gswgan-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (prefix, n) in [("train", 120usize), ("t10k", 20)] {
            let px: Vec<u8> = (0..n * 784)
                .map(|i| ((i * 37 + i / 784 * 11) % 256) as u8)
                .collect();
            let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
            write_idx(
                dir.join(format!("{prefix}-images-idx3-ubyte")),
                &[n, 28, 28],
                &px,
            )
            .unwrap();
            write_idx(
                dir.join(format!("{prefix}-labels-idx1-ubyte")),
                &[n],
                &labels,
            )
            .unwrap();
        }
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
