// Gaussian and Laplace noise from Philox4x32-10 (seeded runs) or ChaCha20 (secure mode), in
// f64, rounded once to f32. CPU twin: src/cpu/noise.rs (layout and formulas there and in
// src/noise.rs). Grid-stride loops cover any length.
#include "common.cuh"

#define GRID_STRIDE(i, count)                                                                   \
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;      \
         i < (count); i += (unsigned long long)gridDim.x * blockDim.x)

// out[j] = 32-bit word j of the key's stream (for tests of the CPU/GPU bit identity). One
// thread per 16 words: four Philox blocks or one ChaCha20 block.
extern "C" __global__ void dpsgd_random_bits(unsigned* __restrict__ out, unsigned long long n,
                                             DpsgdNoiseKey key) {
    GRID_STRIDE(g, (n + 15) / 16) {
        unsigned w[16];
        if (key.generator == DPSGD_GEN_CHACHA20) {
            chacha20_block(key, g, w);
        } else {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                uint4 v = philox_block(key, 4 * g + i);
                w[4 * i] = v.x;
                w[4 * i + 1] = v.y;
                w[4 * i + 2] = v.z;
                w[4 * i + 3] = v.w;
            }
        }
        unsigned long long j = 16 * g;
        for (int i = 0; i < 16 && j + i < n; ++i) out[j + i] = w[i];
    }
}

// out[j] += std * N(0,1)_j, one thread per element pair.
extern "C" __global__ void dpsgd_add_gaussian(float* __restrict__ out, unsigned long long n,
                                              double std_dev, DpsgdNoiseKey key) {
    GRID_STRIDE(k, (n + 1) / 2) {
        double2 z = normal2(key, k);
        unsigned long long j = 2 * k;
        out[j] = noised(out[j], std_dev, z.x, 1.0);
        if (j + 1 < n) out[j + 1] = noised(out[j + 1], std_dev, z.y, 1.0);
    }
}

// out[j] += scale * Laplace(0,1)_j, one thread per four elements.
extern "C" __global__ void dpsgd_add_laplace(float* __restrict__ out, unsigned long long n,
                                             double scale, DpsgdNoiseKey key) {
    GRID_STRIDE(q, (n + 3) / 4) {
        double l[4];
        laplace4(key, q, l);
        unsigned long long j = 4 * q;
        for (int i = 0; i < 4 && j + i < n; ++i) out[j + i] = noised(out[j + i], scale, l[i], 1.0);
    }
}
