// The 2-D scattering transform (Kymatio's Scattering2D, order 2) of a batch of image planes, in
// f64. CPU twin: Scattering2d::transform (src/cpu/scatter.rs, rustfft). Host emulation of this
// very file, loop for loop: Scattering2d::transform_by_tables (src/cpu/scatter.rs, the emu_*
// functions: `emu_pad` is `pad` here, and so on). Change the two together.
//
// One block per image plane (grid-stride over planes); every step is a loop over the elements
// of a plane in which each element is computed by one thread as one sequential sum, then a
// __syncthreads(): the values do not depend on the block or grid size. Every f64 operation is an
// explicit round-to-nearest intrinsic (no FMA contraction) in the emulation's order, and the
// twiddles and filters come from the host, so the f64 values equal the emulation's bit for bit.
//
// DFTs are dense products with twiddle tables (36 x 36 for 28 x 28 images is no power of two):
// an m x n 2-D DFT costs m·n·(m + n) complex multiply-adds. Per 28 x 28 plane (J = 2, L = 8):
// 17 DFTs of 36 x 36, 144 of 18 x 18 and 81 of 9 x 9, about 3.4 M complex multiply-adds
// (~27 M f64 flops); the filter products and periodisations are negligible beside them.
#include "dpsgd.h"

typedef double2 cx;

__device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }

// Tables (src/cpu/scatter.rs KernelTables): offsets into filt / tw, in doubles.
__device__ __forceinline__ const double* phi(const DpsgdScatterArgs& a, const double* filt,
                                             const unsigned long long* off, unsigned r) {
    return filt + off[r];
}
__device__ __forceinline__ const double* psi(const DpsgdScatterArgs& a, const double* filt,
                                             const unsigned long long* off, unsigned lam,
                                             unsigned r) {
    return filt + off[a.j + lam * a.j + r];
}
__device__ __forceinline__ const double* tw_row(const DpsgdScatterArgs& a, const double* tw,
                                                const unsigned long long* off, unsigned r) {
    return tw + off[a.j + a.j * a.l * a.j + r];
}
__device__ __forceinline__ const double* tw_col(const DpsgdScatterArgs& a, const double* tw,
                                                const unsigned long long* off, unsigned r) {
    return tw + off[a.j + a.j * a.l * a.j + a.j + 1 + r];
}

// numpy's reflect index (emu_reflect).
__device__ __forceinline__ unsigned reflect(long long s, long long len) {
    if (len == 1) return 0;
    const long long period = 2 * (len - 1);
    s %= period;
    if (s < 0) s += period;
    if (s >= len) s = period - s;
    return (unsigned)s;
}

// emu_pad: the image, reflect-padded to mp x np, as complex.
__device__ void pad(const DpsgdScatterArgs& a, const float* __restrict__ x, cx* u0) {
    const unsigned total = a.mp * a.np;
    for (unsigned e = threadIdx.x; e < total; e += blockDim.x) {
        const unsigned ai = e / a.np, bi = e % a.np;
        const unsigned sa = reflect((long long)ai - (long long)a.pad_top, a.m);
        const unsigned sb = reflect((long long)bi - (long long)a.pad_left, a.n);
        u0[e] = make_double2((double)x[(size_t)sa * a.n + sb], 0.0);
    }
    __syncthreads();
}

// emu_dft2: 2-D DFT of the m x n plane x in place (forward e^-2πi jk/n, inverse e^+2πi jk/n,
// unscaled): rows into w, then columns back into x.
__device__ void dft2(cx* x, cx* w, unsigned m, unsigned n, const double* __restrict__ trow,
                     const double* __restrict__ tcol, bool inverse) {
    const unsigned total = m * n;
    for (unsigned e = threadIdx.x; e < total; e += blockDim.x) {
        const unsigned ai = e / n, k = e % n;
        double re = 0.0, im = 0.0;
        unsigned idx = 0;
        for (unsigned b = 0; b < n; ++b) {
            const double c = trow[2 * idx];
            const double s = inverse ? trow[2 * idx + 1] : -trow[2 * idx + 1];
            const cx v = x[ai * n + b];
            re = add(re, sub(mul(v.x, c), mul(v.y, s)));
            im = add(im, add(mul(v.x, s), mul(v.y, c)));
            idx += k;
            if (idx >= n) idx -= n;
        }
        w[e] = make_double2(re, im);
    }
    __syncthreads();
    for (unsigned e = threadIdx.x; e < total; e += blockDim.x) {
        const unsigned k = e / n, b = e % n;
        double re = 0.0, im = 0.0;
        unsigned idx = 0;
        for (unsigned ai = 0; ai < m; ++ai) {
            const double c = tcol[2 * idx];
            const double s = inverse ? tcol[2 * idx + 1] : -tcol[2 * idx + 1];
            const cx v = w[ai * n + b];
            re = add(re, sub(mul(v.x, c), mul(v.y, s)));
            im = add(im, add(mul(v.x, s), mul(v.y, c)));
            idx += k;
            if (idx >= m) idx -= m;
        }
        x[e] = make_double2(re, im);
    }
    __syncthreads();
}

// emu_filter_sub: dst[a, b] = (Σ_{i<k} Σ_{j<k} src[p]·f[p]) / k², p = (a + i·m/k, b + j·n/k).
__device__ void filter_sub(cx* dst, const cx* src, const double* __restrict__ f, unsigned m,
                           unsigned n, unsigned k) {
    const unsigned mm = m / k, nn = n / k;
    const double inv = 1.0 / (double)(k * k);
    for (unsigned e = threadIdx.x; e < mm * nn; e += blockDim.x) {
        const unsigned ai = e / nn, b = e % nn;
        double re = 0.0, im = 0.0;
        for (unsigned i = 0; i < k; ++i) {
            for (unsigned j = 0; j < k; ++j) {
                const unsigned p = (ai + i * mm) * n + b + j * nn;
                re = add(re, mul(src[p].x, f[p]));
                im = add(im, mul(src[p].y, f[p]));
            }
        }
        dst[e] = make_double2(mul(re, inv), mul(im, inv));
    }
    __syncthreads();
}

