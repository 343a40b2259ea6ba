//! The toy-database lessons of issue 13, as functions of a seed that return their numbers.
//!
//! Shared by `examples/toy_database.rs` (which prints them) and `tests/toy_database.rs` (which
//! checks them); it uses only dpsgd's public API. Randomness: the "private" databases come from
//! `Purpose::SyntheticData` streams, every mechanism's noise from `Purpose::Mechanism` streams,
//! one stream id per lesson (and per re-draw where a lesson draws several databases), so no two
//! uses share a stream.

use dpsgd::accounting::composition::{
    advanced_composition, basic_composition, laplace_epsilon_rdp, optimal_composition_epsilon,
};
use dpsgd::accounting::default_orders as rdp_orders;
use dpsgd::mechanisms::pate::{
    default_orders as pate_orders, lnmax, lnmax_epsilon, moments_up_to, LnmaxMomentsAccountant,
    LnmaxRdpAccountant,
};
use dpsgd::mechanisms::sensitivity::local_sensitivity;
use dpsgd::mechanisms::{Laplace, TwoCoinResponse};
use dpsgd::rng::{Purpose, RandomBits, Rng, RunKeys};
use dpsgd::{Error, Result};
use serde::Serialize;

/// The seed the example uses when none is given.
pub const DEFAULT_SEED: u64 = 4;

/// Rows of the lesson-1 database (the course's 5 000).
pub const N_ROWS: usize = 5000;

/// One-bit database rows: `true` with probability ½.
pub fn draw_database(n: usize, rng: &mut impl RandomBits) -> Vec<bool> {
    (0..n).map(|_| rng.next_u32() & 1 == 1).collect()
}

/// The parallel database that lacks row `i` (`None` if there is no row `i`).
pub fn parallel_database(db: &[bool], i: usize) -> Option<Vec<bool>> {
    if i >= db.len() {
        return None;
    }
    let mut p = Vec::with_capacity(db.len() - 1);
    p.extend_from_slice(&db[..i]);
    p.extend_from_slice(&db[i + 1..]);
    Some(p)
}

/// Number of `true` rows.
pub fn sum(db: &[bool]) -> f64 {
    db.iter().filter(|&&b| b).count() as f64
}

/// The mean (0 for the empty database, so that the query is defined on every database).
pub fn mean(db: &[bool]) -> f64 {
    if db.is_empty() {
        0.0
    } else {
        sum(db) / db.len() as f64
    }
}

/// 1 if more than `t` rows are `true`, else 0 (the course's `threshold` query).
pub fn threshold(db: &[bool], t: f64) -> f64 {
    if sum(db) > t {
        1.0
    } else {
        0.0
    }
}

fn data_rng(keys: &RunKeys, stream: u64) -> Rng {
    keys.key(Purpose::SyntheticData).rng(stream)
}

fn noise_rng(keys: &RunKeys, stream: u64) -> Rng {
    keys.key(Purpose::Mechanism).rng(stream)
}

/// Lesson 1: a database and its parallel databases.
#[derive(Clone, Debug, Serialize)]
pub struct Lesson1 {
    /// Rows N.
    pub rows: usize,
    /// The first 20 rows (as 0/1).
    pub first_rows: Vec<u8>,
    /// sum(D).
    pub sum: f64,
    /// How many parallel databases there are (one per row).
    pub parallel_databases: usize,
    /// Their length (N − 1 each).
    pub parallel_rows: usize,
    /// How many parallel databases have sum(D) − 1 (those that lost a 1) …
    pub parallel_with_sum_minus_1: usize,
    /// … and how many keep sum(D) (those that lost a 0).
    pub parallel_with_same_sum: usize,
}

/// Lesson 2, one re-draw: local (empirical) sensitivities on a 10-row database.
#[derive(Clone, Debug, Serialize)]
pub struct SensitivityDraw {
    /// The rows (0/1).
    pub rows: Vec<u8>,
    /// sum(D).
    pub sum: f64,
    /// max_i |sum(D) − sum(D − i)|.
    pub sum_sensitivity: f64,
    /// max_i |mean(D) − mean(D − i)|.
    pub mean_sensitivity: f64,
    /// max_i |threshold5(D) − threshold5(D − i)|.
    pub threshold_sensitivity: f64,
}

/// Lesson 2: ten re-draws.
#[derive(Clone, Debug, Serialize)]
pub struct Lesson2 {
    /// Rows per database (10).
    pub rows: usize,
    /// The threshold (5).
    pub threshold: f64,
    /// Each re-draw.
    pub draws: Vec<SensitivityDraw>,
}

