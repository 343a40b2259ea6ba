//! Element types of device buffers.
//!
//! Per-sample gradient matrices may be `f32`, `bf16` or `f16` ([`GradElement`]); norms and sums
//! always accumulate in `f32`. Halving the bytes read is the cheapest speed-up a
//! bandwidth-bound kernel has.

use half::{bf16, f16};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for u32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// What the CUDA backend needs of an element type (nothing without the `cuda` feature).
#[cfg(feature = "cuda")]
pub trait DeviceElement: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits {}
#[cfg(feature = "cuda")]
impl<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits> DeviceElement for T {}
/// What the CUDA backend needs of an element type (nothing without the `cuda` feature).
#[cfg(not(feature = "cuda"))]
pub trait DeviceElement {}
#[cfg(not(feature = "cuda"))]
impl<T> DeviceElement for T {}

/// A type a [`Buffer`](crate::Buffer) can hold: `f32`, `u32`, `bf16`, `f16`.
pub trait Element:
    sealed::Sealed + DeviceElement + Copy + Default + Send + Sync + std::fmt::Debug + 'static
{
    /// The type's name, as used in kernel names (`f32`, `u32`, `bf16`, `f16`).
    const NAME: &'static str;
}

impl Element for f32 {
    const NAME: &'static str = "f32";
}
impl Element for u32 {
    const NAME: &'static str = "u32";
}
impl Element for bf16 {
    const NAME: &'static str = "bf16";
}
impl Element for f16 {
    const NAME: &'static str = "f16";
}

/// An element type of per-sample gradient matrices: `f32`, `bf16` or `f16`.
pub trait GradElement: Element {
    /// Widens to `f32` (exact for all three types).
    fn to_f32(self) -> f32;
    /// Narrows from `f32` (round to nearest even).
    fn from_f32(x: f32) -> Self;
    /// Widens a slice into `dst` (same length), vectorised where the CPU allows.
    fn widen(src: &[Self], dst: &mut [f32]);
    /// The slice itself when `Self` is `f32` (no widening needed), else `None`.
    fn as_f32(src: &[Self]) -> Option<&[f32]> {
        let _ = src;
        None
    }
}

impl GradElement for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline]
    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn as_f32(src: &[Self]) -> Option<&[f32]> {
        Some(src)
    }
}

impl GradElement for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    #[inline]
    fn widen(src: &[Self], dst: &mut [f32]) {
        // bf16 is the top half of an f32: a shift, which the compiler vectorises.
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }
}

impl GradElement for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    #[inline]
    fn widen(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}
