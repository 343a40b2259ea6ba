// Linear (y = x·Wᵀ + b) as tiled GEMMs (kernels/nn.cuh) and per-sample outer products.
// CPU twin: src/cpu/linear.rs. x: [batch, inf], y/dy: [batch, outf], W: [outf, inf].
#include "nn.cuh"

// grid: (ceil(outf / 64), ceil(batch / 64)). y = x·Wᵀ (+ bias).
extern "C" __global__ void dpsgd_linear_fwd(DpsgdLinearArgs a, const float* __restrict__ x,
                                            const float* __restrict__ w,
                                            const float* __restrict__ bias,
                                            float* __restrict__ y) {
    gemm_tile(
        a.batch, a.outf, a.inf, blockIdx.y * NN_BM, blockIdx.x * NN_BN,
        [&](unsigned m, unsigned k) { return x[(size_t)m * a.inf + k]; },
        [&](unsigned k, unsigned n) { return w[(size_t)n * a.inf + k]; },
        [&](unsigned m, unsigned n, float v) {
            y[(size_t)m * a.outf + n] = a.has_bias ? v + bias[n] : v;
        });
}

// grid: (ceil(inf / 64), ceil(batch / 64)). dx = dy·W (overwritten).
extern "C" __global__ void dpsgd_linear_bwd_data(DpsgdLinearArgs a, const float* __restrict__ dy,
                                                 const float* __restrict__ w,
                                                 float* __restrict__ dx) {
    gemm_tile(
        a.batch, a.inf, a.outf, blockIdx.y * NN_BM, blockIdx.x * NN_BN,
        [&](unsigned m, unsigned k) { return dy[(size_t)m * a.outf + k]; },
        [&](unsigned k, unsigned n) { return w[(size_t)k * a.inf + n]; },
        [&](unsigned m, unsigned n, float v) { dx[(size_t)m * a.inf + n] = v; });
}

// grid: (ceil(inf / 64), ceil(outf / 64), min(n_z, 65535)). Block z writes
// Σ_{b in z's examples} dy_bᵀ x_b ([outf, inf]) at out + z·z_stride (+ beta·old).
extern "C" __global__ void dpsgd_linear_wgrad_sum(DpsgdLinearArgs a, const float* __restrict__ dy,
                                                  const float* __restrict__ x,
                                                  float* __restrict__ out) {
    const unsigned nz = (a.batch + a.ex_per - 1) / a.ex_per;
    for (unsigned z = blockIdx.z; z < nz; z += gridDim.z) {
        const unsigned b0 = z * a.ex_per;
        const unsigned nb = min(a.ex_per, a.batch - b0);
        float* o = out + (size_t)z * a.z_stride;
        gemm_tile(
            a.outf, a.inf, nb, blockIdx.y * NN_BM, blockIdx.x * NN_BN,
            [&](unsigned m, unsigned k) { return dy[(size_t)(b0 + k) * a.outf + m]; },
            [&](unsigned k, unsigned n) { return x[(size_t)(b0 + k) * a.inf + n]; },
            [&](unsigned m, unsigned n, float v) {
                store_beta(o + (size_t)m * a.inf + n, v, a.beta);
            });
    }
}

// grid: (ceil(np / 256), min(batch, 65535)). Row b of the per-sample matrix (rows points at
// the layer's segment, row stride z_stride): W part dy_b ⊗ x_b, then the bias part dy_b.
extern "C" __global__ void dpsgd_linear_per_sample(DpsgdLinearArgs a, const float* __restrict__ dy,
                                                   const float* __restrict__ x,
                                                   float* __restrict__ rows) {
    const unsigned long long nw = (unsigned long long)a.outf * a.inf;
    const unsigned long long np = nw + (a.has_bias ? a.outf : 0);
    const unsigned long long idx = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (idx >= np) return;
    for (unsigned b = blockIdx.y; b < a.batch; b += gridDim.y) {
        const float* dyb = dy + (size_t)b * a.outf;
        float v;
        if (idx < nw) {
            const unsigned o = (unsigned)(idx / a.inf), j = (unsigned)(idx % a.inf);
            v = dyb[o] * x[(size_t)b * a.inf + j];
        } else {
            v = dyb[idx - nw];
        }
        rows[(size_t)b * a.z_stride + idx] = v;
    }
}
