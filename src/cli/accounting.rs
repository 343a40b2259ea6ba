//! `dpsgd epsilon` and `dpsgd noise-multiplier`.

use clap::{ArgGroup, Args};
use dpsgd::accounting::{self, calibrate, default_orders, epsilon_rdp, HistoryEntry, Method};
use dpsgd::Result;

use super::train::AccountantArg;

fn parse_in(
    s: &str,
    name: &str,
    ok: impl Fn(f64) -> bool,
    range: &str,
) -> std::result::Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{name} must be a number {range}, got `{s}`"))?;
    if ok(v) {
        Ok(v)
    } else {
        Err(format!("{name} must be {range}, got {v}"))
    }
}

fn sigma(s: &str) -> std::result::Result<f64, String> {
    parse_in(
        s,
        "--noise-multiplier",
        |v| v.is_finite() && v >= 0.0,
        "finite and >= 0",
    )
}
fn rate(s: &str) -> std::result::Result<f64, String> {
    parse_in(s, "--sample-rate", |v| v > 0.0 && v <= 1.0, "in (0, 1]")
}
fn delta(s: &str) -> std::result::Result<f64, String> {
    parse_in(
        s,
        "--delta",
        |v| v > 0.0 && v < 1.0,
        "in the open interval (0, 1)",
    )
}
fn epsilon(s: &str) -> std::result::Result<f64, String> {
    parse_in(
        s,
        "--epsilon",
        |v| v.is_finite() && v > 0.0,
        "finite and > 0",
    )
}
fn count(s: &str) -> std::result::Result<u64, String> {
    match s.parse::<u64>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(format!("must be an integer >= 1, got `{s}`")),
    }
}

/// How long the run is.
#[derive(Clone, Debug, Args)]
#[command(group(ArgGroup::new("length").required(true).args(["steps", "epochs"])))]
pub struct Length {
    /// Number of steps.
    #[arg(long, value_parser = count)]
    pub steps: Option<u64>,
    /// Number of epochs (each round(1/q) steps).
    #[arg(long, value_parser = count)]
    pub epochs: Option<u64>,
}

impl Length {
    fn steps(&self, q: f64) -> Result<u64> {
        match (self.steps, self.epochs) {
            (Some(s), _) => Ok(s),
            (None, Some(e)) => accounting::steps_for_epochs(e, q),
            (None, None) => Err(dpsgd::Error::invalid(
                "--steps/--epochs",
                "none",
                "one of them",
            )),
        }
    }
}

/// `dpsgd epsilon`.
#[derive(Clone, Debug, Args)]
pub struct EpsilonArgs {
    /// Noise multiplier σ.
    #[arg(long, value_parser = sigma)]
    pub noise_multiplier: f64,
    /// Poisson sampling rate q.
    #[arg(long, value_parser = rate)]
    pub sample_rate: f64,
    #[command(flatten)]
    pub length: Length,
    /// δ.
    #[arg(long, value_parser = delta)]
    pub delta: f64,
    /// Accountant.
    #[arg(long, value_enum, default_value = "rdp")]
    pub accountant: AccountantArg,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `dpsgd noise-multiplier`.
#[derive(Clone, Debug, Args)]
pub struct NoiseArgs {
    /// Target ε.
    #[arg(long, value_parser = epsilon)]
    pub epsilon: f64,
    /// δ.
    #[arg(long, value_parser = delta)]
    pub delta: f64,
    /// Poisson sampling rate q.
    #[arg(long, value_parser = rate)]
    pub sample_rate: f64,
    #[command(flatten)]
    pub length: Length,
    /// Accountant.
    #[arg(long, value_enum, default_value = "rdp")]
    pub accountant: AccountantArg,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn method(a: AccountantArg) -> Method {
    match a {
        AccountantArg::Rdp => Method::Rdp,
        AccountantArg::Prv => Method::Prv,
    }
}

/// Runs `dpsgd epsilon`.
pub fn epsilon_cmd(a: EpsilonArgs) -> Result<()> {
    let steps = a.length.steps(a.sample_rate)?;
    let h = [HistoryEntry::new(a.noise_multiplier, a.sample_rate, steps)?];
    let m = method(a.accountant);
    let (eps, order) = match m {
        Method::Rdp => {
            let (e, o) = epsilon_rdp(&h, a.delta, &default_orders())?;
            (e, Some(o))
        }
        Method::Prv => (accounting::epsilon(m, &h, a.delta)?, None),
    };
    if a.json {
        let v = serde_json::json!({
            "noise_multiplier": a.noise_multiplier, "sample_rate": a.sample_rate, "steps": steps,
            "epochs": a.length.epochs, "delta": a.delta, "accountant": m, "epsilon": eps,
            "optimal_order": order,
        });
        println!("{v}");
    } else {
        match order {
            Some(o) => println!("ε = {eps:.6} (δ = {}, RDP, optimal order α = {o}) after {steps} steps of σ = {}, q = {}", a.delta, a.noise_multiplier, a.sample_rate),
            None => println!("ε ≤ {eps:.6} (δ = {}, PRV upper bound, ε error 0.01) after {steps} steps of σ = {}, q = {}", a.delta, a.noise_multiplier, a.sample_rate),
        }
    }
    Ok(())
}

/// Runs `dpsgd noise-multiplier`.
pub fn noise_cmd(a: NoiseArgs) -> Result<()> {
    let steps = a.length.steps(a.sample_rate)?;
    let m = method(a.accountant);
    let c = calibrate(m, a.epsilon, a.delta, a.sample_rate, steps, 1e-4)?;
    if a.json {
        let v = serde_json::json!({
            "target_epsilon": a.epsilon, "delta": a.delta, "sample_rate": a.sample_rate, "steps": steps,
            "epochs": a.length.epochs, "accountant": m, "noise_multiplier": c.noise_multiplier,
            "epsilon": c.epsilon,
        });
        println!("{v}");
    } else {
        println!(
            "σ = {:.4} gives ε = {:.6} ≤ {} (δ = {}, {m:?}) over {steps} steps at q = {}",
            c.noise_multiplier, c.epsilon, a.epsilon, a.delta, a.sample_rate
        );
    }
    Ok(())
}
