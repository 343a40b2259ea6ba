// GroupNorm (affine) forward and backward with per-sample (dγ, dβ). CPU twin: src/cpu/norm.rs.
// One block per (group, example); statistics in double (the CPU uses f64), two passes.
#include "nn.cuh"

// Mean and 1/√(var + ε) of n values, rounded to float as on the CPU.
__device__ __forceinline__ void group_stats(const float* __restrict__ xg, unsigned n, double eps,
                                            float* mean, float* rstd) {
    double s = 0.0;
    for (unsigned i = threadIdx.x; i < n; i += DPSGD_BLOCK) s += (double)xg[i];
    const double mu = block_sum_all_d(s) / (double)n;
    double q = 0.0;
    for (unsigned i = threadIdx.x; i < n; i += DPSGD_BLOCK) {
        const double d = (double)xg[i] - mu;
        q += d * d;
    }
    const double var = block_sum_all_d(q) / (double)n;
    *mean = (float)mu;
    *rstd = (float)(1.0 / sqrt(var + eps));
}

// grid: (groups, min(batch, 65535)). params: γ [c] then β [c].
extern "C" __global__ void dpsgd_group_norm_fwd(DpsgdGroupNormArgs a, const float* __restrict__ x,
                                                const float* __restrict__ params,
                                                float* __restrict__ y) {
    const unsigned g = blockIdx.x, cpg = a.c / a.groups, gl = cpg * a.spatial;
    const float* gamma = params;
    const float* beta = params + a.c;
    for (unsigned b = blockIdx.y; b < a.batch; b += gridDim.y) {
        const size_t base = ((size_t)b * a.c + (size_t)g * cpg) * a.spatial;
        float mean, rstd;
        group_stats(x + base, gl, a.eps, &mean, &rstd);
        for (unsigned i = threadIdx.x; i < gl; i += DPSGD_BLOCK) {
            const unsigned c = g * cpg + i / a.spatial;
            const float sc = gamma[c] * rstd, sh = beta[c] - gamma[c] * rstd * mean;
            y[base + i] = sc * x[base + i] + sh;
        }
    }
}

// grid: (groups, min(batch, 65535)). dx (overwritten) when want_dx; example b's dγ[c] and dβ[c]
// at gout[b·out_stride + c] and gout[b·out_stride + C + c] when want_grad.
extern "C" __global__ void dpsgd_group_norm_bwd(DpsgdGroupNormArgs a, const float* __restrict__ x,
                                                const float* __restrict__ params,
                                                const float* __restrict__ dy,
                                                float* __restrict__ dx,
                                                float* __restrict__ gout) {
    const unsigned g = blockIdx.x, cpg = a.c / a.groups, gl = cpg * a.spatial, sp = a.spatial;
    const float* gamma = params;
    for (unsigned b = blockIdx.y; b < a.batch; b += gridDim.y) {
        const size_t base = ((size_t)b * a.c + (size_t)g * cpg) * sp;
        float mean, rstd;
        group_stats(x + base, gl, a.eps, &mean, &rstd);
        double s1 = 0.0, s2 = 0.0;
        for (unsigned cc = 0; cc < cpg; ++cc) {
            const unsigned c = g * cpg + cc;
            const float* xc = x + base + (size_t)cc * sp;
            const float* dc = dy + base + (size_t)cc * sp;
            double sdy = 0.0, sdyx = 0.0;
            for (unsigned i = threadIdx.x; i < sp; i += DPSGD_BLOCK) {
                const double xh = (double)((xc[i] - mean) * rstd);
                sdy += (double)dc[i];
                sdyx += (double)dc[i] * xh;
            }
            sdy = block_sum_all_d(sdy);
            sdyx = block_sum_all_d(sdyx);
            const double gm = (double)gamma[c];
            s1 += gm * sdy;
            s2 += gm * sdyx;
            if (a.want_grad && threadIdx.x == 0) {
                gout[(size_t)b * a.out_stride + c] = (float)sdyx;
                gout[(size_t)b * a.out_stride + a.c + c] = (float)sdy;
            }
        }
        if (a.want_dx) {
            const float m1 = (float)(s1 / (double)gl), m2 = (float)(s2 / (double)gl);
            for (unsigned i = threadIdx.x; i < gl; i += DPSGD_BLOCK) {
                const float gm = gamma[g * cpg + i / sp];
                const float xh = (x[base + i] - mean) * rstd;
                dx[base + i] = rstd * (gm * dy[base + i] - m1 - xh * m2);
            }
        }
    }
}