/// Lesson 3: the differencing attack on the lesson-1 database.
#[derive(Clone, Debug, Serialize)]
pub struct Lesson3 {
    /// The attacked row (10).
    pub row: usize,
    /// Its true value.
    pub true_value: u8,
    /// sum(D) − sum(D without the row).
    pub recovered: f64,
    /// The same attack on every row: how many rows it recovers (all of them).
    pub rows_recovered: usize,
    /// Out of.
    pub rows: usize,
}

/// Lesson 4, one run of randomized response.
#[derive(Clone, Debug, Serialize)]
pub struct RrRun {
    /// Respondents N.
    pub n: usize,
    /// The first coin's probability of heads (answer truthfully); the course's `noise` is 1 − p.
    pub p: f64,
    /// ε = ln((1+p)/(1−p)) of each answer (local DP).
    pub epsilon: f64,
    /// The true mean of the database.
    pub true_mean: f64,
    /// The mean of the randomized answers (skewed towards ½).
    pub skewed_mean: f64,
    /// The de-skewed estimate.
    pub estimate: f64,
    /// |estimate − true mean|.
    pub error: f64,
    /// The exact standard deviation of the estimate given the database: √((1−p²)/(4N))/p.
    pub std_dev: f64,
}

/// Lesson 4: two fair coins at growing N, then biased first coins at N = 10 000.
#[derive(Clone, Debug, Serialize)]
pub struct Lesson4 {
    /// p = ½ at N = 10, 100, 1 000, 10 000.
    pub fair: Vec<RrRun>,
    /// N = 10 000 at several p.
    pub biased: Vec<RrRun>,
}

/// Lesson 5, one Laplace release (and the mean error of many).
#[derive(Clone, Debug, Serialize)]
pub struct LaplaceRun {
    /// "sum" or "mean".
    pub query: &'static str,
    /// ε.
    pub epsilon: f64,
    /// Δ (1 for the sum, 1/N for the mean).
    pub sensitivity: f64,
    /// b = Δ/ε.
    pub scale: f64,
    /// The true answer.
    pub true_value: f64,
    /// One release.
    pub released: f64,
    /// Its error.
    pub error: f64,
    /// Mean |error| over `repeats` further releases (expected: b).
    pub mean_abs_error: f64,
    /// How many.
    pub repeats: usize,
}

/// Lesson 5: Laplace sum and mean on a 100-row database at several ε.
#[derive(Clone, Debug, Serialize)]
pub struct Lesson5 {
    /// Rows.
    pub rows: usize,
    /// One entry per (query, ε).
    pub runs: Vec<LaplaceRun>,
}

/// Lesson 6, k repeated Laplace queries at ε each.
#[derive(Clone, Debug, Serialize)]
pub struct CompositionRow {
    /// Number of queries k.
    pub k: u64,
    /// Basic composition kε.
    pub basic: f64,
    /// Advanced composition at δ.
    pub advanced: f64,
    /// Rényi DP of the Laplace mechanism, converted at δ.
    pub rdp: f64,
    /// Optimal composition (exact PLD of k ε-DP randomized responses) at δ: an upper bound for
    /// Laplace.
    pub optimal_pld: f64,
    /// The average of the k noisy answers to the same sum …
    pub averaged_answer: f64,
    /// … its error (shrinks like b√2/√k: repeated answers leak).
    pub averaged_error: f64,
    /// The expected size of that error, √2·b/√k (its standard deviation).
    pub averaged_std_dev: f64,
}

/// Lesson 6: repeated queries.
#[derive(Clone, Debug, Serialize)]
pub struct Lesson6 {
    /// ε per query.
    pub epsilon: f64,
    /// δ of the (ε, δ) bounds.
    pub delta: f64,
    /// The true sum that is asked again and again.
    pub true_sum: f64,
    /// One row per k.
    pub rows: Vec<CompositionRow>,
}

/// Lesson 7a: LNMax on random votes.
#[derive(Clone, Debug, Serialize)]
pub struct PateMini {
    /// Teachers.
    pub teachers: usize,
    /// Queries (examples labelled).
    pub examples: usize,
    /// Classes.
    pub classes: usize,
    /// γ (Laplace scale 1/γ); the course calls it ε per query.
    pub gamma: f64,
    /// How often each class was the answer.
    pub answer_counts: Vec<u64>,
    /// How often the answer equals the noiseless plurality.
    pub agrees_with_plurality: usize,
    /// The first 10 answers.
    pub first_answers: Vec<usize>,
    /// Data-independent ε of all answers by basic composition (2γ per answer).
    pub epsilon_basic: f64,
}

