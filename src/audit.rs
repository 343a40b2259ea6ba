//! Empirical privacy auditing in one training run (Steinke, Nasr & Jagielski, "Privacy Auditing
//! with One (1) Training Run", NeurIPS 2023, arXiv:2305.08846).
//!
//! # The experiment
//! m *canaries* are drawn; each is included in the training run independently with probability
//! ½ (the secret bit S_i). After training, an auditor that sees the run's output scores every
//! canary and guesses "in" for the k highest scores and "out" for the k lowest (abstaining on
//! the rest): r = 2k guesses, of which v are correct. If the run were (ε, δ)-DP with respect to
//! each canary, v could not be much larger than a Binomial(r, e^ε/(1 + e^ε)) — the paper's main
//! theorem for approximate DP (its pure-DP case is a Binomial tail), whose p-value is computed
//! by the procedure the authors publish with the paper (`p_value_DP_audit`; [`p_value`] is the
//! same formula, checked against closed forms in the tests). [`epsilon_lower_bound`] inverts
//! that test.
//!
//! # What an audit proves, and what it does not
//! A bound ε_lb at confidence 95% says: *if the run, as executed, were (ε_lb, δ)-DP, the
//! observed number of correct guesses would have had probability < 5%.* It is a statistical
//! **lower** bound on the ε of the mechanism as run (noise generator, clipping, sampling and
//! all), not an estimate of it. A bound above the accountant's ε means the implementation (or
//! its analysis) is broken, at 95% confidence. A bound below the accountant's ε proves nothing
//! about the claim: the canaries, the scores or m may simply be too weak to see the leakage —
//! one-run audits of DP-SGD with Poisson sampling are known to be loose at small sample rates.
//!
//! # The white-box DP-SGD audit (the paper's §6 "gradient canaries")
//! Canary i is the *Dirac gradient* C·e_{j_i} (norm exactly C, so clipping leaves it alone) on
//! its own coordinate j_i (distinct, drawn with a seed). At every step each included canary is
//! Poisson-sampled with the run's rate q and, when sampled, its row goes into the lot's sum
//! through [`PrivacyEngine::accumulate`], beside the real data's per-sample gradients
//! ([`PrivacyEngine::accumulate_batch`]). Training is plain SGD through
//! [`PrivacyEngine::step_sgd`], so θ_t − θ_{t+1} = lr·(noisy mean gradient); the auditor sees
//! every iterate and scores canary i by the log-likelihood ratio of its coordinate's updates
//! (`Canaries::score`: each step's update is a Gaussian, or with probability q the Gaussian
//! shifted by the canary).
//!
//! # The black-box DP-SGD audit (the paper's "input-space canaries")
//! m training examples are drawn as canaries and removed from the training set; each is given
//! a random *wrong* label (uniform over the other classes) and put back, with that label, when
//! its secret bit says "in". The run is ordinary DP-SGD on that training set of
//! N' = N − m + #in examples (Poisson rate q = batch / N', accounted for N'), and the auditor
//! sees only the **final model**: canary i is scored by the negative cross-entropy of its
//! wrong label (a memorised mislabeled example is predicted with its wrong label). See
//! [`black_box`]; its bound is weaker than the white-box one (one iterate instead of all, and
//! a canary's influence has to survive the rest of training), so a small bound says even less.
//!
//! # Choosing k honestly
//! The paper tries several (k₊, k₋) and reports the best bound, which is optimistic (a
//! multiple-comparison choice made after seeing the scores). Here k₊ = k₋ = k is either fixed in
//! advance ([`GuessRule::Fixed`]) or taken from a list fixed in advance with a Bonferroni
//! correction ([`GuessRule::Bonferroni`], [`GuessRule::Auto`]): each of the K candidates is
//! tested at level (1 − confidence)/K, so the largest of their bounds holds at the stated
//! confidence (union bound).

