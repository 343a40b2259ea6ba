//! Sensitivity of a query by brute-force enumeration of neighbouring databases — a teaching
//! helper for small databases.
//!
//! Neighbouring databases here differ by one row removed (the add/remove relation that DP-SGD's
//! Poisson sampling uses). A database is a slice of rows; the query is any closure of a slice.
//!
//! - [`local_sensitivity`]: max over the rows i of |f(D) − f(D without row i)| at one database D.
//! - [`global_sensitivity`]: the maximum of the local sensitivity over every database of at most
//!   `max_rows` rows drawn (with repetition, in every order) from a small universe of rows —
//!   exactly the global sensitivity restricted to databases of that size.
//!
//! Vector-valued queries take a [`Norm`] (L1 for the Laplace mechanism, L2 for the Gaussian).

use crate::{Error, Result};

/// The most databases [`global_sensitivity`] will enumerate.
pub const MAX_DATABASES: u64 = 1 << 22;

/// Which norm measures the change of a vector-valued query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// Σ|aᵢ − bᵢ| (the Laplace mechanism's sensitivity).
    L1,
    /// √Σ(aᵢ − bᵢ)² (the Gaussian mechanism's sensitivity).
    L2,
    /// max |aᵢ − bᵢ|.
    LInf,
}

fn distance(a: &[f64], b: &[f64], norm: Norm) -> Result<f64> {
    if a.len() != b.len() {
        return Err(Error::shape(
            "sensitivity",
            format!(
                "the query returned {} values on one database and {} on a neighbour",
                a.len(),
                b.len()
            ),
        ));
    }
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs());
    Ok(match norm {
        Norm::L1 => d.sum(),
        Norm::L2 => d.map(|x| x * x).sum::<f64>().sqrt(),
        Norm::LInf => d.fold(0.0, f64::max),
    })
}

fn evaluate<T, F>(query: &F, db: &[T]) -> Result<Vec<f64>>
where
    F: Fn(&[T]) -> Vec<f64>,
{
    let v = query(db);
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(v),
        Some(i) => Err(Error::NonFinite {
            what: "query output",
            detail: format!(
                "output {i} is {} on a database of {} rows; define the query on every database (e.g. the empty one)",
                v[i],
                db.len()
            ),
        }),
    }
}

/// The local sensitivity of a vector-valued query at `db` under `norm`: the largest change of the
/// output when one row is removed. 0 for the empty database (it has no neighbour by removal).
///
/// Errors with [`Error::NonFinite`] if the query returns NaN/±Inf on `db` or a neighbour, and
/// [`Error::Shape`] if the output length changes.
pub fn local_sensitivity_vec<T, F>(db: &[T], query: F, norm: Norm) -> Result<f64>
where
    T: Clone,
    F: Fn(&[T]) -> Vec<f64>,
{
    local_inner(db, &query, norm)
}

fn local_inner<T, F>(db: &[T], query: &F, norm: Norm) -> Result<f64>
where
    T: Clone,
    F: Fn(&[T]) -> Vec<f64>,
{
    let full = evaluate(query, db)?;
    let mut worst: f64 = 0.0;
    let mut neighbour: Vec<T> = Vec::with_capacity(db.len().saturating_sub(1));
    for i in 0..db.len() {
        neighbour.clear();
        neighbour.extend_from_slice(&db[..i]);
        neighbour.extend_from_slice(&db[i + 1..]);
        let out = evaluate(query, &neighbour)?;
        worst = worst.max(distance(&full, &out, norm)?);
    }
    Ok(worst)
}

/// The local sensitivity of a scalar query at `db`: max over rows i of |f(D) − f(D − row i)|.
pub fn local_sensitivity<T, F>(db: &[T], query: F) -> Result<f64>
where
    T: Clone,
    F: Fn(&[T]) -> f64,
{
    local_inner(db, &|d: &[T]| vec![query(d)], Norm::L1)
}

/// The global sensitivity of a vector-valued query under `norm`, over every database of at most
/// `max_rows` rows from `universe` (all sequences with repetition, so order-dependent queries are
/// covered too). Errors if `universe` is empty or the enumeration exceeds [`MAX_DATABASES`].
pub fn global_sensitivity_vec<T, F>(
    universe: &[T],
    max_rows: usize,
    query: F,
    norm: Norm,
) -> Result<f64>
where
    T: Clone,
    F: Fn(&[T]) -> Vec<f64>,
{
    if universe.is_empty() {
        return Err(Error::invalid(
            "universe",
            "[]",
            "at least one possible row",
        ));
    }
    let k = universe.len() as u64;
    let mut total: u64 = 0;
    let mut layer: u64 = 1;
    for _ in 0..=max_rows {
        total = total.saturating_add(layer);
        layer = layer.saturating_mul(k);
    }
    if total > MAX_DATABASES {
        return Err(Error::invalid(
            "max_rows",
            max_rows,
            format!(
                "small enough that at most {MAX_DATABASES} databases are enumerated ({} rows in the universe)",
                universe.len()
            ),
        ));
    }
    let mut worst: f64 = 0.0;
    let mut idx: Vec<usize> = Vec::with_capacity(max_rows);
    let mut db: Vec<T> = Vec::with_capacity(max_rows);
    for n in 1..=max_rows {
        idx.clear();
        idx.resize(n, 0);
        loop {
            db.clear();
            db.extend(idx.iter().map(|&i| universe[i].clone()));
            worst = worst.max(local_inner(&db, &query, norm)?);
            // Next index tuple (odometer).
            let mut pos = 0;
            loop {
                if pos == n {
                    break;
                }
                idx[pos] += 1;
                if idx[pos] < universe.len() {
                    break;
                }
                idx[pos] = 0;
                pos += 1;
            }
            if pos == n {
                break;
            }
        }
    }
    Ok(worst)
}

/// The global sensitivity of a scalar query over every database of at most `max_rows` rows from
/// `universe` (see [`global_sensitivity_vec`]).
pub fn global_sensitivity<T, F>(universe: &[T], max_rows: usize, query: F) -> Result<f64>
where
    T: Clone,
    F: Fn(&[T]) -> f64,
{
    global_sensitivity_vec(universe, max_rows, |d: &[T]| vec![query(d)], Norm::L1)
}
