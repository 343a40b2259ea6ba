//! Randomized response (local differential privacy for one bit).

use crate::error::check_positive;
use crate::rng::RandomBits;
use crate::{Error, Result};

/// Binary randomized response, the "answer truthfully with probability p, otherwise report the
/// opposite bit" variant (Warner 1965). Each respondent's report is ε-locally differentially
/// private with ε = ln(p/(1−p)); p ∈ (1/2, 1).
///
/// (The coin-flip variant — with probability ½ tell the truth, otherwise answer a fair coin — is
/// this variant with p = 3/4, ε = ln 3.)
///
/// # Proof Definition
/// Warner, "Randomized Response: A Survey Technique for Eliminating Evasive Answer Bias" (JASA
/// 1965); Dwork & Roth (2014), Section 3.2 (randomized response is ε-DP with
/// ε = ln(Pr[report = truth]/Pr[report ≠ truth])): for either true bit the likelihood ratio of
/// any report is at most p/(1−p).
///
/// # Floating-point safety
/// **Not exactly** the stated distribution: the Bernoulli(p) draw compares a 53-bit uniform with
/// p, so the truthful probability is p rounded to a multiple of 2⁻⁵³ and ε is exact only up to
/// that rounding. The output is one bit, so there are no low-order bits to attack.
///
/// ```
/// use dpsgd::mechanisms::RandomizedResponse;
/// use dpsgd::rng::{Purpose, RunKeys};
/// let mut rng = RunKeys::seeded(3).key(Purpose::Mechanism).rng(0);
/// let rr = RandomizedResponse::from_epsilon(1.0)?;
/// let truths = (0..10_000).map(|i| i % 4 == 0); // 25% say yes
/// let reports: Vec<bool> = truths.map(|t| rr.respond(t, &mut rng)).collect();
/// let est = rr.estimate(&reports)?; // de-skewed
/// assert!((est.proportion - 0.25).abs() < 6.0 * est.std_error);
/// # Ok::<(), dpsgd::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomizedResponse {
    p: f64,
}

/// An estimate of the true proportion of `true` answers from randomized responses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProportionEstimate {
    /// The unbiased estimate π̂ = (λ̂ − (1−p))/(2p − 1), with λ̂ the observed fraction of `true`
    /// reports. It can fall outside [0, 1]; clamp it yourself if you need a proportion (clamping
    /// adds bias).
    pub proportion: f64,
    /// The estimated standard error √(λ̂(1−λ̂)/n)/(2p−1) (the plug-in estimate of the standard
    /// deviation of π̂, which is √(λ(1−λ)/n)/(2p−1) with λ = pπ + (1−p)(1−π)).
    pub std_error: f64,
    /// The number of reports n.
    pub n: u64,
}

impl RandomizedResponse {
    /// Randomized response that answers truthfully with probability `p` ∈ (1/2, 1).
    pub fn new(p: f64) -> Result<Self> {
        if p.is_finite() && p > 0.5 && p < 1.0 {
            Ok(RandomizedResponse { p })
        } else {
            Err(Error::invalid(
                "p",
                p,
                "in the open interval (0.5, 1): p = 1/2 carries no information and p = 1 no privacy",
            ))
        }
    }

