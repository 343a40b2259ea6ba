//! DP-DCGAN: Opacus's `examples/dcgan.py` on dpsgd's public API. See `dcgan.rs` for the
//! privacy argument and the outputs.
//!
//! `cargo run --release --example dp_dcgan -- --help`

mod dcgan;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = dcgan::Args::parse();
    match dcgan::run(&args) {
        Ok(summary) => {
            println!("{}", summary.line());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
