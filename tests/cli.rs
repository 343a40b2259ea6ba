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

/// A fresh, empty folder for one test's run.
fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dpsgd-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `dpsgd train` on the synthetic data (4000 training examples): one short epoch of 10 steps.
fn train_synthetic(out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "train",
        "--dataset",
        "synthetic",
        "--epochs",
        "1",
        "--batch-size",
        "400",
        "--physical-batch",
        "400",
        "--lr",
        "0.5",
        "--seed",
        "3",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    dpsgd(&args)
}

fn metrics_lines(out: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A private run does not release the training loss (private data with unbounded sensitivity,
/// outside the accountant): not on stdout, not in metrics.jsonl. A non-private run still
/// reports it.
#[test]
fn private_run_releases_no_training_loss() {
    let dir = tmpdir("private-loss");
    let o = train_synthetic(&dir, &["--noise-multiplier", "1.0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("epoch   1/1"), "{stdout}");
    assert!(!stdout.contains("train loss"), "{stdout}");
    let lines = metrics_lines(&dir);
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].get("train_loss").is_none_or(|v| v.is_null()),
        "{}",
        lines[0]
    );
    assert!(lines[0]["epsilon_rdp"].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_dir_all(&dir);

    let dir = tmpdir("non-private-loss");
    let o = train_synthetic(&dir, &["--non-private"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("train loss"));
    let lines = metrics_lines(&dir);
    assert!(
        lines[0]["train_loss"].as_f64().unwrap() > 0.0,
        "{}",
        lines[0]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Validation figures come from held-out training examples: private data, labelled as not
/// covered by ε on stdout and in metrics.jsonl.
#[test]
fn validation_metrics_are_labelled_not_covered_by_epsilon() {
    let dir = tmpdir("validation");
    let o = train_synthetic(&dir, &["--noise-multiplier", "1.0", "--validation", "500"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let epoch = stdout
        .lines()
        .find(|l| l.starts_with("epoch   1/1"))
        .unwrap_or_else(|| panic!("no epoch line in {stdout}"));
    assert!(epoch.contains("validation acc"), "{epoch}");
    assert!(epoch.contains("(not covered by ε)"), "{epoch}");
    let done = stdout.lines().find(|l| l.starts_with("done:")).unwrap();
    assert!(done.contains("(not covered by ε)"), "{done}");
    let m = &metrics_lines(&dir)[0];
    assert_eq!(m["eval_split"], "validation");
    assert_eq!(m["eval_private_data"], true, "{m}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Nothing is released before it is durable: when the epoch's checkpoint cannot be written
/// (its temporary file's path is taken by a folder), the run fails, and the epoch is neither
/// printed nor written to metrics.jsonl — a secure-mode resume would redo it with fresh noise,
/// so figures of the failed attempt would be unaccounted.
#[test]
fn epoch_is_not_released_before_its_checkpoint_is_saved() {
    let dir = tmpdir("ckpt-fails");
    std::fs::create_dir(dir.join("checkpoint.safetensors.tmp")).unwrap();
    let o = train_synthetic(&dir, &["--noise-multiplier", "1.0"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("checkpoint.safetensors"), "{stderr}");
    assert!(!stdout.contains("epoch   1/1"), "{stdout}");
    assert!(!stdout.contains("acc"), "{stdout}");
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    assert!(metrics.is_empty(), "{metrics}");
    assert!(!dir.join("checkpoint.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The checkpoint is the durable record: a run that crashed after saving an epoch's checkpoint
/// but before writing metrics.jsonl gets that epoch back in metrics.jsonl on `--resume`.
#[test]
fn resume_rewrites_metrics_from_the_checkpoint() {
    let dir = tmpdir("resume-metrics");
    let o = train_synthetic(&dir, &["--noise-multiplier", "1.0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    std::fs::remove_file(dir.join("metrics.jsonl")).unwrap();
    let o = train_synthetic(&dir, &["--noise-multiplier", "1.0", "--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(before, after);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--repeats 3` trains three runs (seeds 3, 4, 5) into `repeat-K/` and reports the final
/// accuracy as mean ± std (n − 1) with min and max, in stdout and `repeats.json`, consistent
/// with each run's own metrics; `--repeats 0` is an error before anything trains.
#[test]
fn repeats_report_mean_and_spread_over_seeds() {
    let dir = tmpdir("repeats");
    let o = train_synthetic(&dir, &["--noise-multiplier", "1.0", "--repeats", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("3 runs: final test accuracy"), "{stdout}");
    let acc: Vec<f64> = (0..3)
        .map(|k| {
            let m = metrics_lines(&dir.join(format!("repeat-{k}")));
            m.last().unwrap()["eval_accuracy"].as_f64().unwrap()
        })
        .collect();
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("repeats.json")).unwrap()).unwrap();
    let seeds: Vec<u64> = j["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds, vec![3, 4, 5]);
    let mean = acc.iter().sum::<f64>() / 3.0;
    let std = (acc.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    let s = &j["accuracy"];
    assert!((s["mean"].as_f64().unwrap() - mean).abs() < 1e-12, "{s}");
    assert!((s["std"].as_f64().unwrap() - std).abs() < 1e-12, "{s}");
    let min = acc.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(s["min"].as_f64().unwrap(), min);
    assert_eq!(s["n"].as_u64().unwrap(), 3);
    assert!(
        stdout.contains(&format!("{:.2} ± {:.2}%", 100.0 * mean, 100.0 * std)),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);

    let dir = tmpdir("repeats-zero");
    let o = train_synthetic(&dir, &["--noise-multiplier", "1.0", "--repeats", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--repeats"));
    assert!(!dir.join("repeat-0").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `dpsgd sweep --repeats 2`: each ε point is two seeded runs; `sweep.json` holds each point's
/// mean, std, min, max and the plot (with error bars) is written.
#[test]
fn sweep_with_repeats_writes_summaries_and_error_bar_plot() {
    let dir = tmpdir("sweep-repeats");
    let o = dpsgd(&[
        "sweep",
        "--dataset",
        "synthetic",
        "--epochs",
        "1",
        "--batch-size",
        "400",
        "--physical-batch",
        "400",
        "--seed",
        "3",
        "--epsilons",
        "2,8",
        "--non-private",
        "false",
        "--repeats",
        "2",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sweep.json")).unwrap()).unwrap();
    let pts = j["points"].as_array().unwrap();
    assert_eq!(pts.len(), 2);
    for p in pts {
        let s = &p["accuracy_summary"];
        assert_eq!(s["n"].as_u64(), Some(2), "{p}");
        assert!(s["min"].as_f64().unwrap() <= s["mean"].as_f64().unwrap());
        assert!(s["mean"].as_f64().unwrap() <= s["max"].as_f64().unwrap());
    }
    assert!(dir.join("eps-2/repeat-1/metrics.jsonl").exists());
    assert!(
        std::fs::metadata(dir.join("accuracy_vs_epsilon.png"))
            .unwrap()
            .len()
            > 1000
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `dpsgd pate --quick` on the synthetic data: teachers, Confident-GNMax, a self-trained
/// student, the ε's and every output file, in a few seconds.
#[test]
fn pate_quick_synthetic_writes_every_output() {
    let out = tmpdir("pate");
    let o = dpsgd(&[
        "pate",
        "--dataset",
        "synthetic",
        "--quick",
        "--self-train",
        "--seed",
        "4",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["teachers"].as_u64(), Some(5));
    assert_eq!(v["queries"].as_u64(), Some(100));
    assert_eq!(v["teacher_accuracies"].as_array().unwrap().len(), 5);
    // Synthetic data is easy: the teachers (400 images each) and the student learn it.
    assert!(v["teacher_accuracy_mean"].as_f64().unwrap() > 0.8, "{v}");
    let answered = v["answered"].as_u64().unwrap();
    assert!(answered > 0 && answered <= 100, "{v}");
    assert!(v["label_accuracy"].as_f64().unwrap() > 0.8, "{v}");
    assert!(v["student_accuracy"].as_f64().unwrap() > 0.5, "{v}");
    assert_eq!(v["self_training"].as_bool(), Some(true));
    let p = &v["privacy"];
    let (di, dd) = (
        p["epsilon_data_independent"].as_f64().unwrap(),
        p["epsilon_data_dependent"].as_f64().unwrap(),
    );
    assert!(dd > 0.0 && dd <= di, "{p}");
    // The smooth-sensitivity release, on by default: publishable, its cost inside the DP
    // statement; `--no-release` leaves it out and gives a smaller data-independent ε.
    let r = &p["smooth_release"];
    let (order, cost) = (
        r["order"].as_f64().unwrap(),
        r["release_rdp"].as_f64().unwrap(),
    );
    assert!(order >= 2.0 && cost > 0.0, "{r}");
    assert!(r["epsilon"].as_f64().unwrap().is_finite(), "{r}");
    let o2 = dpsgd(&[
        "pate",
        "--dataset",
        "synthetic",
        "--quick",
        "--self-train",
        "--seed",
        "4",
        "--json",
        "--no-release",
        "--out",
        out.join("no-release").to_str().unwrap(),
    ]);
    assert!(
        o2.status.success(),
        "{}",
        String::from_utf8_lossy(&o2.stderr)
    );
    let v2: serde_json::Value = serde_json::from_slice(&o2.stdout).unwrap();
    assert!(v2["privacy"]["smooth_release"].is_null(), "{v2}");
    let di2 = v2["privacy"]["epsilon_data_independent"].as_f64().unwrap();
    assert!(di2 < di, "{di2} vs {di}");
    assert_eq!(
        v2["privacy"]["epsilon_data_dependent"],
        p["epsilon_data_dependent"]
    );
    assert!(v["dp_statement"]
        .as_str()
        .unwrap()
        .contains("data-independent"));
    // The same numbers in metrics.json; the model and the (private) vote histogram.
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["privacy"], v["privacy"]);
    assert!(
        std::fs::metadata(out.join("student.safetensors"))
            .unwrap()
            .len()
            > 100_000
    );
    let png = out.join("vote_agreement.png");
    assert!(png.exists() || err.contains("no plot"), "{err}");
    // Without --json: the table says which ε is the DP statement.
    let o = dpsgd(&[
        "pate",
        "--dataset",
        "synthetic",
        "--quick",
        "--aggregator",
        "gnmax",
        "--sigma",
        "2",
        "--seed",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("the DP statement") && text.contains("NOT a DP statement"));
    assert!(text.contains("queries 100  answered 100"), "{text}");
}

/// `dpsgd pate` with ScatterNet teachers and student in tuning mode: a random choice of public
/// images is the evaluation set (never queried), and the student's test set is not touched.
#[test]
fn pate_scatter_models_and_validation_mode() {
    let out = tmpdir("pate-scatter");
    let o = dpsgd(&[
        "pate",
        "--dataset",
        "synthetic",
        "--quick",
        "--model",
        "scatter-linear",
        "--student-model",
        "scatter-cnn",
        "--validation",
        "200",
        "--self-train",
        "--self-train-rounds",
        "1",
        "--seed",
        "3",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["teacher_fit"]["model"].as_str(), Some("scatter-linear"));
    assert_eq!(v["student_fit"]["model"].as_str(), Some("scatter-cnn"));
    assert_eq!(v["teacher_fit"]["max_shift"].as_u64(), Some(0));
    assert_eq!(v["public_examples"].as_u64(), Some(700));
    assert_eq!(v["student_test_examples"].as_u64(), Some(200));
    assert!(v["evaluation_set"].as_str().unwrap().contains("validation"));
    // Scattering teachers learn the synthetic data; the answers are mostly right.
    assert!(v["teacher_accuracy_mean"].as_f64().unwrap() > 0.8, "{v}");
    assert!(v["label_accuracy"].as_f64().unwrap() > 0.8, "{v}");
    assert!(v["student_accuracy"].as_f64().unwrap() > 0.5, "{v}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `dpsgd pate --fixmatch` with a teacher cache: the second run reads the first one's teachers
/// (the same votes, answers and ε's) and trains a FixMatch student on the answers and the
/// unlabelled public images.
#[test]
fn pate_fixmatch_student_and_teacher_cache() {
    let out = tmpdir("pate-fixmatch");
    let cache = out.join("cache");
    let run = |name: &str| {
        let o = dpsgd(&[
            "pate",
            "--dataset",
            "synthetic",
            "--quick",
            "--validation",
            "100",
            "--fixmatch",
            "--fixmatch-steps",
            "40",
            "--fixmatch-cosine",
            "--fixmatch-ema",
            "0.9",
            "--teacher-cache",
            cache.to_str().unwrap(),
            "--seed",
            "6",
            "--json",
            "--out",
            out.join(name).to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let v1 = run("a");
    let v2 = run("b");
    assert_eq!(v1["teachers_from_cache"].as_bool(), Some(false));
    assert_eq!(v2["teachers_from_cache"].as_bool(), Some(true));
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    for key in [
        "teacher_accuracies",
        "answered",
        "label_accuracy",
        "privacy",
    ] {
        assert_eq!(v1[key], v2[key], "{key}");
    }
    assert_eq!(v1["student_accuracy"], v2["student_accuracy"]);
    let (cfg, stats) = (&v1["fixmatch"][0], &v1["fixmatch"][1]);
    assert_eq!(cfg["steps"].as_u64(), Some(40));
    assert_eq!(stats["unlabelled_seen"].as_u64(), Some(40 * 32 * 3));
    assert!(stats["pseudo_labelled"].as_u64().unwrap() > 0, "{stats}");
    assert!(v1["student_accuracy"].as_f64().unwrap() > 0.5, "{v1}");
    assert!(v1["student_trained_on"]
        .as_str()
        .unwrap()
        .contains("FixMatch"));
    let _ = std::fs::remove_dir_all(&out);
}

/// `dpsgd pate --students N`: an ensemble of one is the single student bit for bit (same
/// accuracy, same saved weights); an ensemble of two reports both students beside the
/// ensemble, its first student being that single student.
#[test]
fn pate_student_ensembles() {
    let out = tmpdir("pate-students");
    let cache = out.join("cache");
    let run = |name: &str, extra: &[&str]| {
        let dir = out.join(name);
        let mut args = vec![
            "pate",
            "--dataset",
            "synthetic",
            "--quick",
            "--validation",
            "100",
            "--fixmatch",
            "--fixmatch-steps",
            "30",
            "--teacher-cache",
            cache.to_str().unwrap(),
            "--seed",
            "4",
            "--json",
            "--out",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = dpsgd(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (v, dir)
    };
    let (plain, plain_dir) = run("plain", &[]);
    let (one, one_dir) = run("one", &["--students", "1"]);
    let (two, two_dir) = run("two", &["--students", "2"]);
    let bytes = |d: &std::path::Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert_eq!(
        bytes(&plain_dir, "student.safetensors"),
        bytes(&one_dir, "student.safetensors")
    );
    for key in [
        "student_accuracy",
        "student_accuracy_answered_only",
        "fixmatch",
        "privacy",
    ] {
        assert_eq!(plain[key], one[key], "{key}");
    }
    assert_eq!(one["students"].as_u64(), Some(1));
    assert_eq!(one["student_accuracies"], one["ensemble_accuracies"]);
    assert_eq!(one["student_accuracies"][0], one["student_accuracy"]);
    // Two students: the first is the single student; the second has its own weights.
    assert_eq!(two["students"].as_u64(), Some(2));
    assert_eq!(
        bytes(&two_dir, "student.safetensors"),
        bytes(&one_dir, "student.safetensors")
    );
    assert_ne!(
        bytes(&two_dir, "student-1.safetensors"),
        bytes(&one_dir, "student.safetensors")
    );
    assert!(!one_dir.join("student-1.safetensors").exists());
    let accs = two["student_accuracies"].as_array().unwrap();
    let ens = two["ensemble_accuracies"].as_array().unwrap();
    assert_eq!((accs.len(), ens.len()), (2, 2));
    assert_eq!(accs[0], one["student_accuracy"]);
    assert_eq!(ens[0], one["student_accuracy"]);
    assert_eq!(ens[1], two["student_accuracy"]);
    assert!(two["student_accuracy"].as_f64().unwrap() > 0.5, "{two}");
    assert!(two["student_trained_on"]
        .as_str()
        .unwrap()
        .contains("ensemble of 2"));
    assert_eq!(two["privacy"], one["privacy"]);
    let _ = std::fs::remove_dir_all(&out);
}

/// `dpsgd pate --aggregate-only` stops after the aggregator: the same teachers, answers and ε's
/// as a full run of the same seed, and no student (no accuracy, no student.safetensors).
#[test]
fn pate_aggregate_only_trains_no_student() {
    let out = tmpdir("pate-aggregate-only");
    let run = |name: &str, extra: &[&str]| {
        let dir = out.join(name);
        let mut args = vec![
            "pate",
            "--dataset",
            "synthetic",
            "--quick",
            "--seed",
            "5",
            "--json",
            "--out",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = dpsgd(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (v, dir)
    };
    let (full, full_dir) = run("full", &[]);
    let (agg, agg_dir) = run("agg", &["--aggregate-only"]);
    for key in [
        "teacher_accuracies",
        "queries",
        "answered",
        "label_accuracy",
        "plurality_accuracy_answered",
        "privacy",
    ] {
        assert_eq!(full[key], agg[key], "{key}");
    }
    assert!(full["student_accuracy"].as_f64().unwrap() > 0.5, "{full}");
    assert!(agg["student_accuracy"].is_null(), "{agg}");
    assert!(agg["student_accuracy_answered_only"].is_null(), "{agg}");
    assert!(full_dir.join("student.safetensors").exists());
    assert!(!agg_dir.join("student.safetensors").exists());
    assert!(agg_dir.join("metrics.json").exists());
    // The table names no student accuracy, and still gives the DP statement.
    let o = dpsgd(&[
        "pate",
        "--dataset",
        "synthetic",
        "--quick",
        "--seed",
        "5",
        "--aggregate-only",
        "--out",
        agg_dir.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("the DP statement"), "{text}");
    assert!(!text.contains("student accuracy"), "{text}");
    let _ = std::fs::remove_dir_all(&out);
}

/// Bad PATE input fails before anything is trained, naming the flag.
#[test]
fn pate_bad_input_is_a_typed_error() {
    for (args, name, code) in [
        (&["--sigma", "0"][..], "sigma", 2),
        (&["--gamma=-1"][..], "gamma", 2),
        (&["--sigma2", "0"][..], "sigma2", 2),
        (&["--queries", "901"][..], "queries", 2),
        (&["--teachers", "2001"][..], "teachers", 2),
        (&["--public", "1000"][..], "public", 2),
        (&["--validation", "900"][..], "validation", 2),
        (
            &["--validation", "850", "--queries", "100"][..],
            "queries",
            2,
        ),
        (
            &["--model", "scatter-linear", "--shift", "1"][..],
            "max_shift",
            2,
        ),
        (
            &["--student-model", "scatter-cnn", "--student-shift", "2"][..],
            "max_shift",
            2,
        ),
        // The quick synthetic run's σ₂ (0.8) fails conditions C5/C6 at order 50: refused up front.
        (&["--release-order", "50"][..], "order", 2),
        (&["--release-sigma", "0"][..], "release_sigma", 2),
        (&["--fixmatch", "--self-train"][..], "self_train", 2),
        (&["--students", "0"][..], "students", 2),
        (&["--students", "33", "--fixmatch"][..], "students", 2),
        (&["--students", "2", "--self-train"][..], "students", 2),
        (&["--students", "2", "--aggregate-only"][..], "students", 2),
        (&["--aggregate-only", "--fixmatch"][..], "aggregate_only", 2),
        (
            &["--aggregate-only", "--self-train"][..],
            "aggregate_only",
            2,
        ),
        (
            &["--fixmatch", "--student-model", "scatter-cnn"][..],
            "model",
            2,
        ),
        (
            &["--fixmatch", "--fixmatch-threshold", "0"][..],
            "threshold",
            2,
        ),
        (
            &["--fixmatch", "--strong-rotation", "90"][..],
            "max_rotation_deg",
            2,
        ),
        (
            &["--model", "scatter-linear", "--teacher-rotation", "10"][..],
            "affine",
            2,
        ),
        (&["--teacher-rotation", "90"][..], "max_rotation_deg", 2),
        (
            &["--teacher-cache", "/tmp/dpsgd-never"][..],
            "teacher_cache",
            2,
        ),
        (
            &["--aggregator", "lnmax", "--release-order", "4"][..],
            "release_order",
            2,
        ),
    ] {
        let mut a = vec!["pate", "--dataset", "synthetic", "--quick"];
        a.extend_from_slice(args);
        let t = std::time::Instant::now();
        let o = dpsgd(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(name), "{args:?}: {err}");
        assert!(t.elapsed().as_secs() < 10, "{args:?} ran before failing");
    }
    // Missing data: an I/O error that says how to get it.
    let o = dpsgd(&["pate", "--data-dir", "/nonexistent-dpsgd-mnist", "--quick"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("fetch-mnist"), "{err}");
}

/// `--input-norm private` clips the statistics at the data-independent bounds by default
/// (`feature_stats::scatter_clip_bounds`: 2.5166 / 1.2892 for 28 × 28 images; on every dataset
/// but MNIST, whose default is a third of them), and either flag overrides its own bound only.
#[test]
fn private_input_norm_defaults_to_the_data_independent_bounds() {
    let (ca, cb) = dpsgd::mechanisms::feature_stats::scatter_clip_bounds(
        dpsgd::data::scatter::ScatterParams::MNIST,
        1,
    )
    .unwrap();
    // The second run reads the first one's features from this cache.
    let cache = tmpdir("private-norm-cache");
    for (extra, want) in [
        (&[][..], format!("clip {ca} / {cb})")),
        (
            &["--norm-clip-mean", "0.5"][..],
            format!("clip 0.5 / {cb})"),
        ),
    ] {
        let out = tmpdir("private-norm-default");
        let mut args = vec![
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "scatter-linear",
            "--input-norm",
            "private",
            "--epochs",
            "1",
            "--batch-size",
            "512",
            "--seed",
            "1",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let bin =
            std::env::var("DPSGD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_dpsgd").to_string());
        let o = Command::new(bin)
            .args(&args)
            .env("DPSGD_FEATURE_CACHE", &cache)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(stdout.contains(&want), "want `{want}` in:\n{stdout}");
        assert!((ca - 2.5166).abs() < 1e-4 && (cb - 1.2892).abs() < 1e-4);
    }
}
