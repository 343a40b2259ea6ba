// Device helpers shared by the kernels: element conversion, Philox blocks as cuRAND numbers
// them, ChaCha20 blocks (RFC 8439), and the f64 normal/Laplace transforms that src/cpu/noise.rs
// mirrors (uniforms bit for bit; the values up to the accuracy of log/sincos in f64).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
// Only cuRAND's Philox and its constants: curand_kernel.h would embed every generator's tables.
#include <curand_globals.h>
#include <curand_philox4x32_x.h>
#include "dpsgd.h"

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

// The Philox block `block` of subsequence `sub` under `seed`: exactly what curand4() returns
// right after curand_init(seed, sub, 4 * block, &state) for curandStatePhilox4_32_10_t.
__device__ __forceinline__ uint4 philox_block_raw(unsigned long long seed, unsigned long long sub,
                                                  unsigned long long block) {
    uint4 ctr = make_uint4((unsigned)block, (unsigned)(block >> 32), (unsigned)sub,
                           (unsigned)(sub >> 32));
    uint2 k = make_uint2((unsigned)seed, (unsigned)(seed >> 32));
    return curand_Philox4x32_10(ctr, k);
}

__device__ __forceinline__ unsigned long long key_seed(const DpsgdNoiseKey& key) {
    return (unsigned long long)key.key[0] | ((unsigned long long)key.key[1] << 32);
}

// The Philox block `block` of a Philox key's stream.
__device__ __forceinline__ uint4 philox_block(const DpsgdNoiseKey& key, unsigned long long block) {
    return philox_block_raw(key_seed(key), key.stream, block);
}

// ChaCha20: the RFC 8439 block function with counter = block mod 2^32 and nonce =
// (block >> 32, stream lo, stream hi). CPU twin: src/cpu/chacha.rs (rfc8439_block / block).
#define DPSGD_CHACHA_QR(a, b, c, d)  \
    a += b; d = __funnelshift_l(d ^ a, d ^ a, 16); \
    c += d; b = __funnelshift_l(b ^ c, b ^ c, 12); \
    a += b; d = __funnelshift_l(d ^ a, d ^ a, 8);  \
    c += d; b = __funnelshift_l(b ^ c, b ^ c, 7);

__device__ __forceinline__ void chacha20_block(const DpsgdNoiseKey& key, unsigned long long block,
                                               unsigned out[16]) {
    unsigned in[16];
    in[0] = 0x61707865u; in[1] = 0x3320646eu; in[2] = 0x79622d32u; in[3] = 0x6b206574u;
#pragma unroll
    for (int i = 0; i < 8; ++i) in[4 + i] = key.key[i];
    in[12] = (unsigned)block;
    in[13] = (unsigned)(block >> 32);
    in[14] = (unsigned)key.stream;
    in[15] = (unsigned)(key.stream >> 32);
    unsigned x[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) x[i] = in[i];
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        DPSGD_CHACHA_QR(x[0], x[4], x[8], x[12]);
        DPSGD_CHACHA_QR(x[1], x[5], x[9], x[13]);
        DPSGD_CHACHA_QR(x[2], x[6], x[10], x[14]);
        DPSGD_CHACHA_QR(x[3], x[7], x[11], x[15]);
        DPSGD_CHACHA_QR(x[0], x[5], x[10], x[15]);
        DPSGD_CHACHA_QR(x[1], x[6], x[11], x[12]);
        DPSGD_CHACHA_QR(x[2], x[7], x[8], x[13]);
        DPSGD_CHACHA_QR(x[3], x[4], x[9], x[14]);
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) out[i] = x[i] + in[i];
}

__device__ __forceinline__ unsigned long long pack64(unsigned lo, unsigned hi) {
    return (unsigned long long)lo | ((unsigned long long)hi << 32);
}

// Two standard normals from 128 bits, in f64 (CPU twin: src/cpu/noise.rs box_muller64). The
// uniforms use only exact or correctly rounded operations (explicit _rn intrinsics, so nvcc
// cannot contract them differently from the CPU): u in [2^-76, 1], theta from 53 bits.
__device__ __forceinline__ double2 box_muller64(unsigned long long w0, unsigned long long w1) {
    double frac = __dmul_rn((double)(w1 & 0x7ffull) + 0.5, 0x1p-11);
    double u = __dmul_rn(__dadd_rn(__ull2double_rn(w0), frac), 0x1p-64);
    double r = sqrt(fmax(__dmul_rn(-2.0, log(u)), 0.0));
    double s, c;
    sincos(__dmul_rn(__ull2double_rn(w1 >> 11), 6.283185307179586 * 0x1p-53), &s, &c);
    return make_double2(__dmul_rn(r, c), __dmul_rn(r, s));
}

// A standard Laplace from 128 bits, in f64 (CPU twin: src/cpu/noise.rs laplace64).
__device__ __forceinline__ double laplace64(unsigned long long w0, unsigned long long w1) {
    double frac = __dmul_rn(__ull2double_rn(w1 & ((1ull << 52) - 1)) + 0.5, 0x1p-52);
    double u = __dmul_rn(__dadd_rn(__ull2double_rn(w0), frac), 0x1p-64);
    double e = -log(u);
    return (w1 >> 63) ? -e : e;
}

// The normals of element pair k (elements 2k, 2k+1) of `key`'s Gaussian noise: Philox block k
// through one Box-Muller, or ChaCha20 block k as four Box-Muller pairs summed and halved
// (Holohan & Braghin 2021, Opacus's secure mode). CPU twin: src/cpu/noise.rs normal16.
__device__ __forceinline__ double2 normal2(const DpsgdNoiseKey& key, unsigned long long k) {
    if (key.generator == DPSGD_GEN_CHACHA20) {
        unsigned w[16];
        chacha20_block(key, k, w);
        double a = 0.0, c = 0.0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            double2 p = box_muller64(pack64(w[4 * i], w[4 * i + 1]),
                                     pack64(w[4 * i + 2], w[4 * i + 3]));
            a = __dadd_rn(a, p.x);
            c = __dadd_rn(c, p.y);
        }
        return make_double2(__dmul_rn(a, 0.5), __dmul_rn(c, 0.5));
    }
    uint4 b = philox_block(key, k);
    return box_muller64(pack64(b.x, b.y), pack64(b.z, b.w));
}

// The standard Laplace values of elements 4q .. 4q+3 (CPU twin: src/cpu/noise.rs laplace4).
__device__ __forceinline__ void laplace4(const DpsgdNoiseKey& key, unsigned long long q,
                                         double out[4]) {
    if (key.generator == DPSGD_GEN_CHACHA20) {
        unsigned w[16];
        chacha20_block(key, q, w);
#pragma unroll
        for (int i = 0; i < 4; ++i)
            out[i] = laplace64(pack64(w[4 * i], w[4 * i + 1]), pack64(w[4 * i + 2], w[4 * i + 3]));
    } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            uint4 b = philox_block(key, 4 * q + i);
            out[i] = laplace64(pack64(b.x, b.y), pack64(b.z, b.w));
        }
    }
}

// (sum + std * z) * inv in f64, rounded once to f32 (no contraction: the CPU twin rounds each
// operation).
__device__ __forceinline__ float noised(float sum, double std_dev, double z, double inv) {
    return (float)__dmul_rn(__dadd_rn((double)sum, __dmul_rn(std_dev, z)), inv);
}