/// Lesson 7b: one PATE analysis.
#[derive(Clone, Debug, Serialize)]
pub struct PateAnalysis {
    /// What was analysed.
    pub setting: String,
    /// Unanimous queries among the 100.
    pub unanimous: usize,
    /// Largest moment λ of the moments accountant.
    pub max_moment: u32,
    /// Moments accountant (Papernot et al. 2017): data-independent ε and its λ.
    pub moments_data_independent: (f64, f64),
    /// Moments accountant: data-dependent ε and its λ (not itself DP; see the docs).
    pub moments_data_dependent: (f64, f64),
    /// Queries for which Theorem 2's condition held.
    pub theorem2_queries: u64,
    /// RDP (Theorem 6 of 2018 applied to LNMax): data-independent ε and its order.
    pub rdp_data_independent: (f64, f64),
    /// RDP: data-dependent ε and its order.
    pub rdp_data_dependent: (f64, f64),
}

/// Lesson 7.
#[derive(Clone, Debug, Serialize)]
pub struct Lesson7 {
    /// LNMax on random votes.
    pub mini: PateMini,
    /// δ of the analyses.
    pub delta: f64,
    /// The analyses.
    pub analyses: Vec<PateAnalysis>,
}

/// Every lesson's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct Lessons {
    /// The seed.
    pub seed: u64,
    /// Lesson 1.
    pub database: Lesson1,
    /// Lesson 2.
    pub sensitivity: Lesson2,
    /// Lesson 3.
    pub differencing: Lesson3,
    /// Lesson 4.
    pub randomized_response: Lesson4,
    /// Lesson 5.
    pub laplace: Lesson5,
    /// Lesson 6.
    pub composition: Lesson6,
    /// Lesson 7.
    pub pate: Lesson7,
}

/// Runs every lesson with `seed`.
pub fn run(seed: u64) -> Result<Lessons> {
    let keys = RunKeys::seeded(seed);
    let db = draw_database(N_ROWS, &mut data_rng(&keys, 1));
    Ok(Lessons {
        seed,
        database: lesson1(&db),
        sensitivity: lesson2(&keys)?,
        differencing: lesson3(&db, 10)?,
        randomized_response: lesson4(&keys)?,
        laplace: lesson5(&keys)?,
        composition: lesson6(&keys)?,
        pate: lesson7(&keys)?,
    })
}

/// Lesson 1 on `db`.
pub fn lesson1(db: &[bool]) -> Lesson1 {
    let s = sum(db);
    let (mut minus, mut same) = (0, 0);
    let mut parallel_rows = 0;
    for i in 0..db.len() {
        if let Some(p) = parallel_database(db, i) {
            parallel_rows = p.len();
            if sum(&p) == s - 1.0 {
                minus += 1;
            } else if sum(&p) == s {
                same += 1;
            }
        }
    }
    Lesson1 {
        rows: db.len(),
        first_rows: db.iter().take(20).map(|&b| b as u8).collect(),
        sum: s,
        parallel_databases: db.len(),
        parallel_rows,
        parallel_with_sum_minus_1: minus,
        parallel_with_same_sum: same,
    }
}

/// Lesson 2: ten 10-row databases (streams 100…109) and their local sensitivities.
pub fn lesson2(keys: &RunKeys) -> Result<Lesson2> {
    let t = 5.0;
    let mut draws = Vec::new();
    for r in 0..10 {
        let db = draw_database(10, &mut data_rng(keys, 100 + r));
        draws.push(SensitivityDraw {
            rows: db.iter().map(|&b| b as u8).collect(),
            sum: sum(&db),
            sum_sensitivity: local_sensitivity(&db, sum)?,
            mean_sensitivity: local_sensitivity(&db, mean)?,
            threshold_sensitivity: local_sensitivity(&db, |d: &[bool]| threshold(d, t))?,
        });
    }
    Ok(Lesson2 {
        rows: 10,
        threshold: t,
        draws,
    })
}

