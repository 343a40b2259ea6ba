//! The classic differential-privacy mechanisms, on the CPU, driven by any of the crate's streams
//! ([`crate::rng::RandomBits`]: Philox in seeded runs, ChaCha20 in secure mode).
//!
//! | mechanism | query | guarantee | safe against floating-point attacks (Mironov 2012)? |
//! |---|---|---|---|
//! | [`laplace::Laplace`] | real, L1 sensitivity Δ | ε-DP | **no** (textbook float sampler) |
//! | [`gaussian::Gaussian`] | real, L2 sensitivity Δ | (ε, δ)-DP | **no** (Box–Muller in floats) |
//! | [`discrete_laplace::DiscreteLaplace`] | integer | ε-DP | **yes** (exact integer arithmetic) |
//! | [`discrete_gaussian::DiscreteGaussian`] | integer | ρ-zCDP | **yes** (exact integer arithmetic) |
//! | [`snapping::Snapping`] | real, bounded | ε′-DP, ε′ slightly above ε | **yes**, under Mironov's assumptions |
//! | [`randomized_response::RandomizedResponse`], [`randomized_response::TwoCoinResponse`] | one bit (local DP) | ε-LDP | no (Bernoulli(p) from 53 bits; p rounded to 2⁻⁵³) |
//! | [`feature_stats`] (per-channel mean and variance of features, Tramèr & Boneh 2021) | clipped per-example channel means / mean squares, L2 | RDP α/σ², composed with DP-SGD | **no** (float noise, DP-SGD's sampler) |
//! | [`pate`] (LNMax, GNMax; moments accountant and RDP analyses) | teacher votes | ε-DP / RDP | **no** (float noise) |
//!
//! Floating-point attacks: a textbook Laplace or Gaussian sampler in IEEE doubles produces only
//! some doubles, and which ones depends on the true answer, so the low-order bits of a release can
//! reveal the answer exactly (Mironov, "On Significance of the Least Significant Bits for
//! Differential Privacy", CCS 2012). For integer-valued queries the discrete samplers of Canonne,
//! Kamath and Steinke (2020) use only integer arithmetic on uniform random bits, so the stated
//! distribution is sampled exactly; for real-valued queries the snapping mechanism rounds the
//! output to a coarse grid. The float mechanisms are fine for teaching, simulation and research
//! code (and as DP-SGD itself uses float noise, for the same threat model), but not for releasing
//! statistics to an adversary who can inspect the bits.
//!
//! Every constructor validates its parameters (ε > 0, 0 < δ < 1, Δ > 0, finite inputs) before
//! anything is drawn and returns [`crate::Error`] otherwise; nothing here panics on bad input.
//!
//! ```
//! use dpsgd::mechanisms::{DiscreteGaussian, DiscreteLaplace};
//! use dpsgd::rng::{Purpose, RunKeys};
//! let keys = RunKeys::secure()?;
//! let mut rng = keys.key(Purpose::Mechanism).rng(0);
//! // A count (sensitivity 1) at ε = 0.5: discrete Laplace with scale 1/ε = 2/1.
//! let noisy_count: i64 = DiscreteLaplace::new(2, 1)?.release(1234, &mut rng);
//! // The same count under ρ-zCDP: discrete Gaussian with σ² = 4.
//! let dg = DiscreteGaussian::new(4, 1)?;
//! let _also: i64 = dg.release(1234, &mut rng);
//! assert_eq!(dg.zcdp_rho(1)?, 1.0 / 8.0); // ρ = Δ²/(2σ²)
//! assert!((noisy_count - 1234).abs() < 200);
//! # Ok::<(), dpsgd::Error>(())
//! ```

pub mod discrete_gaussian;
pub mod discrete_laplace;
pub mod feature_stats;
pub mod gaussian;
pub mod laplace;
pub mod pate;
pub mod pate_smooth;
pub mod randomized_response;
pub mod sensitivity;
pub mod snapping;

pub use discrete_gaussian::DiscreteGaussian;
pub use discrete_laplace::DiscreteLaplace;
pub use gaussian::Gaussian;
pub use laplace::Laplace;
pub use randomized_response::{RandomizedResponse, TwoCoinResponse};
pub use snapping::Snapping;

use crate::{Error, Result};

/// Checks that every value of `values` is finite; `what` names the input in the error.
pub(crate) fn check_all_finite(what: &'static str, values: &[f64]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite {
            what,
            detail: format!("index {i} is {}", values[i]),
        }),
    }
}

/// Checks that `delta` lies in the open interval (0, 1).
pub(crate) fn check_delta(delta: f64) -> Result<()> {
    if delta.is_finite() && delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "delta",
            delta,
            "in the open interval (0, 1)",
        ))
    }
}