use crate::accounting::Method;
use crate::data::{Dataset, Split};
use crate::engine::{NoiseSpec, PrivacyConfig, PrivacyEngine};
use crate::nn::{models, Loss, Sequential};
use crate::ops::Clipping;
use crate::optim::SgdConfig;
use crate::rng::{Purpose, RandomBits, Rng, RunKeys};
use crate::sampling::PoissonSampler;
use crate::train::{DataSource, ModelKind, OptimizerKind, TrainConfig};
use crate::{Buffer, Device, Error, Layout, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Instant;

/// The p-value of observing at least `correct` right guesses out of `guesses` under the null
/// hypothesis "the run is (ε, δ)-DP" (Steinke, Nasr & Jagielski 2023: their theorem for
/// (ε, δ)-DP, computed as their published `p_value_DP_audit` does): with q = e^ε/(1 + e^ε) and
/// W' ~ Binomial(r, q),
///
/// ```text
/// p = P[W' ≥ v] + 2·m·δ · max_{1 ≤ i ≤ v} P[v − i ≤ W' < v] / i      (capped at 1)
/// ```
///
/// δ = 0 gives the pure-DP test, a Binomial tail.
pub fn p_value(m: usize, guesses: usize, correct: usize, epsilon: f64, delta: f64) -> Result<f64> {
    check_counts(m, guesses, correct)?;
    if !(epsilon.is_finite() && epsilon >= 0.0) {
        return Err(Error::invalid("epsilon", epsilon, "finite and >= 0"));
    }
    check_delta(delta)?;
    Ok(p_value_unchecked(m, guesses, correct, epsilon, delta))
}

fn p_value_unchecked(m: usize, r: usize, v: usize, eps: f64, delta: f64) -> f64 {
    // ln q and ln(1 − q) for q = 1/(1 + e^{−ε}), accurate for large ε.
    let ln_q = -(-eps).exp().ln_1p();
    let ln_1q = -eps + ln_q;
    let lg_r1 = libm::lgamma(r as f64 + 1.0);
    let pmf = |k: usize| -> f64 {
        let ln_c = lg_r1 - libm::lgamma(k as f64 + 1.0) - libm::lgamma((r - k) as f64 + 1.0);
        (ln_c + k as f64 * ln_q + (r - k) as f64 * ln_1q).exp()
    };
    let beta: f64 = (v..=r).map(pmf).sum();
    if delta == 0.0 {
        return beta.min(1.0);
    }
    let (mut alpha, mut sum) = (0f64, 0f64);
    for i in 1..=v {
        sum += pmf(v - i);
        alpha = alpha.max(sum / i as f64);
    }
    (beta + 2.0 * m as f64 * delta * alpha).min(1.0)
}

/// The one-run ε lower bound (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1)
/// Training Run", NeurIPS 2023, their (ε, δ) theorem with its δ term, by the authors'
/// `p_value_DP_audit` procedure): the largest ε such that `correct` right guesses out of `guesses` (among `m`
/// canaries, each included with probability ½) would have p-value ([`p_value`]) below
/// 1 − `confidence` if the run were (ε, δ)-DP. Found by bisection on ε (to 1e-9); 0 when even
/// ε = 0 is not rejected.
///
/// # What it proves
/// At `confidence` = 0.95: if the mechanism *as run* were (ε, δ)-DP for the returned ε, the
/// observed number of correct guesses would have had probability < 5%. It is a lower bound on
/// the run's ε, not an estimate of it.
///
/// # What it does not
/// A bound below the accountant's ε does not prove the accountant's claim: weak canaries or a
/// weak score give small bounds on broken runs too. Only a bound *above* the claim is evidence
/// (of a bug in the implementation or in the analysis).
///
/// # Errors
/// `m` < 1, `guesses` > `m`, `correct` > `guesses`, δ ∉ [0, 1), confidence ∉ (0, 1).
pub fn epsilon_lower_bound(
    m: usize,
    guesses: usize,
    correct: usize,
    delta: f64,
    confidence: f64,
) -> Result<f64> {
    check_counts(m, guesses, correct)?;
    check_delta(delta)?;
    check_confidence(confidence)?;
    let level = 1.0 - confidence;
    let p = |eps: f64| p_value_unchecked(m, guesses, correct, eps, delta);
    if p(0.0) >= level {
        return Ok(0.0);
    }
    // Invariant: p(lo) < level ≤ p(hi). p(ε) → 1 as ε → ∞ whenever v ≤ r (q → 1), so the
    // doubling ends; 1e4 is far beyond anything m < 2^64 guesses can certify.
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while p(hi) < level {
        lo = hi;
        hi *= 2.0;
        if hi > 1e4 {
            return Ok(lo);
        }
    }
    while hi - lo > 1e-9 {
        let mid = 0.5 * (lo + hi);
        if p(mid) < level {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

fn check_counts(m: usize, guesses: usize, correct: usize) -> Result<()> {
    if m == 0 {
        return Err(Error::invalid(
            "canaries",
            m,
            ">= 1 (the audit needs canaries; the paper uses 1000 or more)",
        ));
    }
    if guesses > m {
        return Err(Error::invalid(
            "guesses",
            guesses,
            format!("<= the number of canaries m = {m} (one guess per canary at most)"),
        ));
    }
    if correct > guesses {
        return Err(Error::invalid(
            "correct",
            correct,
            format!("<= the number of guesses r = {guesses}"),
        ));
    }
    Ok(())
}

fn check_delta(delta: f64) -> Result<()> {
    if delta.is_finite() && (0.0..1.0).contains(&delta) {
        Ok(())
    } else {
        Err(Error::invalid(
            "delta",
            delta,
            "in [0, 1) (the δ of the (ε, δ) claim under test, e.g. 1e-5)",
        ))
    }
}

fn check_confidence(confidence: f64) -> Result<()> {
    if confidence > 0.0 && confidence < 1.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "confidence",
            confidence,
            "in (0, 1), e.g. 0.95 (the bound then fails with probability at most 5%)",
        ))
    }
}

/// How many canaries to guess on: k "in" (highest scores) and k "out" (lowest), r = 2k.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuessRule {
    /// The candidates k ∈ {m/50, m/20, m/10, m/4, m/2} (those ≥ 1, distinct), Bonferroni-
    /// corrected as [`GuessRule::Bonferroni`].
    Auto,
    /// Exactly this k, fixed before the run (no correction needed).
    Fixed(usize),
    /// Each k in the list, fixed before the run; each bound at level (1 − confidence)/K, the
    /// largest reported (valid at the stated confidence by the union bound).
    Bonferroni(Vec<usize>),
}

