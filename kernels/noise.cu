// Gaussian and Laplace noise from cuRAND's Philox4x32-10 (device API). CPU twin:
// src/cpu/noise.rs, which computes the same Philox blocks bit for bit.
//
// Element j of a tensor takes lane j % 4 of Philox block j / 4 of the key's subsequence, i.e.
// of the stream curand_init(seed, subsequence, 4 * (j / 4)) + curand4(). Each thread computes
// one block (4 elements); a grid-stride loop covers any length.
#include "common.cuh"

// out[j] = raw 32-bit output j of the stream (for tests of the CPU/GPU bit identity).
extern "C" __global__ void dpsgd_philox_bits(unsigned* __restrict__ out, unsigned long long n,
                                             DpsgdNoiseKey key) {
    unsigned long long nb = (n + 3) / 4;
    for (unsigned long long b = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; b < nb;
         b += (unsigned long long)gridDim.x * blockDim.x) {
        uint4 v = philox_block(key, b);
        unsigned long long j = 4 * b;
        out[j] = v.x;
        if (j + 1 < n) out[j + 1] = v.y;
        if (j + 2 < n) out[j + 2] = v.z;
        if (j + 3 < n) out[j + 3] = v.w;
    }
}

// out[j] += std * N(0,1)_j (Box-Muller on the block's two pairs).
extern "C" __global__ void dpsgd_add_gaussian(float* __restrict__ out, unsigned long long n,
                                              float std_dev, DpsgdNoiseKey key) {
    unsigned long long nb = (n + 3) / 4;
    const bool vec = (n & 3) == 0 && (reinterpret_cast<unsigned long long>(out) & 15) == 0;
    for (unsigned long long b = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; b < nb;
         b += (unsigned long long)gridDim.x * blockDim.x) {
        float4 z = normal4(key, b);
        unsigned long long j = 4 * b;
        if (vec) {
            float4* o = reinterpret_cast<float4*>(out) + b;
            float4 v = *o;
            v.x = fmaf(std_dev, z.x, v.x);
            v.y = fmaf(std_dev, z.y, v.y);
            v.z = fmaf(std_dev, z.z, v.z);
            v.w = fmaf(std_dev, z.w, v.w);
            *o = v;
        } else {
            for (int i = 0; i < 4 && j + i < n; ++i) out[j + i] = fmaf(std_dev, lane(z, i), out[j + i]);
        }
    }
}

// out[j] += scale * Laplace(0,1)_j.
extern "C" __global__ void dpsgd_add_laplace(float* __restrict__ out, unsigned long long n,
                                             float scale, DpsgdNoiseKey key) {
    unsigned long long nb = (n + 3) / 4;
    for (unsigned long long b = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; b < nb;
         b += (unsigned long long)gridDim.x * blockDim.x) {
        float4 z = laplace4(key, b);
        unsigned long long j = 4 * b;
        for (int i = 0; i < 4 && j + i < n; ++i) out[j + i] = fmaf(scale, lane(z, i), out[j + i]);
    }
}
