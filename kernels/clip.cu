// Per-sample gradient norms and fused clip-and-accumulate (Abadi et al. 2016, Algorithm 1,
// lines "clip gradient" and "add noise"'s sum). CPU twin: src/cpu/clip.rs.
//
// The per-sample gradients are a row-major [B, P] matrix of T (float, bf16 or f16); norms and
// sums accumulate in float. Every reduction has a fixed order, so the same input gives the same
// bits run after run.
#include "common.cuh"

// Block-wide sum with a fixed order (warp shuffles, then the warps' sums in order).
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float warp_sums[DPSGD_BLOCK / 32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int warp = threadIdx.x / 32, lane_id = threadIdx.x % 32;
    if (lane_id == 0) warp_sums[warp] = v;
    __syncthreads();
    float total = 0.0f;
    if (threadIdx.x == 0) {
        for (int w = 0; w < DPSGD_BLOCK / 32; ++w) total += warp_sums[w];
    }
    __syncthreads();
    return total;  // valid in thread 0
}

// partial[row * n_chunks + c] = sum over the chunk's columns of g[row, col]^2.
// grid: (n_chunks, min(B, 65535)); rows loop over gridDim.y.
template <typename T>
__device__ void sumsq_partial(const T* __restrict__ g, unsigned long long batch,
                              unsigned long long p, const DpsgdTile* __restrict__ chunks,
                              unsigned n_chunks, float* __restrict__ partial) {
    const DpsgdTile ch = chunks[blockIdx.x];
    for (unsigned long long row = blockIdx.y; row < batch; row += gridDim.y) {
        const T* r = g + row * p;
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
        unsigned long long c = ch.start + threadIdx.x;
        for (; c + 3 * DPSGD_BLOCK < ch.end; c += 4 * DPSGD_BLOCK) {
            float x0 = to_f32(r[c]), x1 = to_f32(r[c + DPSGD_BLOCK]);
            float x2 = to_f32(r[c + 2 * DPSGD_BLOCK]), x3 = to_f32(r[c + 3 * DPSGD_BLOCK]);
            a0 = fmaf(x0, x0, a0);
            a1 = fmaf(x1, x1, a1);
            a2 = fmaf(x2, x2, a2);
            a3 = fmaf(x3, x3, a3);
        }
        for (; c < ch.end; c += DPSGD_BLOCK) {
            float x = to_f32(r[c]);
            a0 = fmaf(x, x, a0);
        }
        float s = block_sum((a0 + a1) + (a2 + a3));
        if (threadIdx.x == 0) partial[row * n_chunks + blockIdx.x] = s;
    }
}

extern "C" __global__ void dpsgd_sumsq_partial_f32(const float* g, unsigned long long batch,
                                                   unsigned long long p, const DpsgdTile* chunks,
                                                   unsigned n_chunks, float* partial) {
    sumsq_partial(g, batch, p, chunks, n_chunks, partial);
}
extern "C" __global__ void dpsgd_sumsq_partial_bf16(const __nv_bfloat16* g,
                                                    unsigned long long batch,
                                                    unsigned long long p, const DpsgdTile* chunks,
                                                    unsigned n_chunks, float* partial) {
    sumsq_partial(g, batch, p, chunks, n_chunks, partial);
}
extern "C" __global__ void dpsgd_sumsq_partial_f16(const __half* g, unsigned long long batch,
                                                   unsigned long long p, const DpsgdTile* chunks,
                                                   unsigned n_chunks, float* partial) {
    sumsq_partial(g, batch, p, chunks, n_chunks, partial);
}

// One thread per row: seg_norms[row, s] = sqrt(sum of the row's chunks in segment s), in chunk
// order; norms[row] = sqrt(sum over segments of their squares).
extern "C" __global__ void dpsgd_norms_finalize(const float* __restrict__ partial,
                                                const DpsgdTile* __restrict__ chunks,
                                                unsigned n_chunks, unsigned n_seg,
                                                unsigned long long batch,
                                                float* __restrict__ norms,
                                                float* __restrict__ seg_norms) {
    unsigned long long row = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (row >= batch) return;
    float* sn = seg_norms + row * n_seg;
    for (unsigned s = 0; s < n_seg; ++s) sn[s] = 0.0f;
    const float* pr = partial + row * n_chunks;
    // Chunks come in segment order; their f32 partial sums add up in f64 (as on the CPU).
    double total = 0.0;
    unsigned c = 0;
    while (c < n_chunks) {
        unsigned s = chunks[c].segment;
        double acc = 0.0;
        for (; c < n_chunks && chunks[c].segment == s; ++c) acc += (double)pr[c];
        sn[s] = (float)sqrt(acc);
        total += acc;
    }
    norms[row] = (float)sqrt(total);
}

