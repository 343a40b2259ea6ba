//! The `dpsgd` command line: accounting commands, JSON output, usage errors with exit code 2.

use std::process::Command;

fn dpsgd(args: &[&str]) -> std::process::Output {
    let bin =
        std::env::var("DPSGD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_dpsgd").to_string());
    Command::new(bin).args(args).output().unwrap()
}

#[test]
fn epsilon_json_has_every_field_and_matches_the_library() {
    let o = dpsgd(&[
        "epsilon",
        "--noise-multiplier",
        "1.0",
        "--sample-rate",
        "0.01",
        "--steps",
        "10000",
        "--delta",
        "1e-5",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in [
        "noise_multiplier",
        "sample_rate",
        "steps",
        "delta",
        "accountant",
        "epsilon",
        "optimal_order",
    ] {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
    // Opacus 1.6 RDPAccountant: 6.712738297403128 at order 4.1 (tests/reference).
    assert!((v["epsilon"].as_f64().unwrap() - 6.712738297403128).abs() < 1e-9);
    assert_eq!(v["optimal_order"].as_f64().unwrap(), 4.1);
    let o = dpsgd(&[
        "epsilon",
        "--noise-multiplier",
        "1.0",
        "--sample-rate",
        "0.01",
        "--epochs",
        "100",
        "--delta",
        "1e-5",
        "--accountant",
        "prv",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["steps"].as_u64().unwrap(), 10_000);
    assert!(v["epsilon"].as_f64().unwrap() < 6.3);
}

#[test]
fn noise_multiplier_meets_the_target() {
    let o = dpsgd(&[
        "noise-multiplier",
        "--epsilon",
        "3",
        "--delta",
        "1e-5",
        "--sample-rate",
        "0.004",
        "--steps",
        "10000",
        "--json",
    ]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["epsilon"].as_f64().unwrap() <= 3.0);
    let s = v["noise_multiplier"].as_f64().unwrap();
    assert!((s - 0.8953).abs() < 2e-3, "σ = {s} (Opacus: 0.896)");
}

#[test]
fn bad_arguments_exit_2_naming_the_argument_and_range() {
    for (args, name) in [
        (
            vec![
                "epsilon",
                "--noise-multiplier",
                "1",
                "--sample-rate",
                "1.5",
                "--steps",
                "10",
                "--delta",
                "1e-5",
            ],
            "--sample-rate",
        ),
        (
            vec![
                "epsilon",
                "--noise-multiplier",
                "-1",
                "--sample-rate",
                "0.1",
                "--steps",
                "10",
                "--delta",
                "1e-5",
            ],
            "--noise-multiplier",
        ),
        (
            vec![
                "epsilon",
                "--noise-multiplier",
                "1",
                "--sample-rate",
                "0.1",
                "--steps",
                "10",
                "--delta",
                "1",
            ],
            "--delta",
        ),
        (
            vec![
                "epsilon",
                "--noise-multiplier",
                "1",
                "--sample-rate",
                "0.1",
                "--delta",
                "1e-5",
            ],
            "--steps",
        ),
        (
            vec![
                "noise-multiplier",
                "--epsilon",
                "0",
                "--delta",
                "1e-5",
                "--sample-rate",
                "0.1",
                "--steps",
                "10",
            ],
            "--epsilon",
        ),
        (
            vec!["train", "--epochs", "0", "--dataset", "synthetic"],
            "epochs",
        ),
    ] {
        let o = dpsgd(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(name), "{args:?}: {err}");
    }
}