// emu_modulus: fft2(|ifft2(x)|) in place at resolution r.
__device__ void modulus(const DpsgdScatterArgs& a, const double* tw,
                        const unsigned long long* off, cx* x, cx* w, unsigned r) {
    const unsigned m = a.mp >> r, n = a.np >> r;
    dft2(x, w, m, n, tw_row(a, tw, off, r), tw_col(a, tw, off, r), true);
    const double inv = 1.0 / (double)(m * n);
    for (unsigned e = threadIdx.x; e < m * n; e += blockDim.x) {
        const double re = mul(x[e].x, inv), im = mul(x[e].y, inv);
        x[e] = make_double2(__dsqrt_rn(add(mul(re, re), mul(im, im))), 0.0);
    }
    __syncthreads();
    dft2(x, w, m, n, tw_row(a, tw, off, r), tw_col(a, tw, off, r), false);
}

// emu_finish: inverse DFT of the coarse plane s, real part / size, cropped by one coarse pixel
// on each side, rounded to float into out (oh x ow).
__device__ void finish(const DpsgdScatterArgs& a, const double* tw,
                       const unsigned long long* off, cx* s, cx* w, float* __restrict__ out) {
    const unsigned m = a.mp >> a.j, n = a.np >> a.j;
    dft2(s, w, m, n, tw_row(a, tw, off, a.j), tw_col(a, tw, off, a.j), true);
    const double inv = 1.0 / (double)(m * n);
    for (unsigned e = threadIdx.x; e < a.oh * a.ow; e += blockDim.x) {
        const unsigned ai = e / a.ow, b = e % a.ow;
        out[e] = (float)mul(s[(ai + 1) * n + b + 1].x, inv);
    }
    __syncthreads();
}

// grid: (slots); block z transforms planes z, z + gridDim.x, ... in its scratch planes.
// x: count·m·n floats; out: count·out_len floats; scratch: gridDim.x · DPSGD_SCATTER_PLANES ·
// mp·np double2.
extern "C" __global__ void dpsgd_scatter(DpsgdScatterArgs a, const float* __restrict__ x,
                                         const double* __restrict__ filt,
                                         const double* __restrict__ tw,
                                         const unsigned long long* __restrict__ off,
                                         double* __restrict__ scratch, float* __restrict__ out) {
    const size_t plane = (size_t)a.mp * a.np;
    cx* base = reinterpret_cast<cx*>(scratch) + (size_t)blockIdx.x * DPSGD_SCATTER_PLANES * plane;
    cx* u0 = base;
    cx* u1 = base + plane;
    cx* u2 = base + 2 * plane;
    cx* s = base + 3 * plane;
    cx* w = base + 4 * plane;
    const unsigned hw = a.oh * a.ow, jj = a.j, l = a.l;
    for (unsigned long long img = blockIdx.x; img < a.count; img += gridDim.x) {
        const float* xi = x + img * (size_t)a.m * a.n;
        float* o = out + img * a.out_len;
        pad(a, xi, u0);
        dft2(u0, w, a.mp, a.np, tw_row(a, tw, off, 0), tw_col(a, tw, off, 0), false);
        // S0 = x ⋆ φ_J.
        filter_sub(s, u0, phi(a, filt, off, 0), a.mp, a.np, 1u << jj);
        finish(a, tw, off, s, w, o);
        unsigned ch2 = 1 + jj * l;
        for (unsigned n1 = 0; n1 < jj * l; ++n1) {
            const unsigned j1 = n1 / l;
            const unsigned m1 = a.mp >> j1, nn1 = a.np >> j1;
            // U1 = |x ⋆ ψ_λ1| at resolution j1.
            filter_sub(u1, u0, psi(a, filt, off, n1, 0), a.mp, a.np, 1u << j1);
            modulus(a, tw, off, u1, w, j1);
            // S1 = U1 ⋆ φ_J.
            filter_sub(s, u1, phi(a, filt, off, j1), m1, nn1, 1u << (jj - j1));
            finish(a, tw, off, s, w, o + (size_t)(1 + n1) * hw);
            // S2 = |U1 ⋆ ψ_λ2| ⋆ φ_J for j2 > j1.
            for (unsigned n2 = 0; n2 < jj * l; ++n2) {
                const unsigned j2 = n2 / l;
                if (j2 <= j1) continue;
                filter_sub(u2, u1, psi(a, filt, off, n2, j1), m1, nn1, 1u << (j2 - j1));
                modulus(a, tw, off, u2, w, j2);
                filter_sub(s, u2, phi(a, filt, off, j2), a.mp >> j2, a.np >> j2,
                           1u << (jj - j2));
                finish(a, tw, off, s, w, o + (size_t)ch2 * hw);
                ++ch2;
            }
        }
    }
}

// The offset of the first non-finite value of x[0 .. n) into *bad (atomicMin; the host sets it
// to ~0 first). Grid-stride.
extern "C" __global__ void dpsgd_scatter_check_finite(const float* __restrict__ x,
                                                      unsigned long long n,
                                                      unsigned long long* __restrict__ bad) {
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        if (!isfinite(x[i])) atomicMin(bad, i);
    }
}
