//! The `dpsgd` binary; see `dpsgd --help`.

mod cli;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    if let Err(e) = cli::run(cli) {
        eprintln!("error: {e}");
        let code = match e {
            dpsgd::Error::InvalidParameter { .. } => 2,
            _ => 1,
        };
        std::process::exit(code);
    }
}
