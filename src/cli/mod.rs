//! The `dpsgd` command line: `train`, `sweep`, `audit`, `pate` (and the accounting commands).
//!
//! Everything here belongs to the binary and is built only with the `cli` feature (default on):
//! argument parsing (clap), progress bars (indicatif) and PNG plots (plotters, [`plot`]). The
//! library (`dpsgd::…`) needs none of it.

pub mod accounting;
pub mod audit;
pub mod pate;
pub mod plot;
pub mod train;

use clap::{Parser, Subcommand};

/// dpsgd: fast differentially private training (DP-SGD) with CUDA kernels and CPU twins.
#[derive(Debug, Parser)]
#[command(name = "dpsgd", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model with DP-SGD (MNIST by default) and report ε.
    Train(train::TrainArgs),
    /// Train one model per target ε and plot test accuracy against ε.
    Sweep(train::SweepArgs),
    /// ε of a DP-SGD run (σ, q, steps or epochs, δ).
    Epsilon(accounting::EpsilonArgs),
    /// The smallest noise multiplier σ for a target ε.
    NoiseMultiplier(accounting::NoiseArgs),
    /// An empirical ε lower bound from one run with canaries, beside the accountant's ε.
    Audit(audit::AuditArgs),
    /// PATE end to end: teachers on disjoint partitions, a noisy aggregator, a student, and
    /// the data-independent and data-dependent ε.
    Pate(pate::PateArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> dpsgd::Result<()> {
    match cli.command {
        Command::Train(a) => train::train(a).map(|_| ()),
        Command::Sweep(a) => train::sweep(a),
        Command::Epsilon(a) => accounting::epsilon_cmd(a),
        Command::NoiseMultiplier(a) => accounting::noise_cmd(a),
        Command::Audit(a) => audit::audit_cmd(a),
        Command::Pate(a) => pate::pate_cmd(a),
    }
}
