//! GPU vs CPU for every conv-net layer and loss (`src/cuda/{conv,linear,norm,pool,activation,
//! loss}.rs` against their CPU twins), on seeded random shapes, strides and paddings including
//! batch 1: forward, backward to the input, per-sample gradients (written into rows of a wider
//! `[B, stride]` matrix at an offset, the other columns untouched) and summed gradients
//! (overwritten and accumulated, with and without split scratch); then SampleConvNet end to
//! end through `Sequential` on `Device::Cuda`.
//!
//! Skips without a GPU (or without the `cuda` feature); fails when `DPSGD_REQUIRE_GPU=1`.
//!
//! Tolerances: the GPU sums products in another order (tiles of 16, splits of the batch) than
//! the CPU's GEMM, so every comparison allows a relative error `tol` of the element *or* of the
//! largest element of the tensor (cancellation makes small entries of a sum relatively noisy):
//! 1e-4 for convolution/linear sums of up to a few thousand f32 products, 1e-5 for element-wise
//! layers and pools (the same operations, only `expf`/`tanhf` differ by an ulp or two), 1e-5 for
//! GroupNorm (statistics in f64 on both sides) and 1e-6 for the losses (f64 on both sides).

#[allow(unused_imports)]
use dpsgd::rng::RandomBits;
use dpsgd::Device;

mod common;

use common::gpu;

/// `n` values uniform in [-1, 1) from `rng`.
fn rand_vec(rng: &mut dpsgd::cpu::philox::Philox, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
        .collect()
}

/// Asserts `gpu ≈ cpu` element-wise: relative error `tol` of the element or of the largest
/// element of `cpu` (see the module docs). NaN sentinels must match exactly.
fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], tol: f32) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let scale = cpu
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f32, |m, v| m.max(v.abs()));
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        if c.is_nan() {
            assert!(
                g.is_nan(),
                "{what}[{i}]: gpu {g}, cpu NaN (an untouched column)"
            );
            continue;
        }
        assert!(
            approx::relative_eq!(*g, *c, epsilon = tol * scale.max(1e-30), max_relative = tol),
            "{what}[{i}]: gpu {g} cpu {c} (scale {scale}, tol {tol})"
        );
    }
}

#[cfg(feature = "cuda")]
mod layers {
    use super::{assert_close, gpu, rand_vec};
    use cudarc::driver::CudaViewMut;
    use dpsgd::cpu::activation::{activation_backward, activation_forward, Activation};
    use dpsgd::cpu::conv::*;
    use dpsgd::cpu::grad::ParamGrad;
    use dpsgd::cpu::linear::*;
    use dpsgd::cpu::loss::{self, Reduction};
    use dpsgd::cpu::norm::*;
    use dpsgd::cpu::philox::Philox;
    use dpsgd::cpu::pool::*;
    use dpsgd::cuda::grad::DeviceGrad;
    use dpsgd::cuda::{self, CudaBackend};
    use dpsgd::rng::RandomBits;
    use dpsgd::{Buffer, Device, Error, Result};
    use std::sync::Arc;

    fn backend(dev: &Device) -> &Arc<CudaBackend> {
        match dev {
            Device::Cuda(d) => d.backend(),
            Device::Cpu => panic!("not a GPU"),
        }
    }

    fn up(dev: &Device, v: &[f32]) -> Buffer<f32> {
        Buffer::from_slice(dev, v).unwrap()
    }

