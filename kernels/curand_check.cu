// cuRAND's own device API, for the test that our Philox blocks (common.cuh: philox_block) are
// its stream. Kept apart from the production kernels because curand_kernel.h brings ~2.5 MB of
// skip-ahead tables for the other generators into whichever module includes it.
// CPU twin: src/cpu/noise.rs (random_bits); Rust side: src/cuda/noise.rs (philox_bits_curand).
#include <curand_kernel.h>
#include "common.cuh"

// The same 32-bit outputs drawn through curand_init/curand4 (one state per thread), to show
// that philox_block() is cuRAND's stream. Tests only.
extern "C" __global__ void dpsgd_philox_bits_curand(unsigned* __restrict__ out,
                                                    unsigned long long n, DpsgdNoiseKey key) {
    unsigned long long b = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (4 * b >= n) return;
    curandStatePhilox4_32_10_t st;
    curand_init(key_seed(key), key.stream, 4 * b, &st);
    uint4 v = curand4(&st);
    unsigned long long j = 4 * b;
    out[j] = v.x;
    if (j + 1 < n) out[j + 1] = v.y;
    if (j + 2 < n) out[j + 2] = v.z;
    if (j + 3 < n) out[j + 3] = v.w;
}

