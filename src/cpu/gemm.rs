//! The scalar trait of the CPU layer kernels and their one GEMM entry point.
//!
//! The kernels in [`crate::cpu::conv`] and the other layer files are generic over [`Real`] so the
//! same code runs in `f32` (training) and `f64` (finite-difference tests). Matrix products go
//! through `gemm`, a safe wrapper (via `ndarray`) around `matrixmultiply`'s packed,
//! SIMD-dispatched `sgemm`/`dgemm` (single-threaded: the callers parallelise across the batch with rayon).

use std::fmt::{Debug, Display};
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A floating-point scalar the CPU kernels run in: `f32` or `f64`.
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + Debug
    + Display
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + ndarray::LinalgScalar
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// The name of the type, as in safetensors' dtype (`"F32"` or `"F64"`).
    const DTYPE: &'static str;
    /// Conversion from `f64` (rounding for `f32`).
    fn from_f64(x: f64) -> Self;
    /// Conversion to `f64` (exact).
    fn to_f64(self) -> f64;
    /// eˣ.
    fn exp(self) -> Self;
    /// ln x.
    fn ln(self) -> Self;
    /// tanh x (for f32: a vectorisable rational approximation within a few ulp, see
    /// [`tanh_f32`]; for f64: the library's).
    fn tanh(self) -> Self;
    /// √x.
    fn sqrt(self) -> Self;
    /// `true` unless NaN or ±∞.
    fn is_finite(self) -> bool;
    /// `true` for NaN.
    fn is_nan(self) -> bool;
    /// `self · a + b` with one rounding (one FMA instruction where the CPU has it; a library
    /// call elsewhere — see `cpu::igemm::available`).
    fn mul_add(self, a: Self, b: Self) -> Self;
}

macro_rules! impl_real {
    ($t:ty, $name:literal, $tanh:expr) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const DTYPE: &'static str = $name;
            #[inline]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline]
            fn tanh(self) -> Self {
                $tanh(self)
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
        }
    };
}

impl_real!(f32, "F32", tanh_f32);
impl_real!(f64, "F64", f64::tanh);

/// tanh for f32 as the ratio of an odd degree-13 and an even degree-6 polynomial on
/// [−7.9053, 7.9053] (clamped outside, where tanh rounds to ±1 in f32) — Eigen's `ptanh_float`
/// coefficients. Maximum error a few ulp; branch-free, so loops over it vectorise (the libm
/// `tanhf` call it replaces was most of a Tanh network's activation time).
#[inline]
pub fn tanh_f32(x: f32) -> f32 {
    const C: f32 = 7.905_311;
    const A1: f32 = 4.893_524_6e-3;
    const A3: f32 = 6.372_619_3e-4;
    const A5: f32 = 1.485_722_4e-5;
    const A7: f32 = 5.122_297e-8;
    const A9: f32 = -8.604_672e-11;
    const A11: f32 = 2.000_188e-13;
    const A13: f32 = -2.760_768_5e-16;
    const B0: f32 = 4.893_525e-3;
    const B2: f32 = 2.268_434_6e-3;
    const B4: f32 = 1.185_347_1e-4;
    const B6: f32 = 1.198_258_4e-6;
    let small = x.abs() < 4e-4;
    let xc = x.clamp(-C, C);
    let x2 = xc * xc;
    let mut p = x2 * A13 + A11;
    p = p * x2 + A9;
    p = p * x2 + A7;
    p = p * x2 + A5;
    p = p * x2 + A3;
    p = p * x2 + A1;
    p *= xc;
    let mut q = x2 * B6 + B4;
    q = q * x2 + B2;
    q = q * x2 + B0;
    let r = p / q;
    // NaN stays NaN (clamp propagates it); tiny inputs return themselves.
    if small {
        x
    } else {
        r
    }
}

/// C ← α·A·B + β·C with arbitrary row/column strides (in elements) for A (m×k), B (k×n) and
/// C (m×n). With β = 0, C is not read.
///
/// Goes through `ndarray::linalg::general_mat_mul`, i.e. `matrixmultiply`'s packed,
/// SIMD-dispatched `sgemm`/`dgemm`, single-threaded (callers parallelise across the batch).
/// Crate-internal: the layer kernels validate every slice length before calling it, so a stride
/// pattern that reaches outside a slice is a bug in the crate, and panics.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn gemm<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
    a: &[T],
    rsa: usize,
    csa: usize,
    b: &[T],
    rsb: usize,
    csb: usize,
    beta: T,
    c: &mut [T],
    rsc: usize,
    csc: usize,
) {
    use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};
    if m == 0 || n == 0 {
        return;
    }
    let mut cv = ArrayViewMut2::from_shape((m, n).strides((rsc, csc)), c)
        .expect("gemm: C out of bounds (internal)");
    if k == 0 {
        // α·A·B is the zero matrix: C ← β·C.
        cv.mapv_inplace(|x| if beta == T::ZERO { T::ZERO } else { beta * x });
        return;
    }
    let av = ArrayView2::from_shape((m, k).strides((rsa, csa)), a)
        .expect("gemm: A out of bounds (internal)");
    let bv = ArrayView2::from_shape((k, n).strides((rsb, csb)), b)
        .expect("gemm: B out of bounds (internal)");
    ndarray::linalg::general_mat_mul(alpha, &av, &bv, beta, &mut cv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive_with_transposes() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.91).cos()).collect();
        // A row-major, B given transposed (n×k row-major).
        let bt: Vec<f64> = (0..n * k).map(|idx| b[(idx % k) * n + idx / k]).collect();
        let mut c = vec![1.0; m * n];
        gemm(m, k, n, 2.0, &a, k, 1, &bt, 1, k, 0.5, &mut c, n, 1);
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                assert!((c[i * n + j] - (2.0 * s + 0.5)).abs() < 1e-12);
            }
        }
    }

    #[test]
    #[should_panic]
    fn gemm_rejects_short_slices() {
        let a = vec![0f32; 5];
        let mut c = vec![0f32; 4];
        gemm(2, 3, 2, 1.0, &a, 3, 1, &a, 2, 1, 0.0, &mut c, 2, 1);
    }
}