    type CpuBwd<'a> = dyn Fn(Option<&mut [f32]>, ParamGrad<'_, f32>) + 'a;
    type GpuBwd<'a> = dyn Fn(
            Option<&mut CudaViewMut<'_, f32>>,
            DeviceGrad<'_>,
            &mut CudaViewMut<'_, f32>,
        ) -> Result<()>
        + 'a;

    /// Backward of one parameterised layer, GPU vs CPU: input gradient with per-sample rows
    /// (stride np + 7, offset 3, NaN sentinels elsewhere), the summed gradient overwritten
    /// with the full split scratch, accumulated without scratch (the one-pass path), and a
    /// call that wants nothing.
    #[allow(clippy::too_many_arguments)]
    fn check_backward(
        name: &str,
        dev: &Device,
        batch: usize,
        np: usize,
        nin: usize,
        scratch_len: usize,
        tol: f32,
        cpu: &CpuBwd<'_>,
        gpu: &GpuBwd<'_>,
    ) {
        let (stride, offset) = (np + 7, 3);
        // Input gradient + per-sample rows.
        let mut rows = vec![f32::NAN; batch * stride];
        let mut dx = vec![0f32; nin];
        cpu(
            Some(&mut dx),
            ParamGrad::PerSample {
                rows: &mut rows,
                stride,
                offset,
            },
        );
        let mut g_rows = up(dev, &vec![f32::NAN; batch * stride]);
        let mut g_dx = up(dev, &vec![f32::NAN; nin]);
        let mut g_scratch = Buffer::<f32>::zeros(dev, scratch_len).unwrap();
        gpu(
            Some(&mut g_dx.cuda_view_mut().unwrap()),
            DeviceGrad::PerSample {
                rows: g_rows.cuda_view_mut().unwrap(),
                stride,
                offset,
            },
            &mut g_scratch.cuda_view_mut().unwrap(),
        )
        .unwrap();
        assert_close(&format!("{name} dx"), &g_dx.to_vec().unwrap(), &dx, tol);
        assert_close(
            &format!("{name} per-sample rows"),
            &g_rows.to_vec().unwrap(),
            &rows,
            tol,
        );

        // Summed gradient, overwritten (split scratch), then accumulated onto g0 (no scratch).
        let mut sum = vec![f32::NAN; np];
        cpu(
            None,
            ParamGrad::Sum {
                grad: &mut sum,
                accumulate: false,
            },
        );
        let mut g_sum = up(dev, &vec![f32::NAN; np]);
        gpu(
            None,
            DeviceGrad::Sum {
                grad: g_sum.cuda_view_mut().unwrap(),
                accumulate: false,
            },
            &mut g_scratch.cuda_view_mut().unwrap(),
        )
        .unwrap();
        assert_close(&format!("{name} sum"), &g_sum.to_vec().unwrap(), &sum, tol);
        let g0: Vec<f32> = (0..np).map(|i| (i % 7) as f32 - 3.0).collect();
        let mut acc = g0.clone();
        cpu(
            None,
            ParamGrad::Sum {
                grad: &mut acc,
                accumulate: true,
            },
        );
        let mut g_acc = up(dev, &g0);
        let mut none = Buffer::<f32>::zeros(dev, 0).unwrap();
        gpu(
            None,
            DeviceGrad::Sum {
                grad: g_acc.cuda_view_mut().unwrap(),
                accumulate: true,
            },
            &mut none.cuda_view_mut().unwrap(),
        )
        .unwrap();
        assert_close(
            &format!("{name} accumulate"),
            &g_acc.to_vec().unwrap(),
            &acc,
            tol,
        );
        // Nothing wanted: no error, nothing written.
        gpu(None, DeviceGrad::None, &mut none.cuda_view_mut().unwrap()).unwrap();
    }

    fn conv_shapes(rng: &mut Philox) -> Vec<Conv2dShape> {
        // SampleConvNet's two convolutions, a many-channel one (several 64-wide tiles), then
        // random small ones.
        let mut v = vec![
            Conv2dShape {
                batch: 3,
                cin: 1,
                h: 28,
                w: 28,
                cout: 16,
                k: 8,
                stride: 2,
                pad: 3,
                bias: true,
            },
            Conv2dShape {
                batch: 1,
                cin: 16,
                h: 13,
                w: 13,
                cout: 32,
                k: 4,
                stride: 2,
                pad: 0,
                bias: true,
            },
            Conv2dShape {
                batch: 2,
                cin: 5,
                h: 11,
                w: 9,
                cout: 70,
                k: 3,
                stride: 1,
                pad: 1,
                bias: false,
            },
        ];
        while v.len() < 16 {
            let s = Conv2dShape {
                batch: if v.len() % 4 == 0 {
                    1
                } else {
                    1 + rng.next_below(5) as usize
                },
                cin: 1 + rng.next_below(4) as usize,
                h: 1 + rng.next_below(12) as usize,
                w: 1 + rng.next_below(12) as usize,
                cout: 1 + rng.next_below(5) as usize,
                k: 1 + rng.next_below(5) as usize,
                stride: 1 + rng.next_below(3) as usize,
                pad: rng.next_below(3) as usize,
                bias: rng.next_below(2) == 0,
            };
            if s.geom().is_ok() {
                v.push(s);
            }
        }
        v
    }

    #[test]
    fn conv2d_gpu_matches_cpu() {
        let Some(dev) = gpu("conv2d_gpu_matches_cpu") else {
            return;
        };
        let be = backend(&dev);
        let mut rng = Philox::new(0xc0417, 0);
        for s in conv_shapes(&mut rng) {
            let name = format!("{s:?}");
            let g = s.geom().unwrap();
            let (nin, nout, np) = (
                s.batch * g.in_len(),
                s.batch * s.cout * g.out_positions(),
                s.num_params(),
            );
            let (x, p, dy) = (
                rand_vec(&mut rng, nin),
                rand_vec(&mut rng, np),
                rand_vec(&mut rng, nout),
            );
            let mut scratch = vec![0f32; s.scratch_len(1).unwrap()];
            let mut y = vec![0f32; nout];
            conv2d_forward(&s, &x, &p, &mut y, &mut scratch).unwrap();
            let (gx, gp, gdy) = (up(&dev, &x), up(&dev, &p), up(&dev, &dy));
            let mut gy = up(&dev, &vec![f32::NAN; nout]);
            cuda::conv::conv2d_forward(
                be,
                &s,
                &gx.cuda_view().unwrap(),
                &gp.cuda_view().unwrap(),
                &mut gy.cuda_view_mut().unwrap(),
            )
            .unwrap();
            // 1e-4: sums of up to cin·k·k = 256 products.
            assert_close(&format!("{name} y"), &gy.to_vec().unwrap(), &y, 1e-4);
            let scratch = std::cell::RefCell::new(scratch);
            check_backward(
                &name,
                &dev,
                s.batch,
                np,
                nin,
                cuda::conv::conv2d_scratch_len(&s),
                1e-4,
                &|dx, grad| {
                    conv2d_backward(&s, &x, &p, &dy, dx, grad, &mut scratch.borrow_mut()).unwrap()
                },
                &|dx, grad, scr| {
                    cuda::conv::conv2d_backward(
                        be,
                        &s,
                        &gx.cuda_view().unwrap(),
                        &gp.cuda_view().unwrap(),
                        &gdy.cuda_view().unwrap(),
                        dx,
                        grad,
                        scr,
                    )
                },
            );
        }
    }

    #[test]
    fn conv_transpose2d_gpu_matches_cpu() {
        let Some(dev) = gpu("conv_transpose2d_gpu_matches_cpu") else {
            return;
        };
        let be = backend(&dev);
        let mut rng = Philox::new(0xc0417, 1);
        // DCGAN-like upsampling (k 4, stride 2, pad 1), a many-channel one, then random ones.
        let mut cases = vec![
            ConvTranspose2dShape {
                batch: 2,
                cin: 8,
                h: 7,
                w: 7,
                cout: 4,
                k: 4,
                stride: 2,
                pad: 1,
                bias: false,
            },
            ConvTranspose2dShape {
                batch: 1,
                cin: 3,
                h: 5,
                w: 6,
                cout: 70,
                k: 3,
                stride: 1,
                pad: 0,
                bias: true,
            },
        ];
        while cases.len() < 14 {
            let s = ConvTranspose2dShape {
                batch: if cases.len() % 4 == 0 {
                    1
                } else {
                    1 + rng.next_below(4) as usize
                },
                cin: 1 + rng.next_below(4) as usize,
                h: 1 + rng.next_below(6) as usize,
                w: 1 + rng.next_below(6) as usize,
                cout: 1 + rng.next_below(4) as usize,
                k: 1 + rng.next_below(5) as usize,
                stride: 1 + rng.next_below(3) as usize,
                pad: rng.next_below(3) as usize,
                bias: rng.next_below(2) == 0,
            };
            if s.geom().is_ok() {
                cases.push(s);
            }
        }
        for s in cases {
            let name = format!("{s:?}");
            let g = s.geom().unwrap();
            let (nin, nout, np) = (
                s.batch * s.cin * s.h * s.w,
                s.batch * g.in_len(),
                s.num_params(),
            );
            let (x, p, dy) = (
                rand_vec(&mut rng, nin),
                rand_vec(&mut rng, np),
                rand_vec(&mut rng, nout),
            );
            let mut scratch = vec![0f32; s.scratch_len(1).unwrap()];
            let mut y = vec![0f32; nout];
            conv_transpose2d_forward(&s, &x, &p, &mut y, &mut scratch).unwrap();
            let (gx, gp, gdy) = (up(&dev, &x), up(&dev, &p), up(&dev, &dy));
            let mut gy = up(&dev, &vec![f32::NAN; nout]);
            cuda::conv::conv_transpose2d_forward(
                be,
                &s,
                &gx.cuda_view().unwrap(),
                &gp.cuda_view().unwrap(),
                &mut gy.cuda_view_mut().unwrap(),
            )
            .unwrap();
            assert_close(&format!("{name} y"), &gy.to_vec().unwrap(), &y, 1e-4);
            let scratch = std::cell::RefCell::new(scratch);
            check_backward(
                &name,
                &dev,
                s.batch,
                np,
                nin,
                cuda::conv::conv_transpose2d_scratch_len(&s),
                1e-4,
                &|dx, grad| {
                    conv_transpose2d_backward(&s, &x, &p, &dy, dx, grad, &mut scratch.borrow_mut())
                        .unwrap()
                },
                &|dx, grad, scr| {
                    cuda::conv::conv_transpose2d_backward(
                        be,
                        &s,
                        &gx.cuda_view().unwrap(),
                        &gp.cuda_view().unwrap(),
                        &gdy.cuda_view().unwrap(),
                        dx,
                        grad,
                        scr,
                    )
                },
            );
        }
    }

    #[test]
    fn linear_gpu_matches_cpu() {
        let Some(dev) = gpu("linear_gpu_matches_cpu") else {
            return;
        };
        let be = backend(&dev);
        let mut rng = Philox::new(0x11ea, 0);
        // SampleConvNet's two layers at B = 1 and a large batch (several tiles in every
        // dimension, many splits), then random ones.
        let mut cases = vec![
            LinearShape {
                batch: 1,
                inf: 512,
                outf: 32,
                bias: true,
            },
            LinearShape {
                batch: 200,
                inf: 32,
                outf: 10,
                bias: true,
            },
            LinearShape {
                batch: 67,
                inf: 130,
                outf: 70,
                bias: false,
            },
        ];
        for i in 0..10 {
            cases.push(LinearShape {
                batch: if i % 3 == 0 {
                    1
                } else {
                    1 + rng.next_below(9) as usize
                },
                inf: 1 + rng.next_below(20) as usize,
                outf: 1 + rng.next_below(20) as usize,
                bias: rng.next_below(2) == 0,
            });
        }
        for s in cases {
            let name = format!("{s:?}");
            let (nin, nout, np) = (s.batch * s.inf, s.batch * s.outf, s.num_params());
            let (x, p, dy) = (
                rand_vec(&mut rng, nin),
                rand_vec(&mut rng, np),
                rand_vec(&mut rng, nout),
            );
            let mut y = vec![0f32; nout];
            linear_forward(&s, &x, &p, &mut y).unwrap();
            let (gx, gp, gdy) = (up(&dev, &x), up(&dev, &p), up(&dev, &dy));
            let mut gy = up(&dev, &vec![f32::NAN; nout]);
            cuda::linear::linear_forward(
                be,
                &s,
                &gx.cuda_view().unwrap(),
                &gp.cuda_view().unwrap(),
                &mut gy.cuda_view_mut().unwrap(),
            )
            .unwrap();
            // 1e-4: sums of up to 512 products (and of 200 examples for the summed gradient).
            assert_close(&format!("{name} y"), &gy.to_vec().unwrap(), &y, 1e-4);
            let scratch = std::cell::RefCell::new(vec![0f32; s.scratch_len(1)]);
            check_backward(
                &name,
                &dev,
                s.batch,
                np,
                nin,
                cuda::linear::linear_scratch_len(&s),
                1e-4,
                &|dx, grad| {
                    linear_backward(&s, &x, &p, &dy, dx, grad, &mut scratch.borrow_mut()).unwrap()
                },
                &|dx, grad, scr| {
                    cuda::linear::linear_backward(
                        be,
                        &s,
                        &gx.cuda_view().unwrap(),
                        &gp.cuda_view().unwrap(),
                        &gdy.cuda_view().unwrap(),
                        dx,
                        grad,
                        scr,
                    )
                },
            );
        }
    }

    #[test]
    fn group_norm_gpu_matches_cpu() {
        let Some(dev) = gpu("group_norm_gpu_matches_cpu") else {
            return;
        };
        let be = backend(&dev);
        let mut rng = Philox::new(0x6a0, 0);
        let mut cases = vec![
            GroupNormShape {
                batch: 1,
                c: 64,
                spatial: 49,
                groups: 8,
                eps: 1e-5,
            },
            GroupNormShape {
                batch: 3,
                c: 6,
                spatial: 1000,
                groups: 3,
                eps: 1e-5,
            },
        ];
        for i in 0..8 {
            let groups = 1 + rng.next_below(4) as usize;
            cases.push(GroupNormShape {
                batch: if i % 3 == 0 {
                    1
                } else {
                    1 + rng.next_below(5) as usize
                },
                c: groups * (1 + rng.next_below(4) as usize),
                spatial: 1 + rng.next_below(40) as usize,
                groups,
                eps: 1e-5,
            });
        }
        for s in cases {
            let name = format!("{s:?}");
            let (n, np) = (s.batch * s.c * s.spatial, s.num_params());
            let x: Vec<f32> = rand_vec(&mut rng, n)
                .iter()
                .map(|v| 3.0 * v + 0.5)
                .collect();
            let mut p = rand_vec(&mut rng, np);
            p[..s.c].iter_mut().for_each(|g| *g += 1.0);
            let dy = rand_vec(&mut rng, n);
            let mut y = vec![0f32; n];
            group_norm_forward(&s, &x, &p, &mut y).unwrap();
            let (gx, gp, gdy) = (up(&dev, &x), up(&dev, &p), up(&dev, &dy));
            let mut gy = up(&dev, &vec![f32::NAN; n]);
            cuda::norm::group_norm_forward(
                be,
                &s,
                &gx.cuda_view().unwrap(),
                &gp.cuda_view().unwrap(),
                &mut gy.cuda_view_mut().unwrap(),
            )
            .unwrap();
            // 1e-5: statistics in f64 on both sides, the rest element-wise in f32; the
            // backward's (dγ, dβ) are f64 sums rounded once.
            assert_close(&format!("{name} y"), &gy.to_vec().unwrap(), &y, 1e-5);
            let scratch = std::cell::RefCell::new(vec![0f32; s.scratch_len(1)]);
            let gpu_bwd = |dx: Option<&mut CudaViewMut<'_, f32>>,
                           grad: DeviceGrad<'_>,
                           scr: &mut CudaViewMut<'_, f32>| {
                cuda::norm::group_norm_backward(
                    be,
                    &s,
                    &gx.cuda_view().unwrap(),
                    &gp.cuda_view().unwrap(),
                    &gdy.cuda_view().unwrap(),
                    dx,
                    grad,
                    scr,
                )
            };
            // A summed gradient needs the per-example scratch: the accumulate pass of
            // check_backward runs without it, so run the GroupNorm check with it here first.
            let mut sum = vec![0f32; np];
            group_norm_backward(
                &s,
                &x,
                &p,
                &dy,
                None,
                ParamGrad::Sum {
                    grad: &mut sum,
                    accumulate: false,
                },
                &mut scratch.borrow_mut(),
            )
            .unwrap();
            let mut g_sum = up(&dev, &vec![f32::NAN; np]);
            let mut g_scr =
                Buffer::<f32>::zeros(&dev, cuda::norm::group_norm_scratch_len(&s)).unwrap();
            gpu_bwd(
                None,
                DeviceGrad::Sum {
                    grad: g_sum.cuda_view_mut().unwrap(),
                    accumulate: false,
                },
                &mut g_scr.cuda_view_mut().unwrap(),
            )
            .unwrap();
            assert_close(&format!("{name} sum"), &g_sum.to_vec().unwrap(), &sum, 1e-5);
            // Without scratch a summed gradient is a typed error, not a panic.
            let mut none = Buffer::<f32>::zeros(&dev, 0).unwrap();
            let e = gpu_bwd(
                None,
                DeviceGrad::Sum {
                    grad: g_sum.cuda_view_mut().unwrap(),
                    accumulate: true,
                },
                &mut none.cuda_view_mut().unwrap(),
            );
            assert!(matches!(e, Err(Error::Shape { .. })), "{name}: {e:?}");
            // Per-sample rows and dx via the shared checker, whose accumulate pass gets the
            // scratch through this wrapper.
            let g_scr = std::cell::RefCell::new(g_scr);
            check_backward(
                &name,
                &dev,
                s.batch,
                np,
                n,
                0,
                1e-5,
                &|dx, grad| {
                    group_norm_backward(&s, &x, &p, &dy, dx, grad, &mut scratch.borrow_mut())
                        .unwrap()
                },
                &|dx, grad, _| gpu_bwd(dx, grad, &mut g_scr.borrow_mut().cuda_view_mut().unwrap()),
            );
        }
    }

    #[test]
    fn pools_and_activations_gpu_match_cpu() {
        let Some(dev) = gpu("pools_and_activations_gpu_match_cpu") else {
            return;
        };
        let be = backend(&dev);
        let mut rng = Philox::new(0x9001, 0);
        let mut cases = vec![PoolShape {
            batch: 3,
            c: 16,
            h: 14,
            w: 14,
            k: 2,
            stride: 1,
        }];
        while cases.len() < 12 {
            let s = PoolShape {
                batch: if cases.len() % 3 == 0 {
                    1
                } else {
                    1 + rng.next_below(4) as usize
                },
                c: 1 + rng.next_below(4) as usize,
                h: 1 + rng.next_below(9) as usize,
                w: 1 + rng.next_below(9) as usize,
                k: 1 + rng.next_below(4) as usize,
                stride: 1 + rng.next_below(3) as usize,
            };
            if s.out_hw().is_ok() {
                cases.push(s);
            }
        }
        for s in cases {
            let name = format!("{s:?}");
            let (oh, ow) = s.out_hw().unwrap();
            let (nin, nout) = (s.batch * s.c * s.h * s.w, s.batch * s.c * oh * ow);
            let mut x = rand_vec(&mut rng, nin);
            // Ties: the first maximum of a window must win on both sides.
            for v in x.iter_mut().step_by(5) {
                *v = 0.5;
            }
            let dy = rand_vec(&mut rng, nout);
            let (gx, gdy) = (up(&dev, &x), up(&dev, &dy));
            for max in [true, false] {
                let mut y = vec![0f32; nout];
                let mut dx = vec![0f32; nin];
                let mut gy = up(&dev, &vec![f32::NAN; nout]);
                let mut gdx = up(&dev, &vec![f32::NAN; nin]);
                if max {
                    max_pool2d_forward(&s, &x, &mut y).unwrap();
                    max_pool2d_backward(&s, &x, &dy, &mut dx).unwrap();
                    cuda::pool::max_pool2d_forward(
                        be,
                        &s,
                        &gx.cuda_view().unwrap(),
                        &mut gy.cuda_view_mut().unwrap(),
                    )
                    .unwrap();
                    cuda::pool::max_pool2d_backward(
                        be,
                        &s,
                        &gx.cuda_view().unwrap(),
                        &gdy.cuda_view().unwrap(),
                        &mut gdx.cuda_view_mut().unwrap(),
                    )
                    .unwrap();
                } else {
                    avg_pool2d_forward(&s, &x, &mut y).unwrap();
                    avg_pool2d_backward(&s, &dy, &mut dx).unwrap();
                    cuda::pool::avg_pool2d_forward(
                        be,
                        &s,
                        &gx.cuda_view().unwrap(),
                        &mut gy.cuda_view_mut().unwrap(),
                    )
                    .unwrap();
                    cuda::pool::avg_pool2d_backward(
                        be,
                        &s,
                        &gdy.cuda_view().unwrap(),
                        &mut gdx.cuda_view_mut().unwrap(),
                    )
                    .unwrap();
                }
                // 1e-5: the same sums in the same order (an FMA may round once less).
                assert_close(
                    &format!("{name} max={max} y"),
                    &gy.to_vec().unwrap(),
                    &y,
                    1e-5,
                );
                assert_close(
                    &format!("{name} max={max} dx"),
                    &gdx.to_vec().unwrap(),
                    &dx,
                    1e-5,
                );
            }
        }
        // A window larger than the input is a typed error.
        let bad = PoolShape {
            batch: 1,
            c: 1,
            h: 2,
            w: 2,
            k: 3,
            stride: 1,
        };
        let (gx, mut gy) = (up(&dev, &[0.0; 4]), up(&dev, &[0.0; 1]));
        let e = cuda::pool::max_pool2d_forward(
            be,
            &bad,
            &gx.cuda_view().unwrap(),
            &mut gy.cuda_view_mut().unwrap(),
        );
        assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");

        for act in [
            Activation::Relu,
            Activation::LeakyRelu(0.2),
            Activation::Tanh,
            Activation::Sigmoid,
        ] {
            for n in [1usize, 1000, 70_001] {
                let x: Vec<f32> = rand_vec(&mut rng, n).iter().map(|v| 6.0 * v).collect();
                let dy = rand_vec(&mut rng, n);
                let (mut y, mut dx) = (vec![0f32; n], vec![0f32; n]);
                activation_forward(act, &x, &mut y).unwrap();
                activation_backward(act, &x, &y, &dy, &mut dx).unwrap();
                let (gx, gdy) = (up(&dev, &x), up(&dev, &dy));
                let (mut gyb, mut gdx) =
                    (up(&dev, &vec![f32::NAN; n]), up(&dev, &vec![f32::NAN; n]));
                cuda::activation::activation_forward(
                    be,
                    act,
                    &gx.cuda_view().unwrap(),
                    &mut gyb.cuda_view_mut().unwrap(),
                )
                .unwrap();
                // The backward reads the CPU's y so that only the kernel itself is compared.
                let gyc = up(&dev, &y);
                cuda::activation::activation_backward(
                    be,
                    act,
                    &gx.cuda_view().unwrap(),
                    &gyc.cuda_view().unwrap(),
                    &gdy.cuda_view().unwrap(),
                    &mut gdx.cuda_view_mut().unwrap(),
                )
                .unwrap();
                // 1e-5: expf/tanhf differ from the CPU's by an ulp or two.
                assert_close(
                    &format!("{act:?} n={n} y"),
                    &gyb.to_vec().unwrap(),
                    &y,
                    1e-5,
                );
                assert_close(
                    &format!("{act:?} n={n} dx"),
                    &gdx.to_vec().unwrap(),
                    &dx,
                    1e-5,
                );
            }
        }
    }

    #[test]
    fn losses_gpu_match_cpu() {
        let Some(dev) = gpu("losses_gpu_match_cpu") else {
            return;
        };
        let be = backend(&dev);
        let mut rng = Philox::new(0x1055, 0);
        for (batch, classes) in [(1usize, 10usize), (256, 10), (7, 1), (33, 100)] {
            let z: Vec<f32> = rand_vec(&mut rng, batch * classes)
                .iter()
                .map(|v| 8.0 * v)
                .collect();
            let t: Vec<u32> = (0..batch)
                .map(|_| rng.next_below(classes as u64) as u32)
                .collect();
            let (gz, gt) = (up(&dev, &z), Buffer::from_slice(&dev, &t).unwrap());
            let mut losses = backend(&dev).alloc_zeros::<f64>(batch).unwrap();
            for red in [Reduction::Sum, Reduction::Mean] {
                let mut d = vec![0f32; batch * classes];
                let l = loss::cross_entropy(&z, classes, &t, red, Some(&mut d)).unwrap();
                let mut gd = up(&dev, &vec![f32::NAN; batch * classes]);
                let gl = cuda::loss::cross_entropy(
                    be,
                    &gz.cuda_view().unwrap(),
                    classes,
                    &gt.cuda_view().unwrap(),
                    red,
                    Some(&mut gd.cuda_view_mut().unwrap()),
                    &mut losses.slice_mut(..),
                )
                .unwrap();
                // 1e-6 (losses: f64 on both sides, summed in the same order; gradients rounded
                // once to f32 from f64).
                approx::assert_relative_eq!(gl, l, max_relative = 1e-9);
                assert_close(
                    &format!("CE {batch}x{classes} {red:?}"),
                    &gd.to_vec().unwrap(),
                    &d,
                    1e-6,
                );
            }
            // Without a gradient, the same loss.
            let gl = cuda::loss::cross_entropy(
                be,
                &gz.cuda_view().unwrap(),
                classes,
                &gt.cuda_view().unwrap(),
                Reduction::Sum,
                None,
                &mut losses.slice_mut(..),
            )
            .unwrap();
            let l = loss::cross_entropy(&z, classes, &t, Reduction::Sum, None).unwrap();
            approx::assert_relative_eq!(gl, l, max_relative = 1e-9);
        }
        // A target out of range and a NaN logit are the CPU's typed errors.
        let gz = up(&dev, &[0.0, 1.0, f32::NAN, 0.0]);
        let mut losses = backend(&dev).alloc_zeros::<f64>(2).unwrap();
        let bad_t = Buffer::from_slice(&dev, &[0u32, 5]).unwrap();
        let e = cuda::loss::cross_entropy(
            be,
            &up(&dev, &[0.0; 4]).cuda_view().unwrap(),
            2,
            &bad_t.cuda_view().unwrap(),
            Reduction::Sum,
            None,
            &mut losses.slice_mut(..),
        );
        assert!(matches!(e, Err(Error::InvalidParameter { .. })), "{e:?}");
        let ok_t = Buffer::from_slice(&dev, &[0u32, 1]).unwrap();
        let e = cuda::loss::cross_entropy(
            be,
            &gz.cuda_view().unwrap(),
            2,
            &ok_t.cuda_view().unwrap(),
            Reduction::Sum,
            None,
            &mut losses.slice_mut(..),
        );
        assert!(matches!(e, Err(Error::NonFinite { .. })), "{e:?}");

        for n in [1usize, 100, 5000] {
            let z: Vec<f32> = rand_vec(&mut rng, n).iter().map(|v| 10.0 * v).collect();
            let p: Vec<f32> = rand_vec(&mut rng, n)
                .iter()
                .map(|v| 0.5 + 0.499 * v)
                .collect();
            let t: Vec<f32> = (0..n)
                .map(|i| {
                    if i % 3 == 0 {
                        1.0
                    } else {
                        (i % 5) as f32 / 4.0
                    }
                })
                .collect();
            let (gz, gp, gt) = (up(&dev, &z), up(&dev, &p), up(&dev, &t));
            let mut losses = backend(&dev).alloc_zeros::<f64>(n).unwrap();
            for red in [Reduction::Sum, Reduction::Mean] {
                let mut d = vec![0f32; n];
                let l = loss::bce_with_logits(&z, &t, red, Some(&mut d)).unwrap();
                let mut gd = up(&dev, &vec![f32::NAN; n]);
                let gl = cuda::loss::bce_with_logits(
                    be,
                    &gz.cuda_view().unwrap(),
                    &gt.cuda_view().unwrap(),
                    red,
                    Some(&mut gd.cuda_view_mut().unwrap()),
                    &mut losses.slice_mut(..),
                )
                .unwrap();
                approx::assert_relative_eq!(gl, l, max_relative = 1e-9);
                assert_close(
                    &format!("BCE-logits n={n} {red:?}"),
                    &gd.to_vec().unwrap(),
                    &d,
                    1e-6,
                );
                let l = loss::bce(&p, &t, red, Some(&mut d)).unwrap();
                let gl = cuda::loss::bce(
                    be,
                    &gp.cuda_view().unwrap(),
                    &gt.cuda_view().unwrap(),
                    red,
                    Some(&mut gd.cuda_view_mut().unwrap()),
                    &mut losses.slice_mut(..),
                )
                .unwrap();
                approx::assert_relative_eq!(gl, l, max_relative = 1e-9);
                assert_close(
                    &format!("BCE n={n} {red:?}"),
                    &gd.to_vec().unwrap(),
                    &d,
                    1e-6,
                );
            }
        }
        // A probability outside [0, 1] is the CPU's typed error.
        let mut losses = backend(&dev).alloc_zeros::<f64>(2).unwrap();
        let e = cuda::loss::bce(
            be,
            &up(&dev, &[0.5, 1.5]).cuda_view().unwrap(),
            &up(&dev, &[1.0, 0.0]).cuda_view().unwrap(),
            Reduction::Sum,
            None,
            &mut losses.slice_mut(..),
        );
        assert!(matches!(e, Err(Error::InvalidParameter { .. })), "{e:?}");
    }

    #[test]
    fn shape_errors_are_typed() {
        let Some(dev) = gpu("shape_errors_are_typed") else {
            return;
        };
        let be = backend(&dev);
        // A kernel larger than the padded input.
        let s = Conv2dShape {
            batch: 1,
            cin: 1,
            h: 3,
            w: 3,
            cout: 1,
            k: 8,
            stride: 1,
            pad: 2,
            bias: false,
        };
        let (x, p) = (up(&dev, &[0.0; 9]), up(&dev, &[0.0; 64]));
        let mut y = up(&dev, &[0.0; 1]);
        let e = cuda::conv::conv2d_forward(
            be,
            &s,
            &x.cuda_view().unwrap(),
            &p.cuda_view().unwrap(),
            &mut y.cuda_view_mut().unwrap(),
        );
        assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
        // A per-sample matrix too small for the batch.
        let s = LinearShape {
            batch: 2,
            inf: 3,
            outf: 2,
            bias: true,
        };
        let (x, p, dy) = (
            up(&dev, &[0.0; 6]),
            up(&dev, &[0.0; 8]),
            up(&dev, &[0.0; 4]),
        );
        let mut rows = up(&dev, &[0.0; 8]);
        let mut scr = Buffer::<f32>::zeros(&dev, 0).unwrap();
        let e = cuda::linear::linear_backward(
            be,
            &s,
            &x.cuda_view().unwrap(),
            &p.cuda_view().unwrap(),
            &dy.cuda_view().unwrap(),
            None,
            DeviceGrad::PerSample {
                rows: rows.cuda_view_mut().unwrap(),
                stride: 8,
                offset: 0,
            },
            &mut scr.cuda_view_mut().unwrap(),
        );
        assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
    }
}

