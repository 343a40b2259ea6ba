//! The toy-database lessons of a differential-privacy course (issue 13), runnable and seeded:
//! a one-bit database and its parallel databases, empirical sensitivity, a differencing attack,
//! randomized response with two coins, the Laplace mechanism, composition of repeated queries,
//! and PATE in miniature with its privacy analysis (moments accountant and RDP).
//!
//! ```text
//! cargo run --release --example toy_database                # the walk-through, seed 4
//! cargo run --release --example toy_database -- --seed 7    # another seed
//! cargo run --release --example toy_database -- --json      # every number as JSON
//! ```
//!
//! The computations live in `examples/lessons/toy_database.rs`, which `tests/toy_database.rs`
//! checks; this file only parses the arguments and prints.

#[path = "lessons/toy_database.rs"]
mod lessons;

use lessons::Lessons;

/// `println!` that ignores a closed stdout (e.g. `| head`) instead of panicking.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

fn usage() -> String {
    format!(
        "usage: toy_database [--seed N] [--json]\n  --seed N  the seed of every database and every noise draw (default {})\n  --json    print every lesson's numbers as JSON instead of the walk-through",
        lessons::DEFAULT_SEED
    )
}

fn parse_args() -> Result<(u64, bool), String> {
    let mut seed = lessons::DEFAULT_SEED;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => json = true,
            "--seed" => {
                let v = args
                    .next()
                    .ok_or_else(|| "--seed needs a value (an integer in 0..2^64)".to_string())?;
                seed = v
                    .parse()
                    .map_err(|_| format!("--seed {v:?} is not an integer in 0..2^64"))?;
            }
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((seed, json))
}

fn main() {
    let (seed, json) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n{}", usage());
            std::process::exit(2);
        }
    };
    let lessons = match lessons::run(seed) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if json {
        match serde_json::to_string_pretty(&lessons) {
            Ok(s) => say!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    } else {
        print_lessons(&lessons);
    }
}

fn bits(rows: &[u8]) -> String {
    rows.iter()
        .map(|b| if *b == 1 { '1' } else { '0' })
        .collect()
}