// factors[i] = min(1, C[i % n_seg] / (norms[i] + 1e-6)), Opacus's formula; n = B * n_seg.
extern "C" __global__ void dpsgd_clip_factors(const float* __restrict__ norms,
                                              const float* __restrict__ max_norms,
                                              unsigned n_seg, unsigned long long n,
                                              float* __restrict__ factors) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float f = max_norms[i % n_seg] / (norms[i] + DPSGD_CLIP_EPS);
    factors[i] = fminf(f, 1.0f);
}

// Clip and accumulate a range of rows for one tile of columns. Each thread owns 4 columns
// (strided by the block size, so loads coalesce). grid: (n_tiles, n_splits).
// With n_splits == 1, sum[col] += acc directly; otherwise partial[split * P + col] = acc and
// dpsgd_reduce_splits adds the splits in order.
template <typename T>
__device__ void clip_accumulate(const T* __restrict__ g, unsigned long long batch,
                                unsigned long long p, const float* __restrict__ factors,
                                unsigned n_seg, const DpsgdTile* __restrict__ tiles,
                                unsigned long long rows_per_split, float* __restrict__ out,
                                int direct) {
    const DpsgdTile t = tiles[blockIdx.x];
    unsigned long long r0 = blockIdx.y * rows_per_split;
    unsigned long long r1 = min(batch, r0 + rows_per_split);
    unsigned long long c0 = t.start + threadIdx.x;
    bool v0 = c0 < t.end, v1 = c0 + DPSGD_BLOCK < t.end, v2 = c0 + 2 * DPSGD_BLOCK < t.end,
         v3 = c0 + 3 * DPSGD_BLOCK < t.end;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
    if (v3) {
        for (unsigned long long row = r0; row < r1; ++row) {
            const float f = factors[row * n_seg + t.segment];
            const T* r = g + row * p + c0;
            a0 = fmaf(f, to_f32(r[0]), a0);
            a1 = fmaf(f, to_f32(r[DPSGD_BLOCK]), a1);
            a2 = fmaf(f, to_f32(r[2 * DPSGD_BLOCK]), a2);
            a3 = fmaf(f, to_f32(r[3 * DPSGD_BLOCK]), a3);
        }
    } else {
        for (unsigned long long row = r0; row < r1; ++row) {
            const float f = factors[row * n_seg + t.segment];
            const T* r = g + row * p + c0;
            if (v0) a0 = fmaf(f, to_f32(r[0]), a0);
            if (v1) a1 = fmaf(f, to_f32(r[DPSGD_BLOCK]), a1);
            if (v2) a2 = fmaf(f, to_f32(r[2 * DPSGD_BLOCK]), a2);
        }
    }
    if (direct) {
        if (v0) out[c0] += a0;
        if (v1) out[c0 + DPSGD_BLOCK] += a1;
        if (v2) out[c0 + 2 * DPSGD_BLOCK] += a2;
        if (v3) out[c0 + 3 * DPSGD_BLOCK] += a3;
    } else {
        float* o = out + blockIdx.y * p;
        if (v0) o[c0] = a0;
        if (v1) o[c0 + DPSGD_BLOCK] = a1;
        if (v2) o[c0 + 2 * DPSGD_BLOCK] = a2;
        if (v3) o[c0 + 3 * DPSGD_BLOCK] = a3;
    }
}

#define CLIP_ACC(SUFFIX, T)                                                                   \
    extern "C" __global__ void dpsgd_clip_accumulate_##SUFFIX(                                \
        const T* g, unsigned long long batch, unsigned long long p, const float* factors,     \
        unsigned n_seg, const DpsgdTile* tiles, unsigned long long rows_per_split, float* out, \
        int direct) {                                                                         \
        clip_accumulate(g, batch, p, factors, n_seg, tiles, rows_per_split, out, direct);     \
    }
CLIP_ACC(f32, float)
CLIP_ACC(bf16, __nv_bfloat16)
CLIP_ACC(f16, __half)

// sum[col] += sum over splits s = 0, 1, ... of partial[s * P + col], in that order.
extern "C" __global__ void dpsgd_reduce_splits(const float* __restrict__ partial,
                                               unsigned long long n_splits, unsigned long long p,
                                               float* __restrict__ sum) {
    unsigned long long col = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (col >= p) return;
    float acc = 0.0f;
    for (unsigned long long s = 0; s < n_splits; ++s) acc += partial[s * p + col];
    sum[col] += acc;
}

// Clip rows in place: g[row, col] *= factors[row] for a row-major [batch, p] matrix (GS-WGAN's
// per-image clipping of the generator gradient; CPU twin: cpu::clip::scale_rows). One thread
// per element, n = batch * p.
extern "C" __global__ void dpsgd_scale_rows(float* __restrict__ g,
                                            const float* __restrict__ factors,
                                            unsigned long long p, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    g[i] *= factors[i / p];
}
