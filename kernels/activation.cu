// Element-wise activations (ReLU, LeakyReLU, Tanh, Sigmoid). CPU twin: src/cpu/activation.rs.
// The backward uses x for ReLU/LeakyReLU and the forward's output y for Tanh/Sigmoid.
#include "nn.cuh"

__device__ __forceinline__ float sigmoidf_(float x) {
    if (x >= 0.f) return 1.f / (1.f + expf(-x));
    const float e = expf(x);
    return e / (1.f + e);
}

extern "C" __global__ void dpsgd_act_fwd(int kind, float slope, unsigned long long n,
                                         const float* __restrict__ x, float* __restrict__ y) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float v = x[i];
        float o;
        switch (kind) {
            case DPSGD_ACT_RELU: o = v > 0.f ? v : 0.f; break;
            case DPSGD_ACT_LEAKY_RELU: o = v > 0.f ? v : slope * v; break;
            case DPSGD_ACT_TANH: o = tanhf(v); break;
            default: o = sigmoidf_(v); break;
        }
        y[i] = o;
    }
}

extern "C" __global__ void dpsgd_act_bwd(int kind, float slope, unsigned long long n,
                                         const float* __restrict__ x,
                                         const float* __restrict__ y,
                                         const float* __restrict__ dy, float* __restrict__ dx) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float d = dy[i];
        float o;
        switch (kind) {
            case DPSGD_ACT_RELU: o = x[i] > 0.f ? d : 0.f; break;
            case DPSGD_ACT_LEAKY_RELU: o = x[i] > 0.f ? d : slope * d; break;
            case DPSGD_ACT_TANH: {
                const float v = y[i];
                o = d * (1.f - v * v);
                break;
            }
            default: {
                const float v = y[i];
                o = d * v * (1.f - v);
                break;
            }
        }
        dx[i] = o;
    }
}
