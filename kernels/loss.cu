// Losses: cross-entropy (log-softmax + NLL), binary cross-entropy with logits and on
// probabilities. CPU twin: src/cpu/loss.rs. Everything in double as on the CPU; each example's
// (or element's) loss goes to `losses`, which the host sums in order. An invalid input (a
// target out of range, a non-finite logit, a probability outside [0, 1]) gives a NaN loss: the
// host then rechecks on the CPU to report the typed error.

#include "nn.cuh"

// One thread per example. dlogits (when want_grad) = (softmax(z) − onehot(t))·scale.
extern "C" __global__ void dpsgd_cross_entropy(const float* __restrict__ logits,
                                               const unsigned* __restrict__ targets,
                                               unsigned batch, unsigned classes, double scale,
                                               int want_grad, double* __restrict__ losses,
                                               float* __restrict__ dlogits) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch) return;
    const float* z = logits + (size_t)i * classes;
    const unsigned t = targets[i];
    bool ok = t < classes;
    double m = -INFINITY;
    for (unsigned c = 0; c < classes; ++c) {
        const double v = (double)z[c];
        ok = ok && isfinite(v);
        m = fmax(m, v);
    }
    if (!ok) {
        losses[i] = NAN;
        return;
    }
    double se = 0.0;
    for (unsigned c = 0; c < classes; ++c) se += exp((double)z[c] - m);
    const double lse = m + log(se);
    losses[i] = lse - (double)z[t];
    if (want_grad) {
        float* d = dlogits + (size_t)i * classes;
        for (unsigned c = 0; c < classes; ++c) {
            const double p = exp((double)z[c] - lse);
            d[c] = (float)(((c == t) ? p - 1.0 : p) * scale);
        }
    }
}

// One thread per element: ℓ = max(z, 0) − z·t + ln(1 + e^{−|z|}); gradient (σ(z) − t)·scale.
extern "C" __global__ void dpsgd_bce_with_logits(const float* __restrict__ logits,
                                                 const float* __restrict__ targets,
                                                 unsigned long long n, double scale,
                                                 int want_grad, double* __restrict__ losses,
                                                 float* __restrict__ dlogits) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const double z = logits[i], t = targets[i];
        if (!isfinite(z) || !isfinite(t)) {
            losses[i] = NAN;
            continue;
        }
        losses[i] = fmax(z, 0.0) - z * t + log1p(exp(-fabs(z)));
        if (want_grad) {
            double s;
            if (z >= 0.0) {
                s = 1.0 / (1.0 + exp(-z));
            } else {
                const double e = exp(z);
                s = e / (1.0 + e);
            }
            dlogits[i] = (float)((s - t) * scale);
        }
    }
}

// One thread per element: ℓ = −(t·ln p + (1 − t)·ln(1 − p)), logs clamped at −100; gradient
// (p − t) / max(p(1 − p), 1e-12)·scale.
extern "C" __global__ void dpsgd_bce(const float* __restrict__ probs,
                                     const float* __restrict__ targets, unsigned long long n,
                                     double scale, int want_grad, double* __restrict__ losses,
                                     float* __restrict__ dprobs) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const double p = probs[i], t = targets[i];
        if (!(p >= 0.0 && p <= 1.0) || !isfinite(t)) {
            losses[i] = NAN;
            continue;
        }
        const double lp = fmax(log(p), -100.0), lq = fmax(log(1.0 - p), -100.0);
        losses[i] = -(t * lp + (1.0 - t) * lq);
        if (want_grad) dprobs[i] = (float)((p - t) / fmax(p * (1.0 - p), 1e-12) * scale);
    }
}