impl GuessRule {
    /// The candidate k values for `m` canaries (checked: 1 ≤ k, 2k ≤ m).
    pub fn candidates(&self, m: usize) -> Result<Vec<usize>> {
        let ks = match self {
            GuessRule::Auto => {
                let mut v: Vec<usize> = [50, 20, 10, 4, 2]
                    .iter()
                    .map(|d| m / d)
                    .filter(|&k| k >= 1)
                    .collect();
                v.dedup();
                if v.is_empty() {
                    v.push(m / 2);
                }
                v
            }
            GuessRule::Fixed(k) => vec![*k],
            GuessRule::Bonferroni(v) => v.clone(),
        };
        if ks.is_empty() {
            return Err(Error::invalid(
                "guesses",
                "an empty list",
                "at least one k (guess k canaries in and k out)",
            ));
        }
        for &k in &ks {
            if k == 0 || 2 * k > m {
                return Err(Error::invalid(
                    "guesses (k per side)",
                    k,
                    format!("in 1..={} (k in and k out among m = {m} canaries)", m / 2),
                ));
            }
        }
        Ok(ks)
    }
}

/// The audit's own settings (the run's are a [`PrivacyConfig`] or a [`TrainConfig`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditConfig {
    /// m, the number of canaries (each included with probability ½).
    pub canaries: usize,
    /// The L2 norm of each Dirac canary; `None`: the clipping bound's sensitivity C (a canary
    /// of norm C passes clipping unchanged; a larger one is clipped by a correct engine).
    pub canary_norm: Option<f32>,
    /// Confidence of the bound, in (0, 1) (e.g. 0.95).
    pub confidence: f64,
    /// Which k to guess on.
    pub guesses: GuessRule,
    /// Seed of the audit's own draws (canary coordinates, secret bits, canary sampling).
    pub seed: u64,
}

impl AuditConfig {
    /// m canaries, norm C, 95% confidence, [`GuessRule::Auto`].
    pub fn new(canaries: usize, seed: u64) -> Self {
        AuditConfig {
            canaries,
            canary_norm: None,
            confidence: 0.95,
            guesses: GuessRule::Auto,
            seed,
        }
    }

    /// Checks the settings against a model of `params` parameters, before anything runs.
    pub fn validate(&self, params: usize) -> Result<()> {
        self.validate_guessing()?;
        if self.canaries > params {
            return Err(Error::invalid(
                "canaries",
                self.canaries,
                format!(
                    "<= the model's {params} parameters (each Dirac canary needs a coordinate of its own): use fewer canaries or a larger model"
                ),
            ));
        }
        if let Some(c) = self.canary_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::invalid("canary_norm", c, "finite and > 0"));
            }
        }
        Ok(())
    }

    /// Checks the settings of a black-box audit of a training set of `n` examples and a batch
    /// size of `batch` (the training set without any canary must still hold a batch).
    pub fn validate_black_box(&self, n: usize, batch: usize) -> Result<()> {
        self.validate_guessing()?;
        if self.canaries > n {
            return Err(Error::invalid(
                "canaries",
                self.canaries,
                format!(
                    "<= the {n} training examples (each input canary is a training example taken out of the set): use fewer canaries or more data"
                ),
            ));
        }
        if batch > n - self.canaries {
            return Err(Error::invalid(
                "batch_size",
                batch,
                format!(
                    "<= {} (the {n} training examples less the {} canaries): use a smaller batch or fewer canaries",
                    n - self.canaries,
                    self.canaries
                ),
            ));
        }
        if let Some(c) = self.canary_norm {
            return Err(Error::invalid(
                "canary_norm",
                c,
                "absent in a black-box audit (its canaries are mislabeled examples, not gradients; the norm is for --white-box)",
            ));
        }
        Ok(())
    }

    /// The checks every audit shares: m, the confidence and the guess rule.
    fn validate_guessing(&self) -> Result<()> {
        if self.canaries < 2 {
            return Err(Error::invalid(
                "canaries",
                self.canaries,
                ">= 2 (k guessed in and k out need 2k <= m; the paper uses 1000 or more)",
            ));
        }
        check_confidence(self.confidence)?;
        self.guesses.candidates(self.canaries)?;
        Ok(())
    }
}

/// One candidate k's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuessOutcome {
    /// k guessed "in" and k guessed "out".
    pub k: usize,
    /// Correct guesses out of 2k.
    pub correct: usize,
    /// ε lower bound at level (1 − confidence)/K.
    pub epsilon_lower_bound: f64,
}

/// Which audit produced a report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditKind {
    /// Dirac gradient canaries, every iterate seen ([`white_box`], [`white_box_null_model`]).
    #[default]
    WhiteBox,
    /// Mislabeled input canaries, only the final model seen ([`black_box`]).
    BlackBox,
}