/// Lesson 3: recover `row` of `db` from sum(D) − sum(D without the row).
pub fn lesson3(db: &[bool], row: usize) -> Result<Lesson3> {
    let attack = |i: usize| -> Result<f64> {
        let p = parallel_database(db, i)
            .ok_or_else(|| Error::invalid("row", i, format!("< {} (the rows)", db.len())))?;
        Ok(sum(db) - sum(&p))
    };
    let recovered = attack(row)?;
    let mut ok = 0;
    for (i, &value) in db.iter().enumerate() {
        if attack(i)? == value as u8 as f64 {
            ok += 1;
        }
    }
    Ok(Lesson3 {
        row,
        true_value: db[row] as u8,
        recovered,
        rows_recovered: ok,
        rows: db.len(),
    })
}

fn rr_run(keys: &RunKeys, stream: u64, n: usize, p: f64) -> Result<RrRun> {
    let db = draw_database(n, &mut data_rng(keys, stream));
    let rr = TwoCoinResponse::new(p)?;
    let mut rng = noise_rng(keys, stream);
    let reports: Vec<bool> = db.iter().map(|&x| rr.respond(x, &mut rng)).collect();
    let est = rr.estimate(&reports)?;
    let true_mean = mean(&db);
    Ok(RrRun {
        n,
        p,
        epsilon: rr.epsilon(),
        true_mean,
        skewed_mean: mean(&reports),
        estimate: est.proportion,
        error: (est.proportion - true_mean).abs(),
        std_dev: ((1.0 - p * p) / (4.0 * n as f64)).sqrt() / p,
    })
}

/// Lesson 4 (streams 400… for the fair coins, 410… for the biased ones).
pub fn lesson4(keys: &RunKeys) -> Result<Lesson4> {
    let mut fair = Vec::new();
    for (i, n) in [10, 100, 1000, 10_000].into_iter().enumerate() {
        fair.push(rr_run(keys, 400 + i as u64, n, 0.5)?);
    }
    let mut biased = Vec::new();
    for (i, p) in [0.1, 0.2, 0.5, 0.8, 0.9].into_iter().enumerate() {
        biased.push(rr_run(keys, 410 + i as u64, 10_000, p)?);
    }
    Ok(Lesson4 { fair, biased })
}

/// The ε of lesson 5.
pub const LESSON5_EPSILONS: [f64; 4] = [0.01, 0.1, 1.0, 10.0];

/// Lesson 5: Laplace sum and mean of a 100-row database (stream 500).
pub fn lesson5(keys: &RunKeys) -> Result<Lesson5> {
    let rows = 100;
    let repeats = 1000;
    let db = draw_database(rows, &mut data_rng(keys, 500));
    let mut rng = noise_rng(keys, 500);
    let mut runs = Vec::new();
    for (query, delta, truth) in [
        ("sum", 1.0, sum(&db)),
        ("mean", 1.0 / rows as f64, mean(&db)),
    ] {
        for eps in LESSON5_EPSILONS {
            let m = Laplace::new(delta, eps)?;
            let released = m.release(truth, &mut rng)?;
            let mut total = 0.0;
            for _ in 0..repeats {
                total += (m.release(truth, &mut rng)? - truth).abs();
            }
            runs.push(LaplaceRun {
                query,
                epsilon: eps,
                sensitivity: delta,
                scale: m.scale(),
                true_value: truth,
                released,
                error: (released - truth).abs(),
                mean_abs_error: total / repeats as f64,
                repeats,
            });
        }
    }
    Ok(Lesson5 { rows, runs })
}

/// The k of lesson 6.
pub const LESSON6_KS: [u64; 4] = [1, 10, 100, 1000];

/// Lesson 6: the same Laplace sum asked k times at ε = 0.1 each (stream 600), δ = 1e-5.
pub fn lesson6(keys: &RunKeys) -> Result<Lesson6> {
    let (eps, delta) = (0.1, 1e-5);
    let db = draw_database(100, &mut data_rng(keys, 600));
    let truth = sum(&db);
    let m = Laplace::new(1.0, eps)?;
    let mut rng = noise_rng(keys, 600);
    let orders = rdp_orders();
    let mut rows = Vec::new();
    for k in LESSON6_KS {
        let mut total = 0.0;
        for _ in 0..k {
            total += m.release(truth, &mut rng)?;
        }
        let avg = total / k as f64;
        rows.push(CompositionRow {
            k,
            basic: basic_composition(eps, k)?,
            advanced: advanced_composition(eps, k, delta)?,
            rdp: laplace_epsilon_rdp(eps, k, delta, &orders)?.0,
            optimal_pld: optimal_composition_epsilon(eps, k, delta)?,
            averaged_answer: avg,
            averaged_error: (avg - truth).abs(),
            averaged_std_dev: std::f64::consts::SQRT_2 * m.scale() / (k as f64).sqrt(),
        });
    }
    Ok(Lesson6 {
        epsilon: eps,
        delta,
        true_sum: truth,
        rows,
    })
}