    /// Randomized response at ε > 0: p = e^ε/(1 + e^ε), rounded **down** so that the ε of the
    /// returned p ([`Self::epsilon`]) never exceeds the request.
    ///
    /// `1/(1 + e^{−ε})` in f64 rounds to nearest, so about half the time the rounded p is above
    /// the exact one and its ε above the request (by up to ~0.3 near ε = 36, where 1 − p is
    /// only a few ulps of p). p is therefore stepped down one ulp at a time while its ε,
    /// inflated by a bound on the rounding of its evaluation, exceeds the request (and stepped
    /// up while the next p still fits, so it is the largest p that does).
    ///
    /// Errors if ε is not finite and > 0, if ε ≳ 36.7 (p would round to 1, no privacy) or if
    /// ε ≲ 4.4e-16 (p would round to 1/2, the smallest ε above 0 is ε(1/2 + 2⁻⁵³) ≈ 2⁻⁵¹).
    pub fn from_epsilon(epsilon: f64) -> Result<Self> {
        check_positive("epsilon", epsilon)?;
        let mut p = 1.0 / (1.0 + (-epsilon).exp());
        if p >= 1.0 {
            return Err(Error::invalid(
                "epsilon",
                epsilon,
                "below ~36.7 (a larger ε rounds p = e^ε/(1+e^ε) to 1 in f64; use a smaller ε)",
            ));
        }
        // `epsilon_of` has relative error ≤ ~1.5·2⁻⁵² (see there); 4·2⁻⁵² is conservative.
        let fits = |p: f64| epsilon_of(p) * (1.0 + 4.0 * f64::EPSILON) <= epsilon;
        // p ∈ [1/2, 1) is positive and finite, so ±1 on its bits is the next f64 down / up.
        // Each step moves ε by at least 2⁻⁵¹ (dε/dp ≥ 4, ulp(p) ≥ 2⁻⁵³) and p starts within
        // a few ulps of the exact value, so both loops end after a few steps.
        while p > 0.5 && !fits(p) {
            p = f64::from_bits(p.to_bits() - 1);
        }
        // The roundings in 1/(1 + e^{−ε}) can also leave p low: take the largest p that fits.
        loop {
            let up = f64::from_bits(p.to_bits() + 1);
            if up < 1.0 && fits(up) {
                p = up;
            } else {
                break;
            }
        }
        if p <= 0.5 {
            return Err(Error::invalid(
                "epsilon",
                epsilon,
                "at least ~4.5e-16 (a smaller ε rounds p = e^ε/(1+e^ε) to 1/2 in f64)",
            ));
        }
        Ok(RandomizedResponse { p })
    }

    /// The coin-flip variant (truth with probability ½, else a fair coin): p = 3/4, ε = ln 3.
    pub fn coin_flip() -> Self {
        RandomizedResponse { p: 0.75 }
    }

    /// The probability of answering truthfully.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// The local privacy parameter ε = ln(p/(1−p)), to a relative error of ~1.5·2⁻⁵² (see
    /// `epsilon_of`).
    pub fn epsilon(&self) -> f64 {
        epsilon_of(self.p)
    }

    /// One respondent's randomized report of `truth`.
    pub fn respond(&self, truth: bool, rng: &mut impl RandomBits) -> bool {
        if rng.next_f64() < self.p {
            truth
        } else {
            !truth
        }
    }

    /// The unbiased estimate of the true proportion from reports, with its standard error.
    /// Errors on an empty slice.
    pub fn estimate(&self, reports: &[bool]) -> Result<ProportionEstimate> {
        let yes = reports.iter().filter(|&&r| r).count() as u64;
        self.estimate_from_counts(yes, reports.len() as u64)
    }

    /// [`Self::estimate`] from the count of `true` reports among `n` reports (`yes ≤ n`, n ≥ 1).
    pub fn estimate_from_counts(&self, yes: u64, n: u64) -> Result<ProportionEstimate> {
        if n == 0 {
            return Err(Error::invalid("n", n, "at least one report"));
        }
        if yes > n {
            return Err(Error::invalid("yes", yes, format!("<= n = {n}")));
        }
        let lam = yes as f64 / n as f64;
        let denom = 2.0 * self.p - 1.0;
        Ok(ProportionEstimate {
            proportion: (lam - (1.0 - self.p)) / denom,
            std_error: (lam * (1.0 - lam) / n as f64).sqrt() / denom,
            n,
        })
    }
}

/// ε = ln(p/(1−p)) = ln_1p((2p−1)/(1−p)) for p ∈ (1/2, 1).
///
/// For p ∈ [1/2, 1] both `2p − 1` and `1 − p` are exact in f64 (Sterbenz), so the only
/// roundings are the division (relative ≤ 2⁻⁵³, which moves ε by ≤ 2⁻⁵³·x/(1+x) ≤ 2⁻⁵³·ε since
/// x/(1+x) ≤ ln(1+x)) and `ln_1p` (≤ 1 ulp): relative error ≤ ~1.5·2⁻⁵² for every p, also
/// near p = 1/2 where `ln(p/(1−p))` loses all relative accuracy (at p = 1/2 + 2⁻⁴⁰ its relative
/// error is ~1e-4).
fn epsilon_of(p: f64) -> f64 {
    ((2.0 * p - 1.0) / (1.0 - p)).ln_1p()
}