/// What an audit found, beside what the accountant claims.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    /// Which audit ran (white-box when absent from older JSON).
    #[serde(default)]
    pub kind: AuditKind,
    /// The setting, in words.
    pub setting: String,
    /// The training set size N the run sampled from and was accounted for (the null model's
    /// nominal N; in a black-box audit N' = N − m + #in, which depends on the secret bits).
    #[serde(default)]
    pub dataset_size: usize,
    /// m.
    pub canaries: usize,
    /// Canaries whose secret bit put them in the run.
    pub included: usize,
    /// r = 2k of the reported candidate.
    pub guesses: usize,
    /// Correct guesses of the reported candidate.
    pub correct: usize,
    /// The confidence of the bound.
    pub confidence: f64,
    /// δ of the run (and of the test).
    pub delta: f64,
    /// The ε lower bound (the largest over the candidates, Bonferroni-corrected).
    pub epsilon_lower_bound: f64,
    /// The accountant's ε for the run as executed (RDP).
    pub epsilon_rdp: f64,
    /// The accountant's ε for the run as executed (PRV, an upper bound); `None` where the PRV
    /// accountant cannot evaluate the run (e.g. ε in the tens: its FFT would be too large).
    pub epsilon_prv: Option<f64>,
    /// σ of the engine.
    pub noise_multiplier: f64,
    /// q.
    pub sample_rate: f64,
    /// Steps taken.
    pub steps: u64,
    /// Every candidate k.
    pub candidates: Vec<GuessOutcome>,
    /// Wall time (s).
    pub seconds: f64,
}

impl AuditReport {
    /// The smallest ε the accountants give for the run (RDP, and PRV where it applies): the
    /// claim a sound implementation's lower bound stays under.
    pub fn accountant_epsilon(&self) -> f64 {
        self.epsilon_prv
            .map_or(self.epsilon_rdp, |p| p.min(self.epsilon_rdp))
    }
}

/// Purposes of the audit's random streams.
const PURPOSE_COORDINATES: u64 = 1;
const PURPOSE_SECRETS: u64 = 2;
const PURPOSE_SAMPLING: u64 = 3;
/// Black-box: which training examples become canaries.
const PURPOSE_BB_CANARIES: u64 = 4;
/// Black-box: each canary's wrong label.
const PURPOSE_BB_LABELS: u64 = 5;
/// Black-box: the secret bits (which canaries go back into the training set).
const PURPOSE_BB_SECRETS: u64 = 6;

/// Every random draw the audit itself makes comes from here: stream `purpose` of the
/// [`Purpose::Audit`] key of the audit seed ([`crate::rng`]): a key no part of training
/// (initialisation, Poisson sampling, noise) uses, whatever seeds the two are given.
fn audit_rng(seed: u64, purpose: u64) -> Rng {
    RunKeys::seeded(seed).key(Purpose::Audit).rng(purpose)
}

/// m distinct coordinates of 0..p (partial Fisher–Yates over a sparse permutation).
fn distinct_coordinates(rng: &mut Rng, m: usize, p: usize) -> Vec<usize> {
    let mut swapped: HashMap<usize, usize> = HashMap::new();
    (0..m)
        .map(|i| {
            let j = i + rng.next_below((p - i) as u64) as usize;
            let at_j = *swapped.get(&j).unwrap_or(&j);
            let at_i = *swapped.get(&i).unwrap_or(&i);
            swapped.insert(j, at_i);
            at_j
        })
        .collect()
}

/// The Dirac canaries of one white-box audit and their running scores.
struct Canaries {
    coords: Vec<usize>,
    included: Vec<bool>,
    norm: f32,
    params: usize,
    threshold: u64,
    sampling: Rng,
    draws: Vec<u64>,
    rows: Vec<f32>,
    prev: Vec<f32>,
    scores: Vec<f64>,
    /// The score model: sampling rate, expected lot size E and the noise std σ·C of the sum.
    q: f64,
    expected_batch: f64,
    noise_std: f64,
}

impl Canaries {
    fn new(
        cfg: &AuditConfig,
        params: usize,
        clip_sensitivity: f32,
        engine: &PrivacyEngine,
    ) -> Self {
        let q = engine.config().sample_rate;
        let m = cfg.canaries;
        let coords = distinct_coordinates(&mut audit_rng(cfg.seed, PURPOSE_COORDINATES), m, params);
        let mut secrets = audit_rng(cfg.seed, PURPOSE_SECRETS);
        let included = (0..m).map(|_| secrets.next_u32() & 1 == 1).collect();
        Canaries {
            coords,
            included,
            norm: cfg.canary_norm.unwrap_or(clip_sensitivity),
            params,
            // As PoissonSampler: included when a uniform 64-bit draw is below q·2^64.
            threshold: if q >= 1.0 {
                u64::MAX
            } else {
                (q * 2f64.powi(64)) as u64
            },
            sampling: audit_rng(cfg.seed, PURPOSE_SAMPLING),
            draws: vec![0; m],
            rows: Vec::new(),
            prev: vec![0.0; m],
            scores: vec![0.0; m],
            q,
            expected_batch: engine.config().expected_batch_size(),
            noise_std: engine.noise_multiplier() * clip_sensitivity as f64,
        }
    }

