//! CPU kernels of the element-wise activations: ReLU, LeakyReLU, Tanh, Sigmoid.
//!
//! The backward takes both the forward's input `x` and output `y`: ReLU/LeakyReLU use `x`,
//! Tanh/Sigmoid use `y` (`1 − y²`, `y(1 − y)`), so nothing is recomputed.

use super::gemm::Real;
use super::grad::{check_len, min_len};
use crate::{Error, Result};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// An element-wise activation.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    /// `max(x, 0)` (gradient 0 at x = 0, as PyTorch).
    Relu,
    /// `x` for x > 0, `slope·x` otherwise (PyTorch's `negative_slope`, default 0.01).
    LeakyRelu(f64),
    /// `tanh x`.
    Tanh,
    /// `1 / (1 + e^{−x})`.
    Sigmoid,
}

impl Activation {
    fn check(&self) -> Result<()> {
        if let Activation::LeakyRelu(a) = self {
            if !a.is_finite() {
                return Err(Error::invalid("negative_slope", a, "finite"));
            }
        }
        Ok(())
    }
}

#[inline]
fn sigmoid<T: Real>(x: T) -> T {
    if x >= T::ZERO {
        T::ONE / (T::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::ONE + e)
    }
}

/// `y = act(x)` element-wise (`y` overwritten; any shape).
pub fn activation_forward<T: Real>(act: Activation, x: &[T], y: &mut [T]) -> Result<()> {
    act.check()?;
    check_len("activation_forward", "y", y.len(), x.len())?;
    let it = y
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .with_min_len(min_len());
    match act {
        Activation::Relu => it.for_each(|(y, x)| {
            for (o, v) in y.iter_mut().zip(x) {
                *o = if *v > T::ZERO { *v } else { T::ZERO };
            }
        }),
        Activation::LeakyRelu(a) => {
            let a = T::from_f64(a);
            it.for_each(|(y, x)| {
                for (o, v) in y.iter_mut().zip(x) {
                    *o = if *v > T::ZERO { *v } else { a * *v };
                }
            })
        }
        Activation::Tanh => it.for_each(|(y, x)| {
            for (o, v) in y.iter_mut().zip(x) {
                *o = v.tanh();
            }
        }),
        Activation::Sigmoid => it.for_each(|(y, x)| {
            for (o, v) in y.iter_mut().zip(x) {
                *o = sigmoid(*v);
            }
        }),
    }
    Ok(())
}

/// `dx = dy · act'(x)` element-wise (`dx` overwritten); `x`, `y` are the forward's input and
/// output.
pub fn activation_backward<T: Real>(
    act: Activation,
    x: &[T],
    y: &[T],
    dy: &[T],
    dx: &mut [T],
) -> Result<()> {
    const OP: &str = "activation_backward";
    act.check()?;
    check_len(OP, "y", y.len(), x.len())?;
    check_len(OP, "dy", dy.len(), x.len())?;
    check_len(OP, "dx", dx.len(), x.len())?;
    // Plain indexed loops over equal-length slices, with selects instead of branches (the
    // sign of a ReLU input is unpredictable): they vectorise.
    let it = dx
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .zip(y.par_chunks(CHUNK))
        .zip(dy.par_chunks(CHUNK))
        .with_min_len(min_len());
    match act {
        Activation::Relu => it.for_each(|(((dx, x), _), dy)| {
            let n = dx.len();
            let (x, dy) = (&x[..n], &dy[..n]);
            for i in 0..n {
                // Both loads first: a select, not a branch.
                let (v, d) = (x[i], dy[i]);
                dx[i] = if v > T::ZERO { d } else { T::ZERO };
            }
        }),
        Activation::LeakyRelu(a) => {
            let a = T::from_f64(a);
            it.for_each(|(((dx, x), _), dy)| {
                let n = dx.len();
                let (x, dy) = (&x[..n], &dy[..n]);
                for i in 0..n {
                    let (v, d) = (x[i], dy[i]);
                    dx[i] = d * if v > T::ZERO { T::ONE } else { a };
                }
            })
        }
        Activation::Tanh => it.for_each(|(((dx, _), y), dy)| {
            let n = dx.len();
            let (y, dy) = (&y[..n], &dy[..n]);
            for i in 0..n {
                dx[i] = dy[i] * (T::ONE - y[i] * y[i]);
            }
        }),
        Activation::Sigmoid => it.for_each(|(((dx, _), y), dy)| {
            let n = dx.len();
            let (y, dy) = (&y[..n], &dy[..n]);
            for i in 0..n {
                dx[i] = dy[i] * y[i] * (T::ONE - y[i]);
            }
        }),
    }
    Ok(())
}