/// Targets for a model's output: class indices (cross-entropy) or per-output values (BCE).
type Targets = (Option<Vec<u32>>, Option<Vec<f32>>);

/// One model on the CPU and on the GPU from the same seed: forward, loss, backward with
/// per-sample rows and the input gradient, then the summed gradient (overwritten, then
/// accumulated), compared with `tol` (see the module docs).
fn model_gpu_vs_cpu(
    name: &str,
    dev: &Device,
    build: &dyn Fn(&Device) -> dpsgd::Result<dpsgd::nn::Sequential>,
    batch: usize,
    loss: &dyn Fn(&[f32]) -> Targets,
    tol: f32,
) {
    use dpsgd::cpu::loss::Reduction;
    use dpsgd::nn::{Grads, Loss};
    use dpsgd::Buffer;
    let cpu = build(&Device::Cpu).unwrap();
    let gpum = build(dev).unwrap();
    assert_eq!(
        gpum.params().to_vec().unwrap(),
        cpu.params().to_vec().unwrap(),
        "{name}: init"
    );
    let per: usize = cpu.input_shape().iter().product();
    let mut rng = dpsgd::cpu::philox::Philox::new(0x5eed, batch as u64);
    let x = rand_vec(&mut rng, batch * per);
    let p = cpu.num_params();
    let (mut wc, mut wg) = (
        cpu.workspace(batch).unwrap(),
        gpum.workspace(batch).unwrap(),
    );
    cpu.forward_slice(&mut wc, &x).unwrap();
    // The GPU model takes a device buffer.
    let xg = Buffer::from_slice(dev, &x).unwrap();
    gpum.forward(&mut wg, &xg).unwrap();
    assert_close(
        &format!("{name} B={batch} output"),
        &wg.output_vec().unwrap(),
        wc.output(),
        tol,
    );
    let (ce, bt) = loss(wc.output());
    let l = |m: &dpsgd::nn::Sequential, w: &mut dpsgd::nn::Workspace| match (&ce, &bt) {
        (Some(t), _) => m.loss(w, Loss::CrossEntropy(t), Reduction::Sum).unwrap(),
        (_, Some(t)) => m.loss(w, Loss::BceWithLogits(t), Reduction::Mean).unwrap(),
        _ => unreachable!(),
    };
    let (lc, lg) = (l(&cpu, &mut wc), l(&gpum, &mut wg));
    assert!(
        approx::relative_eq!(lg, lc, max_relative = tol as f64 * 10.0),
        "{name} B={batch} loss gpu {lg} cpu {lc}"
    );
    // Per-sample gradients + the input gradient.
    let mut rc = Buffer::from_slice(&Device::Cpu, &vec![0f32; batch * p]).unwrap();
    let mut rg = Buffer::from_slice(dev, &vec![f32::NAN; batch * p]).unwrap();
    cpu.backward(&mut wc, Grads::PerSample(&mut rc), true)
        .unwrap();
    gpum.backward(&mut wg, Grads::PerSample(&mut rg), true)
        .unwrap();
    let (rc, rg) = (rc.to_vec().unwrap(), rg.to_vec().unwrap());
    for i in 0..batch {
        for info in cpu.param_info() {
            let r = i * p + info.range.start..i * p + info.range.end;
            assert_close(
                &format!("{name} B={batch} example {i} {}", info.name),
                &rg[r.clone()],
                &rc[r],
                tol,
            );
        }
    }
    assert_close(
        &format!("{name} B={batch} input grad"),
        &wg.input_grad_vec().unwrap().unwrap(),
        wc.input_grad().unwrap(),
        tol,
    );
    // Summed gradient, overwritten then accumulated (a second loss + backward).
    for accumulate in [false, true] {
        let mut sc = Buffer::from_slice(&Device::Cpu, &vec![1f32; p]).unwrap();
        let mut sg = Buffer::from_slice(dev, &vec![1f32; p]).unwrap();
        l(&cpu, &mut wc);
        l(&gpum, &mut wg);
        cpu.backward(
            &mut wc,
            Grads::Sum {
                grad: &mut sc,
                accumulate,
            },
            false,
        )
        .unwrap();
        gpum.backward(
            &mut wg,
            Grads::Sum {
                grad: &mut sg,
                accumulate,
            },
            false,
        )
        .unwrap();
        let (sc, sg) = (sc.to_vec().unwrap(), sg.to_vec().unwrap());
        for info in cpu.param_info() {
            let r = info.range.clone();
            assert_close(
                &format!("{name} B={batch} sum(acc={accumulate}) {}", info.name),
                &sg[r.clone()],
                &sc[r],
                tol,
            );
        }
    }
}