    /// Poisson-samples the included canaries and adds the sampled ones to the engine's lot.
    fn accumulate(&mut self, engine: &mut PrivacyEngine) -> Result<()> {
        // One draw per canary per step, included or not (the stream does not depend on S).
        self.sampling.fill_u64(&mut self.draws);
        let always = self.threshold == u64::MAX;
        let p = self.params;
        self.rows.clear();
        let mut k = 0;
        for i in 0..self.coords.len() {
            if self.included[i] && (always || self.draws[i] < self.threshold) {
                self.rows.resize((k + 1) * p, 0.0);
                self.rows[k * p + self.coords[i]] = self.norm;
                k += 1;
            }
        }
        if k > 0 {
            let rows = Buffer::from_slice(engine.device(), &self.rows)?;
            engine.accumulate(&rows, k)?;
        }
        Ok(())
    }

    /// Records θ_t at the canaries' coordinates (before a step).
    fn record(&mut self, params: &Buffer<f32>) -> Result<()> {
        with_host(params, |theta| {
            for (p, &j) in self.prev.iter_mut().zip(&self.coords) {
                *p = theta[j];
            }
        })
    }

    /// Adds step t's evidence to each canary's score (after a step with learning rate `lr`).
    ///
    /// y = (θ_t − θ_{t+1})[j]·E/lr is the coordinate of the noisy sum: N(0, s²) (s = σ·C) when
    /// the canary is out, and the mixture (1 − q)·N(0, s²) + q·N(c, s²) when it is in (exactly
    /// so in the null model; with data, the data's own gradient is added to both, which the
    /// auditor ignores). The score is the log-likelihood ratio of "in" against "out",
    /// Σ_t ln(1 − q + q·e^{(c·y − c²/2)/s²}) — the Neyman–Pearson statistic for one canary,
    /// much stronger than Σ_t y when q is small (most steps carry no canary). With s = 0 the
    /// score is Σ_t y. Any score gives a valid bound; a stronger one gives a tighter one.
    fn score(&mut self, params: &Buffer<f32>, lr: f64) -> Result<()> {
        let (q, c, s) = (self.q, self.norm as f64, self.noise_std);
        let scale = self.expected_batch / lr;
        with_host(params, |theta| {
            for ((sc, &p), &j) in self.scores.iter_mut().zip(&self.prev).zip(&self.coords) {
                let y = (p as f64 - theta[j] as f64) * scale;
                *sc += if s > 0.0 {
                    let a = (c * y - 0.5 * c * c) / (s * s);
                    if a > 0.0 {
                        a + (q + (1.0 - q) * (-a).exp()).ln()
                    } else {
                        (q * a.exp_m1()).ln_1p()
                    }
                } else {
                    y
                };
            }
        })
    }

    fn report(
        &self,
        setting: String,
        cfg: &AuditConfig,
        engine: &PrivacyEngine,
        t0: Instant,
    ) -> Result<AuditReport> {
        build_report(
            AuditKind::WhiteBox,
            setting,
            cfg,
            &self.scores,
            &self.included,
            engine,
            t0,
        )
    }
}

