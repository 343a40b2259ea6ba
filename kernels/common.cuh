// Device helpers shared by the kernels: element conversion, Philox blocks as cuRAND numbers
// them, and the uniform/normal/Laplace transforms that src/cpu/noise.rs mirrors bit for bit
// (up to the accuracy of logf/sincosf).
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

// The Philox block `block` of `key`'s subsequence: exactly what curand4() returns right after
// curand_init(key.seed, key.subsequence, 4 * block, &state) for curandStatePhilox4_32_10_t.
__device__ __forceinline__ uint4 philox_block(DpsgdNoiseKey key, unsigned long long block) {
    uint4 ctr = make_uint4((unsigned)block, (unsigned)(block >> 32), (unsigned)key.subsequence,
                           (unsigned)(key.subsequence >> 32));
    uint2 k = make_uint2((unsigned)key.seed, (unsigned)(key.seed >> 32));
    return curand_Philox4x32_10(ctr, k);
}

// cuRAND's _curand_box_muller with the affine maps written as explicit FMAs (so the CPU can
// reproduce the uniforms exactly) and accurate logf/sincosf.
__device__ __forceinline__ float2 box_muller(unsigned x, unsigned y) {
    const float inv = CURAND_2POW32_INV;
    const float inv2pi = CURAND_2POW32_INV_2PI;
    float u = __fmaf_rn((float)x, inv, inv * 0.5f);
    float v = __fmaf_rn((float)y, inv2pi, inv2pi * 0.5f);
    float s = sqrtf(-2.0f * logf(u));
    float sn, cs;
    sincosf(v, &sn, &cs);
    return make_float2(sn * s, cs * s);
}

__device__ __forceinline__ float4 normal4(DpsgdNoiseKey key, unsigned long long block) {
    uint4 b = philox_block(key, block);
    float2 a = box_muller(b.x, b.y);
    float2 c = box_muller(b.z, b.w);
    return make_float4(a.x, a.y, c.x, c.y);
}

// Standard Laplace from 32 bits: the top bit is the sign, the low 31 bits a uniform
// u in (0, 1], and the magnitude -ln(u) ~ Exp(1) (inverse CDF).
__device__ __forceinline__ float laplace1(unsigned x) {
    const float inv31 = 4.656612873077393e-10f;  // 2^-31
    float u = __fmaf_rn((float)(x & 0x7fffffffu), inv31, inv31 * 0.5f);
    float e = -logf(u);
    return (x & 0x80000000u) ? -e : e;
}

__device__ __forceinline__ float4 laplace4(DpsgdNoiseKey key, unsigned long long block) {
    uint4 b = philox_block(key, block);
    return make_float4(laplace1(b.x), laplace1(b.y), laplace1(b.z), laplace1(b.w));
}

__device__ __forceinline__ float lane(float4 v, int i) {
    return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w));
}