fn print_lessons(l: &Lessons) {
    say!("Toy-database lessons (seed {})\n", l.seed);

    let d = &l.database;
    say!(
        "1. A one-bit database of N = {} people (each bit 1 with probability 1/2)",
        d.rows
    );
    say!(
        "   first 20 rows: {}   sum = {}",
        bits(&d.first_rows),
        d.sum
    );
    say!(
        "   {} parallel databases (row i removed), {} rows each: {} have sum {} (lost a 1), {} keep sum {} (lost a 0)\n",
        d.parallel_databases,
        d.parallel_rows,
        d.parallel_with_sum_minus_1,
        d.sum - 1.0,
        d.parallel_with_same_sum,
        d.sum
    );

    let s = &l.sensitivity;
    say!(
        "2. Empirical (local) sensitivity on N = {} rows, 10 re-draws: max over i of |q(D) - q(D without row i)|",
        s.rows
    );
    say!(
        "   rows        sum(D) | sensitivity of: sum    mean  threshold({})",
        s.threshold
    );
    for r in &s.draws {
        say!(
            "   {}  {:>6} |                  {:>3}  {:.4}  {:>12}",
            bits(&r.rows),
            r.sum,
            r.sum_sensitivity,
            r.mean_sensitivity,
            r.threshold_sensitivity
        );
    }
    say!(
        "   sum: 1 (0 only if every row is 0); mean: about 1/N; threshold: 1 only when sum = threshold + 1\n"
    );

    let a = &l.differencing;
    say!(
        "3. Differencing attack: sum(D) - sum(D without row {}) = {} (row {} is {}); the same two queries recover {} of {} rows\n",
        a.row, a.recovered, a.row, a.true_value, a.rows_recovered, a.rows
    );

    let r = &l.randomized_response;
    say!(
        "4. Randomized response: first coin heads (probability p) -> the truth, tails -> a second, fair coin"
    );
    say!("   de-skewed estimate = (mean of answers - (1-p)/2) / p; epsilon = ln((1+p)/(1-p))");
    say!("       N    p  epsilon  true mean  answers  estimate   error  std dev");
    for run in r.fair.iter().chain(&r.biased) {
        say!(
            "   {:>5}  {:.1}  {:>7.4}  {:>9.4}  {:>7.4}  {:>8.4}  {:.4}  {:.4}",
            run.n,
            run.p,
            run.epsilon,
            run.true_mean,
            run.skewed_mean,
            run.estimate,
            run.error,
            run.std_dev
        );
    }
    say!(
        "   more people -> a better estimate at the same epsilon; a smaller p -> more privacy, more noise\n"
    );

    let lp = &l.laplace;
    say!(
        "5. Laplace mechanism on N = {} rows: release q(D) + Lap(b), b = sensitivity/epsilon",
        lp.rows
    );
    say!(
        "   query  epsilon  sensitivity         b      true   released     error  mean |error| of {} more (expected: b)",
        lp.runs.first().map(|r| r.repeats).unwrap_or(0)
    );
    for run in &lp.runs {
        say!(
            "   {:<5}  {:>7}  {:>11}  {:>8.3}  {:>8.3}  {:>9.3}  {:>8.3}  {:>8.4}",
            run.query,
            run.epsilon,
            run.sensitivity,
            run.scale,
            run.true_value,
            run.released,
            run.error,
            run.mean_abs_error
        );
    }
    say!();

    let c = &l.composition;
    say!(
        "6. Repeated queries: the same sum (true {}) asked k times, Laplace at epsilon = {} each; (epsilon, delta = {:e})",
        c.true_sum, c.epsilon, c.delta
    );
    say!(
        "       k  basic k*eps  advanced     RDP  optimal (PLD)  average of k answers  its error  (std dev)"
    );
    for row in &c.rows {
        say!(
            "   {:>5}  {:>11.3}  {:>8.3}  {:>6.3}  {:>13.3}  {:>20.3}  {:>9.3}  ({:.3})",
            row.k,
            row.basic,
            row.advanced,
            row.rdp,
            row.optimal_pld,
            row.averaged_answer,
            row.averaged_error,
            row.averaged_std_dev
        );
    }
    say!("   the average of k answers converges to the truth, so epsilon must add up; but basic composition");
    say!("   (k*eps) is loose: advanced composition, RDP of the Laplace mechanism and the optimal composition of");
    say!("   k eps-DP mechanisms (exact PLD of k randomized responses, Kairouz et al. 2015) grow like sqrt(k)\n");

    let p = &l.pate;
    let m = &p.mini;
    say!(
        "7. PATE in miniature: {} teachers vote at random over {} classes on {} examples; LNMax: argmax of counts + Lap(1/gamma), gamma = {}",
        m.teachers, m.classes, m.examples, m.gamma
    );
    say!(
        "   (the course's \"epsilon = 0.1 per query\" is gamma: one vote moves two counts, so each answer is 2 gamma = {}-DP)",
        2.0 * m.gamma
    );
    say!("   first answers: {:?}", m.first_answers);
    say!("   answers per class: {:?}", m.answer_counts);
    say!(
        "   the answer is a plurality class for {} of {} examples; epsilon by basic composition: {} (2 gamma per answer)",
        m.agrees_with_plurality, m.examples, m.epsilon_basic
    );
    say!(
        "   Analyses at delta = {:e} (data-dependent values depend on the votes and are not themselves DP):",
        p.delta
    );
    say!(
        "   {:<46} {:>7} | moments accountant (2017)       | RDP (2018, Theorem 6)",
        "",
        ""
    );
    say!(
        "   {:<46} {:>7} | data-indep.  data-dep. (Thm 2)  | data-indep.  data-dep.",
        "setting",
        "moments"
    );
    for a in &p.analyses {
        say!(
            "   {:<46} {:>7} | {:>11.3}  {:>9.3}  ({:>3})  | {:>11.3}  {:>9.3}",
            a.setting,
            format!("1..{}", a.max_moment),
            a.moments_data_independent.0,
            a.moments_data_dependent.0,
            a.theorem2_queries,
            a.rdp_data_independent.0,
            a.rdp_data_dependent.0
        );
    }
    say!("   (Thm 2): queries that met Theorem 2's condition; the others pay the data-independent moment.");
    say!("   The course passed its random labels (0..9) as the indices of the queries to analyse, so it analysed");
    say!("   only unanimous queries: its printed 1.52655 (1..8) and 0.90290 (1..20) are the last two rows.");
}
