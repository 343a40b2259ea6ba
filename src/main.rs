//! The `dpsgd` binary; see `dpsgd --help`.

mod cli;

use clap::Parser;

fn main() {
    // The default build picks AVX2+FMA loops at run time and runs on any x86-64. A build for
    // x86-64-v3 (RUSTFLAGS="-C target-cpu=x86-64-v3") does not: say so on a CPU without AVX2/FMA
    // rather than die of an illegal instruction later.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
        eprintln!(
            "error: this dpsgd was built for x86-64-v3 (AVX2, FMA) and this CPU lacks them; \
             rebuild without that target-cpu (a plain cargo build --release picks the \
             CPU's best loops at run time)"
        );
        std::process::exit(1);
    }
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