/// Guesses for each candidate k (the k highest scores "in", the k lowest "out") and the
/// Bonferroni-corrected bounds; returns every candidate and the best one.
fn judge(
    scores: &[f64],
    included: &[bool],
    cfg: &AuditConfig,
    delta: f64,
) -> Result<(Vec<GuessOutcome>, GuessOutcome)> {
    let m = scores.len();
    let ks = cfg.guesses.candidates(m)?;
    let mut order: Vec<usize> = (0..m).collect();
    // Highest score first; ties by index (deterministic).
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let level = (1.0 - cfg.confidence) / ks.len() as f64;
    let outcomes = ks
        .iter()
        .map(|&k| {
            let correct = order[..k].iter().filter(|&&i| included[i]).count()
                + order[m - k..].iter().filter(|&&i| !included[i]).count();
            Ok(GuessOutcome {
                k,
                correct,
                epsilon_lower_bound: epsilon_lower_bound(m, 2 * k, correct, delta, 1.0 - level)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let best = outcomes
        .iter()
        .fold(None::<&GuessOutcome>, |b, o| match b {
            Some(b) if b.epsilon_lower_bound >= o.epsilon_lower_bound => Some(b),
            _ => Some(o),
        })
        .cloned()
        .ok_or_else(|| Error::invalid("guesses", "an empty list", "at least one k"))?;
    Ok((outcomes, best))
}

/// The report of an audit whose canaries scored `scores` (secret bits `included`), beside the
/// accountant's ε for `engine`'s run.
fn build_report(
    kind: AuditKind,
    setting: String,
    cfg: &AuditConfig,
    scores: &[f64],
    included: &[bool],
    engine: &PrivacyEngine,
    t0: Instant,
) -> Result<AuditReport> {
    let delta = engine.config().delta;
    let (candidates, best) = judge(scores, included, cfg, delta)?;
    Ok(AuditReport {
        kind,
        setting,
        dataset_size: engine.config().dataset_size,
        canaries: cfg.canaries,
        included: included.iter().filter(|&&b| b).count(),
        guesses: 2 * best.k,
        correct: best.correct,
        confidence: cfg.confidence,
        delta,
        epsilon_lower_bound: best.epsilon_lower_bound,
        epsilon_rdp: engine.epsilon_with(Method::Rdp)?,
        epsilon_prv: engine.epsilon_with(Method::Prv).ok(),
        noise_multiplier: engine.noise_multiplier(),
        sample_rate: engine.config().sample_rate,
        steps: engine.steps(),
        candidates,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Runs `f` on the host copy of `b` (a CUDA buffer comes to the host).
fn with_host(b: &Buffer<f32>, f: impl FnOnce(&[f32])) -> Result<()> {
    match b.as_slice() {
        Some(s) => f(s),
        None => f(&b.to_vec()?),
    }
    Ok(())
}

/// The white-box audit on a *null model*: P parameters and no data at all — each lot holds
/// only the sampled canaries. `privacy` is the engine's configuration as run (σ or a target ε,
/// δ, clipping, q, planned steps — every planned step is taken; `dataset_size` only sets the
/// divisor q·N); `lr` the plain-SGD learning rate. Fast, and the cleanest setting for the
/// white-box bound: nothing but the noise hides a canary.
pub fn white_box_null_model(
    params: usize,
    privacy: PrivacyConfig,
    lr: f32,
    audit: &AuditConfig,
    device: &Device,
    seed: u64,
) -> Result<AuditReport> {
    if params == 0 {
        return Err(Error::invalid(
            "null_model",
            0,
            ">= 1 parameters (and at least one per canary)",
        ));
    }
    audit.validate(params)?;
    SgdConfig::new(lr).validate()?;
    privacy.validate()?;
    let t0 = Instant::now();
    let steps = privacy.planned_steps;
    let sens = privacy.clipping.sensitivity();
    let mut engine = PrivacyEngine::new(privacy, Layout::flat(params), device, Some(seed))?;
    let mut theta = Buffer::<f32>::zeros(device, params)?;
    let mut canaries = Canaries::new(audit, params, sens, &engine);
    let sgd = SgdConfig::new(lr);
    for _ in 0..steps {
        canaries.record(&theta)?;
        canaries.accumulate(&mut engine)?;
        engine.step_sgd(&mut theta, None, &sgd)?;
        canaries.score(&theta, lr as f64)?;
    }
    canaries.report(
        format!("white-box, Dirac gradient canaries, null model (P = {params}, no data)"),
        audit,
        &engine,
        t0,
    )
}

/// The white-box audit of a real training run: `cfg` as for `dpsgd train` (private, plain SGD
/// without momentum, so each update is −lr·noisy mean gradient), with Dirac gradient canaries
/// added to the lots beside the data's per-sample gradients. `on_step(step, total)` is called
/// after every step (progress bars).
pub fn white_box(
    cfg: &TrainConfig,
    audit: &AuditConfig,
    device: &Device,
    on_step: impl FnMut(u64, u64),
) -> Result<AuditReport> {
    let noise = check_real_run(cfg)?;
    let t0 = Instant::now();
    let train = load_train(cfg)?;
    let n = train.len();
    if cfg.batch_size > n {
        return Err(Error::invalid(
            "batch_size",
            cfg.batch_size,
            format!("<= the training set size {n}"),
        ));
    }
    // The run's keys, as the trainer derives them (one per purpose; the audit's own draws use
    // the audit seed's Purpose::Audit key).
    let keys = RunKeys::from_seed(cfg.seed)?;
    let model = build_model(cfg, device, &keys)?;
    let p = model.num_params();
    audit.validate(p)?;
    let mut run = RealRun::new(cfg, noise, model, n, device, &keys)?;
    let sens = run.engine.config().clipping.sensitivity();
    let mut canaries = Canaries::new(audit, p, sens, &run.engine);
    run.train(cfg, &train, Some(&mut canaries), on_step)?;
    canaries.report(
        format!(
            "white-box, Dirac gradient canaries, {:?} on {:?} (P = {p}, N = {n})",
            cfg.model, cfg.data
        ),
        audit,
        &run.engine,
        t0,
    )
}

/// The black-box audit with input canaries (Steinke, Nasr & Jagielski, "Privacy Auditing with
/// One (1) Training Run", NeurIPS 2023, arXiv:2305.08846: their black-box setting, where only
/// the final model is observed).
///
/// m = `audit.canaries` examples of the configured training set (N examples) are drawn as
/// canaries and taken out; each gets a wrong label drawn uniformly from the other classes, and
/// goes back into the training set with that label when its secret bit S_i (probability ½)
/// says so. `cfg` (private, plain SGD without momentum, as for [`white_box`]) then trains the
/// model through the same DP-SGD engine path as [`white_box`] on those N' = N − m + Σ S_i
/// examples: Poisson rate q = batch / N', steps = epochs × round(1/q), and the accountant's ε
/// is that of *this* run (q and N' as sampled; N' depends on the secret bits). Only the final
/// parameters are then looked at: canary i is scored by log softmax(f(x_i))[wrong label] (the
/// negative cross-entropy of its wrong label), and the guesses and the Bonferroni-corrected
/// bound are those of [`white_box`]. Every draw of the audit (canaries, labels, bits) comes
/// from the audit seed's own key; training (initialisation, sampling, noise) uses `cfg.seed`.
///
/// # What the bound proves
/// At `audit.confidence`: if releasing the *final model* of this run were (ε, δ)-DP with
/// respect to each canary example, the observed number of correct guesses would have had
/// probability below 1 − confidence. So the returned bound is a lower bound on the ε of the
/// final-model release of the run as executed, at the training set size N' it sampled from.
/// It is weaker than the white-box bound: the auditor sees one iterate, not every update, and
/// a canary's trace has to survive the steps after it (DP-SGD's ε covers the whole sequence of
/// iterates, which leaks at least as much as the last). A bound above the accountant's ε is
/// evidence of a bug; a bound below it (the usual case for a correct run, often 0) says
/// nothing about the claim.
///
/// # Errors
/// [`Error::InvalidParameter`] for a non-private run, an optimizer other than plain SGD,
/// fewer than 2 canaries, more canaries than training examples, a batch larger than the
/// training set without the canaries, fewer than 2 classes, a canary norm (white-box only),
/// and bad confidence or guesses; errors of loading the data and training otherwise.
pub fn black_box(
    cfg: &TrainConfig,
    audit: &AuditConfig,
    device: &Device,
    on_step: impl FnMut(u64, u64),
) -> Result<AuditReport> {
    let noise = check_real_run(cfg)?;
    let t0 = Instant::now();
    let full = load_train(cfg)?;
    let n = full.len();
    audit.validate_black_box(n, cfg.batch_size)?;
    let classes = full.classes();
    if classes < 2 {
        return Err(Error::invalid(
            "classes",
            classes,
            ">= 2 (a black-box canary needs a wrong label)",
        ));
    }
    let m = audit.canaries;
    // The canaries: m distinct examples, a wrong label each, a secret bit each.
    let picked = distinct_coordinates(&mut audit_rng(audit.seed, PURPOSE_BB_CANARIES), m, n);
    let mut labels_rng = audit_rng(audit.seed, PURPOSE_BB_LABELS);
    let wrong: Vec<u32> = picked
        .iter()
        .map(|&i| {
            let y = full.labels()[i] as u64;
            ((y + 1 + labels_rng.next_below(classes as u64 - 1)) % classes as u64) as u32
        })
        .collect();
    let mut secrets = audit_rng(audit.seed, PURPOSE_BB_SECRETS);
    let included: Vec<bool> = (0..m).map(|_| secrets.next_u32() & 1 == 1).collect();
    // The training set: every non-canary example in order, then the included canaries with
    // their wrong labels.
    let mut is_canary = vec![false; n];
    for &i in &picked {
        is_canary[i] = true;
    }
    let mut indices: Vec<usize> = (0..n).filter(|&i| !is_canary[i]).collect();
    let kept = indices.len();
    indices.extend(
        picked
            .iter()
            .zip(&included)
            .filter(|(_, &s)| s)
            .map(|(&i, _)| i),
    );
    let n_run = indices.len();
    let ex = full.example_len();
    let mut images = vec![0f32; n_run * ex];
    let mut labels = vec![0u32; n_run];
    full.gather(&indices, &mut images, &mut labels)?;
    let mut tail = labels[kept..].iter_mut();
    for (&w, _) in wrong.iter().zip(&included).filter(|(_, &s)| s) {
        if let Some(l) = tail.next() {
            *l = w;
        }
    }
    let train = Dataset::new(
        images,
        labels,
        full.channels(),
        full.height(),
        full.width(),
        classes,
    )?;
    let mut canary_x = vec![0f32; m * ex];
    let mut canary_true = vec![0u32; m];
    full.gather(&picked, &mut canary_x, &mut canary_true)?;
    drop(full);
    // The run's keys, as the trainer derives them (one per purpose; the audit's own draws use
    // the audit seed's Purpose::Audit key).
    let keys = RunKeys::from_seed(cfg.seed)?;
    let model = build_model(cfg, device, &keys)?;
    let p = model.num_params();
    let mut run = RealRun::new(cfg, noise, model, n_run, device, &keys)?;
    run.train(cfg, &train, None, on_step)?;
    // The black box: only the final model, on the canaries with their wrong labels.
    let scores = wrong_label_log_probs(&run.model, cfg.physical_batch, &canary_x, &wrong)?;
    build_report(
        AuditKind::BlackBox,
        format!(
            "black-box, mislabeled input canaries, final model only, {:?} on {:?} (P = {p}, N' = {n_run}: {kept} examples + {} of {m} canaries)",
            cfg.model,
            cfg.data,
            n_run - kept
        ),
        audit,
        &scores,
        &included,
        &run.engine,
        t0,
    )
}

/// log softmax(f(x_i))[y_i] under `model` for each example of `x` (f64; higher: the model
/// puts more weight on label y_i).
fn wrong_label_log_probs(
    model: &Sequential,
    physical_batch: usize,
    x: &[f32],
    y: &[u32],
) -> Result<Vec<f64>> {
    let m = y.len();
    let ex = x.len() / m.max(1);
    let mut ws = model.workspace(physical_batch.min(m).max(1))?;
    let mut scores = Vec::with_capacity(m);
    for (xs, ys) in x.chunks(physical_batch * ex).zip(y.chunks(physical_batch)) {
        model.forward_slice(&mut ws, xs)?;
        let out = ws.output_vec()?;
        let classes = out.len() / ys.len();
        for (row, &l) in out.chunks(classes).zip(ys) {
            let mx = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            let lse = mx + row.iter().map(|&v| (v as f64 - mx).exp()).sum::<f64>().ln();
            let s = row[l as usize] as f64 - lse;
            if !s.is_finite() {
                return Err(Error::NonFinite {
                    what: "canary score",
                    detail: format!(
                        "log-probability {s} of a canary's label; lower the learning rate"
                    ),
                });
            }
            scores.push(s);
        }
    }
    Ok(scores)
}

/// The noise of a real-model audit's run, after checking that it can be audited: private, and
/// plain SGD without momentum (the path the audits train through).
fn check_real_run(cfg: &TrainConfig) -> Result<NoiseSpec> {
    cfg.validate()?;
    let Some(noise) = cfg.noise else {
        return Err(Error::invalid(
            "noise",
            "none (non-private)",
            "a private run (--epsilon or --noise-multiplier): a non-private run has no ε to audit",
        ));
    };
    match cfg.optimizer {
        OptimizerKind::Sgd { momentum: 0.0 } => Ok(noise),
        o => Err(Error::invalid(
            "optimizer",
            format!("{o:?}"),
            "plain SGD without momentum (--optimizer sgd --momentum 0): the audits train through the plain-SGD path (the white-box score reads each update as −lr × the noisy mean gradient)",
        )),
    }
}

/// The configured training set.
fn load_train(cfg: &TrainConfig) -> Result<Dataset> {
    match &cfg.data {
        DataSource::Idx { kind, dir } => {
            let dir = dir
                .clone()
                .unwrap_or_else(|| kind.default_dir().to_path_buf());
            Dataset::load(*kind, &dir, Split::Train)
        }
        DataSource::Synthetic { train, .. } => Dataset::synthetic(*train, 1),
    }
}

/// The configured model, initialised from the run's model-initialisation key.
fn build_model(cfg: &TrainConfig, device: &Device, keys: &RunKeys) -> Result<Sequential> {
    let seed = keys.key(Purpose::ModelInit).derive_u64();
    match cfg.model {
        ModelKind::SampleConvnet => models::sample_conv_net(device, seed),
        ModelKind::TanhConvnet => models::sample_conv_net_tanh(device, seed),
        ModelKind::ScatterLinear | ModelKind::ScatterCnn => Err(crate::Error::invalid(
            "model",
            "a scattering model",
            "sample-convnet or tanh-convnet (the audits train on pixels)",
        )),
    }
}

/// A real model's DP-SGD run on a training set of `n` examples, as the audits execute it.
struct RealRun {
    model: Sequential,
    engine: PrivacyEngine,
    sampler: PoissonSampler,
    steps: u64,
}

impl RealRun {
    fn new(
        cfg: &TrainConfig,
        noise: NoiseSpec,
        model: Sequential,
        n: usize,
        device: &Device,
        keys: &RunKeys,
    ) -> Result<Self> {
        let q = cfg.batch_size as f64 / n as f64;
        let sampler = PoissonSampler::with_key(n, q, keys.key(Purpose::Sampling))?;
        let steps = cfg.epochs * sampler.steps_per_epoch();
        let privacy = PrivacyConfig {
            noise,
            delta: cfg.delta,
            clipping: Clipping::Flat(cfg.max_grad_norm),
            sample_rate: q,
            dataset_size: n,
            planned_steps: steps,
            accountant: cfg.accountant,
        };
        let engine = PrivacyEngine::with_keys(privacy, model.layout().clone(), device, keys)?;
        Ok(RealRun {
            model,
            engine,
            sampler,
            steps,
        })
    }

    /// Every planned step: the sampled lot's clipped per-sample gradients (and the sampled
    /// Dirac canaries, white-box), noise, and a plain-SGD step.
    fn train(
        &mut self,
        cfg: &TrainConfig,
        train: &Dataset,
        mut canaries: Option<&mut Canaries>,
        mut on_step: impl FnMut(u64, u64),
    ) -> Result<()> {
        let steps = self.steps;
        let mut ws = self.model.workspace(cfg.physical_batch)?;
        let ex = train.example_len();
        let mut xb = vec![0f32; cfg.physical_batch * ex];
        let mut yb = vec![0u32; cfg.physical_batch];
        let mut lot = Vec::new();
        for t in 0..steps {
            self.sampler.sample_into(&mut lot);
            for chunk in lot.chunks(cfg.physical_batch) {
                let b = chunk.len();
                train.gather(chunk, &mut xb[..b * ex], &mut yb[..b])?;
                let l = self.engine.accumulate_batch(
                    &self.model,
                    &mut ws,
                    &xb[..b * ex],
                    Loss::CrossEntropy(&yb[..b]),
                )?;
                if !l.is_finite() {
                    return Err(Error::NonFinite {
                        what: "training loss",
                        detail: format!("loss {l} at step {t}; lower the learning rate"),
                    });
                }
            }
            if let Some(c) = canaries.as_deref_mut() {
                c.accumulate(&mut self.engine)?;
                c.record(self.model.params())?;
            }
            let lr = cfg.lr * cfg.lr_schedule.factor(t, steps);
            self.engine
                .step_sgd(self.model.params_mut(), None, &SgdConfig::new(lr))?;
            if let Some(c) = canaries.as_deref_mut() {
                c.score(self.model.params(), lr as f64)?;
            }
            on_step(t + 1, steps);
        }
        Ok(())
    }
}
