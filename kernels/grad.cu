// Reductions behind the parameter gradients of the layer kernels (CPU twin: the chunked sums of
// src/cpu/grad.rs): bias gradients (a sum over positions, per example or over the batch) and
// the ordered sum of split partial gradients. Fixed orders: same input, same bits.
#include "nn.cuh"

// grid: (channels, min(n_z, 65535)), n_z = ceil(batch / ex_per). Block (c, z) writes
//   out[z·z_stride + c] = Σ_{b in z's examples} Σ_{p < L} dy[(b·channels + c)·L + p]
// (+ beta·old). Per-sample: ex_per = 1, z_stride = P; summed: ex_per = batch.
extern "C" __global__ void dpsgd_bias_grad(const float* __restrict__ dy, unsigned batch,
                                           unsigned channels, unsigned L, unsigned ex_per,
                                           unsigned long long z_stride, float beta,
                                           float* __restrict__ out) {
    const unsigned c = blockIdx.x;
    const unsigned nz = (batch + ex_per - 1) / ex_per;
    for (unsigned z = blockIdx.y; z < nz; z += gridDim.y) {
        const unsigned b0 = z * ex_per, b1 = min(batch, b0 + ex_per);
        float acc = 0.f;
        for (unsigned b = b0; b < b1; ++b) {
            const float* r = dy + ((size_t)b * channels + c) * L;
            for (unsigned p = threadIdx.x; p < L; p += DPSGD_BLOCK) acc += r[p];
        }
        const float s = block_sum_all(acc);
        if (threadIdx.x == 0) store_beta(out + (size_t)z * z_stride + c, s, beta);
    }
}

// out[col] = Σ_{r < rows} partial[r·n + col] (in r order) + beta·out[col].
extern "C" __global__ void dpsgd_sum_rows(const float* __restrict__ partial, unsigned rows,
                                          unsigned long long n, float beta,
                                          float* __restrict__ out) {
    const unsigned long long col = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (col >= n) return;
    float acc = 0.f;
    for (unsigned r = 0; r < rows; ++r) acc += partial[r * n + col];
    store_beta(out + col, acc, beta);
}