#[test]
fn sample_conv_net_gpu_matches_cpu() {
    let Some(dev) = gpu("sample_conv_net_gpu_matches_cpu") else {
        return;
    };
    let ce = |out: &[f32]| {
        let t = (0..out.len() / 10).map(|i| (i * 7 % 10) as u32).collect();
        (Some(t), None)
    };
    // 1e-4 relative to the element or to the tensor's largest element: every layer adds its
    // own reordering error, and the per-sample rows of the first conv sum 196 positions.
    for batch in [1usize, 5, 64] {
        model_gpu_vs_cpu(
            "SampleConvNet",
            &dev,
            &|d| dpsgd::nn::models::sample_conv_net(d, 7),
            batch,
            &ce,
            1e-4,
        );
        model_gpu_vs_cpu(
            "SampleConvNet-Tanh",
            &dev,
            &|d| dpsgd::nn::models::sample_conv_net_tanh(d, 8),
            batch,
            &ce,
            1e-4,
        );
    }
}

#[test]
fn dcgan_gpu_matches_cpu() {
    let Some(dev) = gpu("dcgan_gpu_matches_cpu") else {
        return;
    };
    use dpsgd::nn::models::{dcgan_discriminator, dcgan_generator, DcganConfig};
    let bce = |out: &[f32]| {
        (
            None,
            Some(
                out.iter()
                    .enumerate()
                    .map(|(i, _)| (i % 2) as f32)
                    .collect(),
            ),
        )
    };
    let cfg = DcganConfig {
        ngf: 8,
        ndf: 8,
        groups: 4,
        nz: 16,
        ..Default::default()
    };
    let cfg32 = DcganConfig {
        image_size: 32,
        ..cfg
    };
    for batch in [1usize, 3] {
        // Discriminators (Conv2d, GroupNorm, LeakyReLU, BCE with logits) and generators
        // (ConvTranspose2d, GroupNorm, ReLU, Tanh; a BCE on the image as a stand-in loss).
        for c in [cfg, cfg32] {
            model_gpu_vs_cpu(
                "DCGAN-D",
                &dev,
                &|d| dcgan_discriminator(d, &c, 3),
                batch,
                &bce,
                1e-4,
            );
            model_gpu_vs_cpu(
                "DCGAN-G",
                &dev,
                &|d| dcgan_generator(d, &c, 4),
                batch,
                &bce,
                1e-4,
            );
        }
    }
}