/// Randomized response with two coins, as it is usually taught: flip a first coin that shows
/// heads with probability `p`; on heads answer truthfully, on tails flip a second, **fair** coin
/// and answer that. With p = ½ both coins are fair.
///
/// The report equals the truth with probability (1+p)/2 and is its opposite with probability
/// (1−p)/2, so this is [`RandomizedResponse`] with truthful probability (1+p)/2
/// ([`Self::as_randomized_response`]) and ε = ln((1+p)/(1−p)) (ln 3 for two fair coins). The
/// fraction λ of `true` reports has expectation p·π + (1−p)/2 for a true proportion π, hence the
/// de-skewed estimate π̂ = (λ − (1−p)/2)/p ([`Self::deskew`]; 2λ − ½ for fair coins).
///
/// # Proof Definition
/// Warner (JASA 1965) and Dwork & Roth (2014), Section 3.2, where the two-fair-coin version is
/// shown to be (ln 3, 0)-DP; for a first coin of bias p the likelihood ratio of any report
/// under the two values of the truth is at most ((1+p)/2)/((1−p)/2), so each report is
/// ln((1+p)/(1−p))-locally DP. The two coins must be independent of each other and of the
/// truth; [`Self::respond`] draws them from the stream it is given, the first as a 53-bit
/// uniform compared with p (so p is rounded to a multiple of 2⁻⁵³, and ε with it), the second
/// as one uniform bit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TwoCoinResponse {
    p: f64,
}

impl TwoCoinResponse {
    /// Two-coin randomized response whose first coin shows heads with probability `p` ∈ (0, 1)
    /// (p = 0 would carry no information, p = 1 no privacy).
    pub fn new(p: f64) -> Result<Self> {
        if p.is_finite() && p > 0.0 && p < 1.0 {
            Ok(TwoCoinResponse { p })
        } else {
            Err(Error::invalid(
                "p",
                p,
                "in the open interval (0, 1): the first coin's probability of heads (p = 0 carries no information, p = 1 no privacy)",
            ))
        }
    }

    /// Two fair coins (p = ½): ε = ln 3.
    pub fn fair() -> Self {
        TwoCoinResponse { p: 0.5 }
    }

    /// The first coin's probability of heads.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// The probability (1+p)/2 that a report equals the truth.
    pub fn truthful_probability(&self) -> f64 {
        0.5 * (1.0 + self.p)
    }

    /// The local privacy parameter ε = ln((1+p)/(1−p)) (computed as ln_1p(2p/(1−p)), accurate
    /// also for small p).
    pub fn epsilon(&self) -> f64 {
        (2.0 * self.p / (1.0 - self.p)).ln_1p()
    }

    /// The same mechanism as one-coin [`RandomizedResponse`] (truthful probability (1+p)/2,
    /// rounded to the nearest double).
    pub fn as_randomized_response(&self) -> Result<RandomizedResponse> {
        RandomizedResponse::new(self.truthful_probability())
    }

    /// One respondent's report: the truth if the first coin (heads with probability p) shows
    /// heads, else the second, fair coin.
    pub fn respond(&self, truth: bool, rng: &mut impl RandomBits) -> bool {
        if rng.next_f64() < self.p {
            truth
        } else {
            rng.next_u32() & 1 == 1
        }
    }

    /// The de-skewed estimate (λ − (1−p)/2)/p of the true proportion from the observed fraction
    /// λ ∈ [0, 1] of `true` reports (unbiased when λ is the fraction among independent reports;
    /// may fall outside [0, 1]).
    pub fn deskew(&self, observed: f64) -> Result<f64> {
        if !(observed.is_finite() && (0.0..=1.0).contains(&observed)) {
            return Err(Error::invalid(
                "observed",
                observed,
                "a fraction of `true` reports in [0, 1]",
            ));
        }
        Ok((observed - 0.5 * (1.0 - self.p)) / self.p)
    }

    /// The de-skewed estimate from reports, with its plug-in standard error √(λ(1−λ)/n)/p.
    /// Errors on an empty slice.
    pub fn estimate(&self, reports: &[bool]) -> Result<ProportionEstimate> {
        let yes = reports.iter().filter(|&&r| r).count() as u64;
        self.estimate_from_counts(yes, reports.len() as u64)
    }

    /// [`Self::estimate`] from the count of `true` reports among `n` (`yes ≤ n`, n ≥ 1).
    pub fn estimate_from_counts(&self, yes: u64, n: u64) -> Result<ProportionEstimate> {
        if n == 0 {
            return Err(Error::invalid("n", n, "at least one report"));
        }
        if yes > n {
            return Err(Error::invalid("yes", yes, format!("<= n = {n}")));
        }
        let lam = yes as f64 / n as f64;
        Ok(ProportionEstimate {
            proportion: self.deskew(lam)?,
            std_error: (lam * (1.0 - lam) / n as f64).sqrt() / self.p,
            n,
        })
    }
}
