// Device helpers of the conv-net layer kernels (conv.cu, linear.cu, norm.cu, grad.cu): a tiled
// SGEMM whose operands are loaded through functors (so im2col and its adjoint are gathered on
// the fly — implicit GEMM — instead of being materialised), and block-wide reductions with a
// fixed order (the same input gives the same bits run after run).
#pragma once
#include "dpsgd.h"

#define NN_BM DPSGD_GEMM_TILE
#define NN_BN DPSGD_GEMM_TILE
#define NN_BK 16

// One 64 x 64 tile C[m0.., n0..] of C = A·B over k in [0, K), A loaded by la(m, k) and B by
// lb(k, n) (only for in-range indices), written by st(m, n, value). 256 threads, each owns a
// 4 x 4 sub-tile at rows ty + 16i and columns tx + 16j (so reads of the shared B tile and the
// global stores of a warp are consecutive). The k sum runs in increasing k for every element:
// the result does not depend on the launch configuration.
template <class LA, class LB, class ST>
__device__ __forceinline__ void gemm_tile(unsigned M, unsigned N, unsigned K, unsigned m0,
                                          unsigned n0, LA la, LB lb, ST st) {
    __shared__ float As[NN_BK][NN_BM + 1];
    __shared__ float Bs[NN_BK][NN_BN + 4];
    const unsigned t = threadIdx.x, tx = t % 16, ty = t / 16;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    for (unsigned kb = 0; kb < K; kb += NN_BK) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const unsigned e = t + i * DPSGD_BLOCK;
            const unsigned am = e / NN_BK, ak = e % NN_BK;  // A tile: 64 rows x 16 k
            const unsigned m = m0 + am, k = kb + ak;
            As[ak][am] = (m < M && k < K) ? la(m, k) : 0.f;
            const unsigned bk = e / NN_BN, bn = e % NN_BN;  // B tile: 16 k x 64 columns
            const unsigned n = n0 + bn, k2 = kb + bk;
            Bs[bk][bn] = (n < N && k2 < K) ? lb(k2, n) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < NN_BK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const unsigned m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
            if (m < M && n < N) st(m, n, acc[i][j]);
        }
}

// `v` written as acc + beta·old (old is not read when beta is 0: it may be uninitialised).
__device__ __forceinline__ void store_beta(float* o, float v, float beta) {
    *o = beta != 0.f ? fmaf(beta, *o, v) : v;
}

// Block-wide sums with a fixed order (warp shuffles, then the warps in order), returned to
// every thread. Every thread of the block must call them.
__device__ __forceinline__ float block_sum_all(float v) {
    __shared__ float ws[DPSGD_BLOCK / 32];
    __shared__ float total;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) ws[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.f;
        for (int w = 0; w < DPSGD_BLOCK / 32; ++w) s += ws[w];
        total = s;
    }
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}

__device__ __forceinline__ double block_sum_all_d(double v) {
    __shared__ double wsd[DPSGD_BLOCK / 32];
    __shared__ double totald;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) wsd[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int w = 0; w < DPSGD_BLOCK / 32; ++w) s += wsd[w];
        totald = s;
    }
    __syncthreads();
    double r = totald;
    __syncthreads();
    return r;
}