/// `Layer::Unflatten` (device copies both ways) between a Linear and a Conv2d, the shape of a
/// generator's first layers.
#[test]
fn unflatten_gpu_matches_cpu() {
    let Some(dev) = gpu("unflatten_gpu_matches_cpu") else {
        return;
    };
    let ce = |out: &[f32]| {
        let t = (0..out.len() / 3).map(|i| (i % 3) as u32).collect();
        (Some(t), None)
    };
    let build = |d: &Device| {
        dpsgd::nn::Sequential::builder(&[8])
            .linear(32, true)
            .push(dpsgd::nn::Layer::Unflatten {
                shape: vec![2, 4, 4],
            })
            .conv2d(3, 3, 1, 1, true)
            .relu()
            .flatten()
            .linear(3, true)
            .build(d, 5)
    };
    for batch in [1usize, 4] {
        model_gpu_vs_cpu("Linear-Unflatten-Conv2d", &dev, &build, batch, &ce, 1e-4);
    }
}

#[test]
fn gpu_model_rejects_host_buffers_and_foreign_workspaces() {
    let Some(dev) = gpu("gpu_model_rejects_host_buffers_and_foreign_workspaces") else {
        return;
    };
    use dpsgd::nn::{models, Grads};
    use dpsgd::Buffer;
    let m = models::sample_conv_net(&dev, 1).unwrap();
    let cpu = models::sample_conv_net(&Device::Cpu, 1).unwrap();
    let mut ws = m.workspace(2).unwrap();
    // A CPU workspace for the GPU model, and the GPU workspace for the CPU model: typed errors.
    let mut wc = cpu.workspace(2).unwrap();
    assert!(m.forward_slice(&mut wc, &[0.0; 2 * 784]).is_err());
    assert!(cpu.forward_slice(&mut ws, &[0.0; 2 * 784]).is_err());
    // A batch too large, and a host per-sample matrix for a GPU model.
    assert!(m.forward_slice(&mut ws, &[0.0; 3 * 784]).is_err());
    m.forward_slice(&mut ws, &[0.1; 2 * 784]).unwrap();
    m.set_output_grad(&mut ws, &[0.5; 20]).unwrap();
    let mut host = Buffer::from_slice(&Device::Cpu, &vec![0f32; 2 * m.num_params()]).unwrap();
    let e = m.backward(&mut ws, Grads::PerSample(&mut host), false);
    assert!(
        matches!(e, Err(dpsgd::Error::DeviceMismatch { .. })),
        "{e:?}"
    );
}
