//! `dpsgd audit`: an empirical ε lower bound from one training run (Steinke, Nasr & Jagielski,
//! NeurIPS 2023), printed beside the accountant's ε.

use super::train::{config, AccountantArg, CommonArgs};
use clap::Args;
use dpsgd::accounting::{self, Method};
use dpsgd::audit::{self, AuditConfig, AuditReport, GuessRule};
use dpsgd::engine::{NoiseSpec, PrivacyConfig};
use dpsgd::{Clipping, Device, Error, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// `dpsgd audit`.
#[derive(Clone, Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Target ε of the audited run: σ is calibrated as for `dpsgd train` (default 3 when no σ
    /// is given).
    #[arg(long, conflicts_with = "noise_multiplier")]
    pub epsilon: Option<f64>,
    /// Fixed noise multiplier σ of the audited run.
    #[arg(long)]
    pub noise_multiplier: Option<f64>,
    /// Number of canaries m (each included with probability 1/2).
    #[arg(long, default_value_t = 1000)]
    pub canaries: usize,
    /// White-box audit: Dirac gradient canaries, every iterate seen (the default).
    #[arg(long, conflicts_with = "black_box")]
    pub white_box: bool,
    /// Black-box audit: m training examples become canaries with wrong labels, each put back
    /// with probability 1/2; only the final model is seen (needs data: not with --null-model).
    #[arg(long)]
    pub black_box: bool,
    /// Confidence of the lower bound.
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// Guess exactly K canaries "in" and K "out" (fixed in advance). Default: the best of
    /// K in {m/50, m/20, m/10, m/4, m/2}, Bonferroni-corrected.
    #[arg(long)]
    pub guesses: Option<usize>,
    /// L2 norm of each canary gradient (default: the clipping bound C).
    #[arg(long)]
    pub canary_norm: Option<f32>,
    /// Seed of the audit's own draws (canary coordinates or examples and wrong labels,
    /// membership, sampling); default:
    /// derived from --seed, or from the OS without one.
    #[arg(long)]
    pub audit_seed: Option<u64>,
    /// Audit a null model of P parameters instead of training: no data, only the canaries in
    /// each lot (fast). q = batch-size / dataset-size, steps = epochs × round(1/q).
    #[arg(long, value_name = "P")]
    pub null_model: Option<usize>,
    /// Dataset size N of the null model (default: MNIST's 60000).
    #[arg(long, default_value_t = 60_000, requires = "null_model")]
    pub dataset_size: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `dpsgd audit`.
pub fn audit_cmd(a: AuditArgs) -> Result<()> {
    if let (true, Some(p)) = (a.black_box, a.null_model) {
        return Err(Error::invalid(
            "--null-model",
            p,
            "absent with --black-box: a black-box audit trains on data (its canaries are training examples); use --white-box for the null model",
        ));
    }
    let noise = match (a.epsilon, a.noise_multiplier) {
        (_, Some(s)) => NoiseSpec::NoiseMultiplier(s),
        (Some(e), None) => NoiseSpec::TargetEpsilon(e),
        (None, None) => NoiseSpec::TargetEpsilon(3.0),
    };
    let seed = match a.common.seed {
        Some(s) => s,
        None => dpsgd::cpu::philox::os_seed()?,
    };
    let audit_seed = match a.audit_seed {
        Some(s) => s,
        None if a.common.seed.is_some() => seed ^ 0x0a0d_17a0_d17a_0d17,
        None => dpsgd::cpu::philox::os_seed()?,
    };
    let cfg = AuditConfig {
        canaries: a.canaries,
        canary_norm: a.canary_norm,
        confidence: a.confidence,
        guesses: a.guesses.map_or(GuessRule::Auto, GuessRule::Fixed),
        seed: audit_seed,
    };
    let device = Device::from_name(&a.common.device)?;
    let accountant = match a.common.accountant {
        AccountantArg::Rdp => Method::Rdp,
        AccountantArg::Prv => Method::Prv,
    };
    let report = match a.null_model {
        Some(p) => {
            if a.common.batch_size == 0 || a.common.batch_size > a.dataset_size {
                return Err(Error::invalid(
                    "--batch-size",
                    a.common.batch_size,
                    format!(
                        "in 1..={} (the null model's --dataset-size)",
                        a.dataset_size
                    ),
                ));
            }
            let q = a.common.batch_size as f64 / a.dataset_size as f64;
            let privacy = PrivacyConfig {
                noise,
                delta: a.common.delta,
                clipping: Clipping::Flat(a.common.max_grad_norm),
                sample_rate: q,
                dataset_size: a.dataset_size,
                planned_steps: accounting::steps_for_epochs(a.common.epochs, q)?,
                accountant,
            };
            audit::white_box_null_model(p, privacy, a.common.lr, &cfg, &device, seed)?
        }
        None => {
            let tc = config(&a.common, Some(noise))?;
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("audit [{bar:30}] {pos}/{len} steps {elapsed}")
                    .map_err(|e| Error::invalid("progress template", e, "valid"))?
                    .progress_chars("=> "),
            );
            let progress = |t, total| {
                bar.set_length(total);
                bar.set_position(t);
            };
            let r = if a.black_box {
                audit::black_box(&tc, &cfg, &device, progress)
            } else {
                audit::white_box(&tc, &cfg, &device, progress)
            };
            bar.finish_and_clear();
            r?
        }
    };
    print_report(&report, a.json)
}

fn print_report(r: &AuditReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!("{}", r.setting);
    println!(
        "  {} canaries ({} in), N = {}, {} steps, q = {:.5}, σ = {:.4}, {:.1} s",
        r.canaries,
        r.included,
        r.dataset_size,
        r.steps,
        r.sample_rate,
        r.noise_multiplier,
        r.seconds
    );
    println!(
        "  guesses {} (k = {} in, {} out), correct {}",
        r.guesses,
        r.guesses / 2,
        r.guesses / 2,
        r.correct
    );
    println!(
        "  ε lower bound {:.3} at {}% confidence (δ = {})",
        r.epsilon_lower_bound,
        100.0 * r.confidence,
        r.delta
    );
    match r.epsilon_prv {
        Some(p) => println!("  accountant ε {:.3} (RDP) / {p:.3} (PRV)", r.epsilon_rdp),
        None => println!(
            "  accountant ε {:.3} (RDP) / n/a (PRV: out of its range)",
            r.epsilon_rdp
        ),
    }
    let ks: Vec<String> = r
        .candidates
        .iter()
        .map(|c| {
            format!(
                "k={}: {}/{} → {:.3}",
                c.k,
                c.correct,
                2 * c.k,
                c.epsilon_lower_bound
            )
        })
        .collect();
    println!(
        "  candidates (Bonferroni over {}): {}",
        ks.len(),
        ks.join(", ")
    );
    if r.epsilon_lower_bound > r.accountant_epsilon() {
        println!("  the lower bound EXCEEDS the accountant's ε: the run is not as private as claimed (at this confidence)");
    } else {
        println!("  consistent with the claim (a lower bound below it does not prove the claim)");
    }
    Ok(())
}
