// MaxPool2d and AvgPool2d (k x k windows, stride, no padding, floor mode). CPU twin:
// src/cpu/pool.rs. The backward kernels gather (one thread per input element, windows visited
// in the CPU's (oy, ox) order), so no atomics and the same sums as the CPU.
#include "nn.cuh"

// Index in the plane of the first maximum of the window at (y0, x0), NaN winning as on the CPU.
__device__ __forceinline__ unsigned window_argmax(const float* __restrict__ xc, unsigned w,
                                                  unsigned k, unsigned y0, unsigned x0) {
    unsigned best = y0 * w + x0;
    float m = xc[best];
    for (unsigned ki = 0; ki < k; ++ki) {
        const unsigned row = (y0 + ki) * w + x0;
        for (unsigned kj = 0; kj < k; ++kj) {
            const float v = xc[row + kj];
            if (v > m || (isnan(v) && !isnan(m))) {
                m = v;
                best = row + kj;
            }
        }
    }
    return best;
}

// Windows (oy, ox) that contain input row/column i: oy in [lo, hi].
__device__ __forceinline__ bool windows(unsigned i, unsigned k, unsigned s, unsigned o,
                                        unsigned* lo, unsigned* hi) {
    *lo = i + 1 >= k ? (i + 1 - k + s - 1) / s : 0;
    *hi = min(i / s, o - 1);
    return *lo <= *hi;
}

// One thread per output element.
extern "C" __global__ void dpsgd_max_pool_fwd(DpsgdPoolArgs a, const float* __restrict__ x,
                                              float* __restrict__ y) {
    const unsigned long long n = a.planes * a.oh * a.ow;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long pl = i / (a.oh * a.ow);
        const unsigned r = (unsigned)(i % (a.oh * a.ow)), oy = r / a.ow, ox = r % a.ow;
        const float* xc = x + pl * a.h * a.w;
        y[i] = xc[window_argmax(xc, a.w, a.k, oy * a.stride, ox * a.stride)];
    }
}

// One thread per input element: dx = Σ over windows whose arg-max it is of dy (overwritten).
extern "C" __global__ void dpsgd_max_pool_bwd(DpsgdPoolArgs a, const float* __restrict__ x,
                                              const float* __restrict__ dy,
                                              float* __restrict__ dx) {
    const unsigned long long n = a.planes * a.h * a.w;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long pl = i / (a.h * a.w);
        const unsigned q = (unsigned)(i % (a.h * a.w)), iy = q / a.w, ix = q % a.w;
        const float* xc = x + pl * a.h * a.w;
        const float* dyc = dy + pl * a.oh * a.ow;
        float acc = 0.f;
        unsigned y0, y1, x0, x1;
        if (windows(iy, a.k, a.stride, a.oh, &y0, &y1) &&
            windows(ix, a.k, a.stride, a.ow, &x0, &x1)) {
            for (unsigned oy = y0; oy <= y1; ++oy)
                for (unsigned ox = x0; ox <= x1; ++ox)
                    if (window_argmax(xc, a.w, a.k, oy * a.stride, ox * a.stride) == q)
                        acc += dyc[oy * a.ow + ox];
        }
        dx[i] = acc;
    }
}

// One thread per output element: the window's sum in row-major order times 1/k².
extern "C" __global__ void dpsgd_avg_pool_fwd(DpsgdPoolArgs a, const float* __restrict__ x,
                                              float* __restrict__ y) {
    const unsigned long long n = a.planes * a.oh * a.ow;
    const float inv = 1.0f / (float)(a.k * a.k);
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long pl = i / (a.oh * a.ow);
        const unsigned r = (unsigned)(i % (a.oh * a.ow)), oy = r / a.ow, ox = r % a.ow;
        const float* xc = x + pl * a.h * a.w;
        float acc = 0.f;
        for (unsigned ki = 0; ki < a.k; ++ki) {
            const float* row = xc + (oy * a.stride + ki) * a.w + ox * a.stride;
            for (unsigned kj = 0; kj < a.k; ++kj) acc += row[kj];
        }
        y[i] = acc * inv;
    }
}

// One thread per input element: dx = Σ over the windows containing it of dy/k² (overwritten).
extern "C" __global__ void dpsgd_avg_pool_bwd(DpsgdPoolArgs a, const float* __restrict__ dy,
                                              float* __restrict__ dx) {
    const unsigned long long n = a.planes * a.h * a.w;
    const float inv = 1.0f / (float)(a.k * a.k);
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long pl = i / (a.h * a.w);
        const unsigned q = (unsigned)(i % (a.h * a.w)), iy = q / a.w, ix = q % a.w;
        const float* dyc = dy + pl * a.oh * a.ow;
        float acc = 0.f;
        unsigned y0, y1, x0, x1;
        if (windows(iy, a.k, a.stride, a.oh, &y0, &y1) &&
            windows(ix, a.k, a.stride, a.ow, &x0, &x1)) {
            for (unsigned oy = y0; oy <= y1; ++oy)
                for (unsigned ox = x0; ox <= x1; ++ox) acc += dyc[oy * a.ow + ox] * inv;
        }
        dx[i] = acc;
    }
}
