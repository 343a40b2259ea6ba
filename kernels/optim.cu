// Fused noisy optimizer steps: the Gaussian noise of DP-SGD is drawn inside the kernel (no
// noise buffer), added to the clipped sum and divided by the expected batch size in f64 (rounded
// once to f32), and the optimizer updates the parameters in the same pass. CPU twin:
// src/cpu/optim.rs (exact formulas there). Noise element j is the value dpsgd_add_gaussian
// draws for j. One thread per element pair.
#include "common.cuh"

extern "C" __global__ void dpsgd_noisy_sgd(float* __restrict__ param,
                                           const float* __restrict__ grad_sum,
                                           float* __restrict__ momentum_buf, DpsgdSgdParams a) {
    for (unsigned long long k = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         k < (a.n + 1) / 2; k += (unsigned long long)gridDim.x * blockDim.x) {
        double2 z = make_double2(0.0, 0.0);
        if (a.noise_std != 0.0) z = normal2(a.key, k);
        for (int i = 0; i < 2; ++i) {
            unsigned long long j = 2 * k + i;
            if (j >= a.n) break;
            float p = param[j];
            float g = noised(grad_sum[j], a.noise_std, i == 0 ? z.x : z.y, a.inv_batch);
            g = fmaf(a.weight_decay, p, g);
            if (a.has_momentum) {
                float m = fmaf(a.momentum, momentum_buf[j], (1.0f - a.dampening) * g);
                momentum_buf[j] = m;
                g = a.nesterov ? fmaf(a.momentum, m, g) : m;
            }
            param[j] = fmaf(-a.lr, g, p);
        }
    }
}

extern "C" __global__ void dpsgd_noisy_adam(float* __restrict__ param,
                                            const float* __restrict__ grad_sum,
                                            float* __restrict__ m1, float* __restrict__ m2,
                                            DpsgdAdamParams a) {
    for (unsigned long long k = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         k < (a.n + 1) / 2; k += (unsigned long long)gridDim.x * blockDim.x) {
        double2 z = make_double2(0.0, 0.0);
        if (a.noise_std != 0.0) z = normal2(a.key, k);
        for (int i = 0; i < 2; ++i) {
            unsigned long long j = 2 * k + i;
            if (j >= a.n) break;
            float p = param[j];
            float g = noised(grad_sum[j], a.noise_std, i == 0 ? z.x : z.y, a.inv_batch);
            if (a.decoupled) {
                p = p * (1.0f - a.lr * a.weight_decay);
            } else {
                g = fmaf(a.weight_decay, p, g);
            }
            float m = fmaf(a.beta1, m1[j], (1.0f - a.beta1) * g);
            float v = fmaf(a.beta2, m2[j], (1.0f - a.beta2) * g * g);
            m1[j] = m;
            m2[j] = v;
            float mhat = m / a.bias_correction1;
            float denom = sqrtf(v / a.bias_correction2) + a.eps;
            param[j] = p - a.lr * mhat / denom;
        }
    }
}

// out[j] = (grad_sum[j] + noise_std * N(0,1)_j) * inv_batch: the noised mean gradient, for
// trainers with their own optimizer. Same noise element j as dpsgd_add_gaussian.
extern "C" __global__ void dpsgd_noisy_mean(float* __restrict__ out,
                                            const float* __restrict__ grad_sum,
                                            unsigned long long n, double noise_std,
                                            double inv_batch, DpsgdNoiseKey key) {
    for (unsigned long long k = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         k < (n + 1) / 2; k += (unsigned long long)gridDim.x * blockDim.x) {
        double2 z = make_double2(0.0, 0.0);
        if (noise_std != 0.0) z = normal2(key, k);
        for (int i = 0; i < 2; ++i) {
            unsigned long long j = 2 * k + i;
            if (j >= n) break;
            out[j] = noised(grad_sum[j], noise_std, i == 0 ? z.x : z.y, inv_batch);
        }
    }
}
