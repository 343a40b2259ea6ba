// Conv2d and ConvTranspose2d as implicit GEMMs (kernels/nn.cuh): im2col and its adjoint are
// gathered while loading the shared-memory tiles, never materialised. CPU twin:
// src/cpu/conv.rs (same geometry, same parameter layout).
//
// Three kernels cover both layers (ConvTranspose2d is the adjoint of a convolution):
//   dpsgd_conv_fwd       y_b[co, p]  = Σ_r W[co, r] · im2col(x_b)[r, p] (+ bias[co])
//                        Conv2d forward; ConvTranspose2d backward to its input.
//   dpsgd_conv_bwd_data  dx_b[ci, q] = Σ_{co,ki,kj} W[co, ci, ki, kj] · dy_b[co, oy, ox]
//                        (+ bias[ci]) where oy·s + ki − pad = iy, ox·s + kj − pad = ix:
//                        Conv2d backward to its input; ConvTranspose2d forward.
//   dpsgd_conv_wgrad     dW[m, r] = Σ_{b in block z} Σ_p act_b[m, p] · im2col(img_b)[r, p]:
//                        per-sample weight gradients (one example per z, written into row b of
//                        the [B, P] matrix) or split sums of them (reduced by grad.cu).
#include "nn.cuh"

// im2col(img)[r, p] for one image of geometry g: r = (ci·k + ki)·k + kj, p = oy·ow + ox.
__device__ __forceinline__ float im2col_at(const float* __restrict__ img, const DpsgdConvGeom& g,
                                           unsigned r, unsigned p) {
    const unsigned kj = r % g.k, t = r / g.k, ki = t % g.k, ci = t / g.k;
    const unsigned oy = p / g.ow, ox = p % g.ow;
    const int iy = (int)(oy * g.stride + ki) - (int)g.pad;
    const int ix = (int)(ox * g.stride + kj) - (int)g.pad;
    if (iy < 0 || ix < 0 || iy >= (int)g.h || ix >= (int)g.w) return 0.f;
    return img[((size_t)ci * g.h + iy) * g.w + ix];
}

// grid: (ceil(oh·ow / 64), ceil(m / 64), min(batch, 65535)); examples loop over gridDim.z.
// x: [batch, c, h, w]; w: [m, c·k·k]; bias: [m] (read only when has_bias); y: [batch, m, oh·ow].
extern "C" __global__ void dpsgd_conv_fwd(DpsgdConvArgs a, const float* __restrict__ x,
                                          const float* __restrict__ w,
                                          const float* __restrict__ bias, float* __restrict__ y) {
    const DpsgdConvGeom g = a.g;
    const unsigned L = g.oh * g.ow, KK = g.c * g.k * g.k;
    for (unsigned b = blockIdx.z; b < a.batch; b += gridDim.z) {
        const float* xb = x + (size_t)b * g.c * g.h * g.w;
        float* yb = y + (size_t)b * a.m * L;
        gemm_tile(
            a.m, L, KK, blockIdx.y * NN_BM, blockIdx.x * NN_BN,
            [&](unsigned m, unsigned k) { return w[(size_t)m * KK + k]; },
            [&](unsigned k, unsigned n) { return im2col_at(xb, g, k, n); },
            [&](unsigned m, unsigned n, float v) {
                yb[(size_t)m * L + n] = a.has_bias ? v + bias[m] : v;
            });
    }
}

// grid: (ceil(h·w / 64), ceil(c / 64), min(batch, 65535)).
// dy: [batch, m, oh, ow]; w: [m, c, k, k]; bias: [c]; dx: [batch, c, h, w] (overwritten).
extern "C" __global__ void dpsgd_conv_bwd_data(DpsgdConvArgs a, const float* __restrict__ dy,
                                               const float* __restrict__ w,
                                               const float* __restrict__ bias,
                                               float* __restrict__ dx) {
    const DpsgdConvGeom g = a.g;
    const unsigned L = g.oh * g.ow, HW = g.h * g.w, k2 = g.k * g.k, K = a.m * k2;
    for (unsigned b = blockIdx.z; b < a.batch; b += gridDim.z) {
        const float* dyb = dy + (size_t)b * a.m * L;
        float* dxb = dx + (size_t)b * g.c * HW;
        gemm_tile(
            g.c, HW, K, blockIdx.y * NN_BM, blockIdx.x * NN_BN,
            [&](unsigned ci, unsigned kidx) {
                const unsigned co = kidx / k2, kr = kidx % k2;
                return w[((size_t)co * g.c + ci) * k2 + kr];
            },
            [&](unsigned kidx, unsigned q) {
                const unsigned co = kidx / k2, kr = kidx % k2, ki = kr / g.k, kj = kr % g.k;
                const unsigned iy = q / g.w, ix = q % g.w;
                const int ty = (int)(iy + g.pad) - (int)ki, tx = (int)(ix + g.pad) - (int)kj;
                if (ty < 0 || tx < 0) return 0.f;
                if ((unsigned)ty % g.stride != 0u || (unsigned)tx % g.stride != 0u) return 0.f;
                const unsigned oy = (unsigned)ty / g.stride, ox = (unsigned)tx / g.stride;
                if (oy >= g.oh || ox >= g.ow) return 0.f;
                return dyb[((size_t)co * g.oh + oy) * g.ow + ox];
            },
            [&](unsigned ci, unsigned q, float v) {
                dxb[(size_t)ci * HW + q] = a.has_bias ? v + bias[ci] : v;
            });
    }
}

// grid: (ceil(c·k·k / 64), ceil(m / 64), min(n_z, 65535)) with n_z = ceil(batch / ex_per).
// act: [batch, m, oh·ow] (dy for Conv2d, x for ConvTranspose2d); img: [batch, c, h, w] (x for
// Conv2d, dy for ConvTranspose2d); out: block z writes its [m, c·k·k] sum at out + z·z_stride.
extern "C" __global__ void dpsgd_conv_wgrad(DpsgdConvArgs a, const float* __restrict__ act,
                                            const float* __restrict__ img,
                                            float* __restrict__ out) {
    const DpsgdConvGeom g = a.g;
    const unsigned L = g.oh * g.ow, N = g.c * g.k * g.k;
    const size_t il = (size_t)g.c * g.h * g.w;
    const unsigned nz = (a.batch + a.ex_per - 1) / a.ex_per;
    for (unsigned z = blockIdx.z; z < nz; z += gridDim.z) {
        const unsigned b0 = z * a.ex_per;
        const unsigned nb = min(a.ex_per, a.batch - b0);
        float* o = out + (size_t)z * a.z_stride;
        gemm_tile(
            a.m, N, nb * L, blockIdx.y * NN_BM, blockIdx.x * NN_BN,
            [&](unsigned m, unsigned k) {
                const unsigned e = k / L, p = k % L;
                return act[((size_t)(b0 + e) * a.m + m) * L + p];
            },
            [&](unsigned k, unsigned n) {
                const unsigned e = k / L, p = k % L;
                return im2col_at(img + (size_t)(b0 + e) * il, g, n, p);
            },
            [&](unsigned m, unsigned n, float v) { store_beta(o + (size_t)m * N + n, v, a.beta); });
    }
}
