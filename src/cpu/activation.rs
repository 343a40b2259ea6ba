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

/// `#[multiversion]` on the loops: each is compiled for the build's target and for AVX2+FMA.
macro_rules! dispatched {
    ($($(#[$m:meta])* fn $name:ident<$t:ident>($($a:ident: $ty:ty),*) $body:block)*) => {$(
        $(#[$m])*
        #[cfg_attr(
            not(feature = "baseline-cpu"),
            multiversion::multiversion(targets("x86_64+avx2+fma"))
        )]
        fn $name<$t: Real>($($a: $ty),*) $body
    )*};
}

// Plain indexed loops over equal-length slices, with selects instead of branches (the sign of a
// ReLU input is unpredictable): they vectorise.
dispatched! {
    fn relu_fwd<T>(y: &mut [T], x: &[T]) {
        for (o, v) in y.iter_mut().zip(x) {
            *o = if *v > T::ZERO { *v } else { T::ZERO };
        }
    }
    fn leaky_fwd<T>(y: &mut [T], x: &[T], a: T) {
        for (o, v) in y.iter_mut().zip(x) {
            *o = if *v > T::ZERO { *v } else { a * *v };
        }
    }
    fn tanh_fwd<T>(y: &mut [T], x: &[T]) {
        for (o, v) in y.iter_mut().zip(x) {
            *o = v.tanh();
        }
    }
    fn sigmoid_fwd<T>(y: &mut [T], x: &[T]) {
        for (o, v) in y.iter_mut().zip(x) {
            *o = sigmoid(*v);
        }
    }
    fn relu_bwd<T>(dx: &mut [T], x: &[T], dy: &[T]) {
        let n = dx.len();
        let (x, dy) = (&x[..n], &dy[..n]);
        for i in 0..n {
            // Both loads first: a select, not a branch.
            let (v, d) = (x[i], dy[i]);
            dx[i] = if v > T::ZERO { d } else { T::ZERO };
        }
    }
    fn leaky_bwd<T>(dx: &mut [T], x: &[T], dy: &[T], a: T) {
        let n = dx.len();
        let (x, dy) = (&x[..n], &dy[..n]);
        for i in 0..n {
            let (v, d) = (x[i], dy[i]);
            dx[i] = d * if v > T::ZERO { T::ONE } else { a };
        }
    }
    fn tanh_bwd<T>(dx: &mut [T], y: &[T], dy: &[T]) {
        let n = dx.len();
        let (y, dy) = (&y[..n], &dy[..n]);
        for i in 0..n {
            dx[i] = dy[i] * (T::ONE - y[i] * y[i]);
        }
    }
    fn sigmoid_bwd<T>(dx: &mut [T], y: &[T], dy: &[T]) {
        let n = dx.len();
        let (y, dy) = (&y[..n], &dy[..n]);
        for i in 0..n {
            dx[i] = dy[i] * y[i] * (T::ONE - y[i]);
        }
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
        Activation::Relu => it.for_each(|(y, x)| relu_fwd(y, x)),
        Activation::LeakyRelu(a) => {
            let a = T::from_f64(a);
            it.for_each(|(y, x)| leaky_fwd(y, x, a))
        }
        Activation::Tanh => it.for_each(|(y, x)| tanh_fwd(y, x)),
        Activation::Sigmoid => it.for_each(|(y, x)| sigmoid_fwd(y, x)),
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
    let it = dx
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .zip(y.par_chunks(CHUNK))
        .zip(dy.par_chunks(CHUNK))
        .with_min_len(min_len());
    match act {
        Activation::Relu => it.for_each(|(((dx, x), _), dy)| relu_bwd(dx, x, dy)),
        Activation::LeakyRelu(a) => {
            let a = T::from_f64(a);
            it.for_each(|(((dx, x), _), dy)| leaky_bwd(dx, x, dy, a))
        }
        Activation::Tanh => it.for_each(|(((dx, _), y), dy)| tanh_bwd(dx, y, dy)),
        Activation::Sigmoid => it.for_each(|(((dx, _), y), dy)| sigmoid_bwd(dx, y, dy)),
    }
    Ok(())
}