/// Vote histograms of `teachers` teachers voting uniformly at random over `classes` classes on
/// `examples` examples; the first `unanimous` examples are unanimous votes for class 0.
pub fn random_votes(
    teachers: usize,
    examples: usize,
    classes: usize,
    unanimous: usize,
    rng: &mut impl RandomBits,
) -> Vec<Vec<u64>> {
    if classes == 0 {
        return vec![Vec::new(); examples];
    }
    (0..examples)
        .map(|e| {
            let mut h = vec![0u64; classes];
            for _ in 0..teachers {
                h[rng.next_below(classes as u64) as usize] += 1;
            }
            if e < unanimous {
                // As the course did (`preds[:, 0:10] *= 0`): overwrite after drawing, so the
                // other queries' votes do not depend on how many are unanimous.
                h.iter_mut().for_each(|c| *c = 0);
                h[0] = teachers as u64;
            }
            h
        })
        .collect()
}

/// Both analyses of `histograms` at γ and δ: the moments accountant with moments 1…m for each m
/// of `max_moments`, and the RDP accountant (which does not depend on m).
pub fn analyse(
    setting: &str,
    histograms: &[Vec<u64>],
    unanimous: usize,
    gamma: f64,
    delta: f64,
    max_moments: &[u32],
) -> Result<Vec<PateAnalysis>> {
    let mut rdp = LnmaxRdpAccountant::new(gamma, pate_orders())?;
    for h in histograms {
        rdp.record(h)?;
    }
    let mut out = Vec::new();
    for &max_moment in max_moments {
        let mut moments = LnmaxMomentsAccountant::new(gamma, moments_up_to(max_moment)?)?;
        for h in histograms {
            moments.record(h)?;
        }
        out.push(PateAnalysis {
            setting: setting.to_string(),
            unanimous,
            max_moment,
            moments_data_independent: moments.epsilon_data_independent(delta)?,
            moments_data_dependent: moments.epsilon_data_dependent(delta)?,
            theorem2_queries: moments.theorem2_used(),
            rdp_data_independent: rdp.epsilon_data_independent(delta)?,
            rdp_data_dependent: rdp.epsilon_data_dependent(delta)?,
        });
    }
    Ok(out)
}

/// Lesson 7: LNMax on 10 teachers' random votes over 10 000 examples (streams 700), then the
/// analyses of 100 teachers × 100 queries (stream 701 for the votes).
pub fn lesson7(keys: &RunKeys) -> Result<Lesson7> {
    let gamma = 0.1;
    let delta = 1e-5;
    let (teachers, examples, classes) = (10, 10_000, 10);
    let votes = random_votes(teachers, examples, classes, 0, &mut data_rng(keys, 700));
    let mut rng = noise_rng(keys, 700);
    let mut answer_counts = vec![0u64; classes];
    let mut agrees = 0;
    let mut first_answers = Vec::new();
    for h in &votes {
        let a = lnmax(h, gamma, &mut rng)?;
        answer_counts[a] += 1;
        let top = h.iter().max().copied().unwrap_or(0);
        if h[a] == top {
            agrees += 1;
        }
        if first_answers.len() < 10 {
            first_answers.push(a);
        }
    }
    let mini = PateMini {
        teachers,
        examples,
        classes,
        gamma,
        answer_counts,
        agrees_with_plurality: agrees,
        first_answers,
        epsilon_basic: lnmax_epsilon(gamma, examples as u64)?,
    };

    let mut analyses = Vec::new();
    for unanimous in [10, 50] {
        // The same random votes for the non-unanimous queries in both settings.
        let h = random_votes(100, 100, 10, unanimous, &mut data_rng(keys, 701));
        analyses.extend(analyse(
            &format!("100 teachers x 100 queries, first {unanimous} unanimous"),
            &h,
            unanimous,
            gamma,
            delta,
            &[8, 20],
        )?);
    }
    // The course's call passed its random labels (values 0..9) as the indices of the queries to
    // analyse, so it analysed 100 draws from the first ten queries, all unanimous.
    let all = random_votes(100, 100, 10, 100, &mut data_rng(keys, 702));
    analyses.extend(analyse(
        "as the course ran it: 100 unanimous queries",
        &all,
        100,
        gamma,
        delta,
        &[8, 20],
    )?);
    Ok(Lesson7 {
        mini,
        delta,
        analyses,
    })
}
