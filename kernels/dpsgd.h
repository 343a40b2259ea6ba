/*
 * dpsgd.h: the structs and constants shared by the CUDA kernels (kernels/*.cu) and Rust.
 * build.rs runs bindgen on this file under the `cuda` feature, so the two sides cannot drift.
 * Plain C, no includes: it must parse with libclang and with nvcc alike.
 */
#ifndef DPSGD_H
#define DPSGD_H

/* Philox4x32-10 constants (Salmon et al. 2011; cuRAND's PHILOX_W32_* / PHILOX_M4x32_*). */
#define DPSGD_PHILOX_W32_0 0x9E3779B9u
#define DPSGD_PHILOX_W32_1 0xBB67AE85u
#define DPSGD_PHILOX_M4X32_0 0xD2511F53u
#define DPSGD_PHILOX_M4X32_1 0xCD9E8D57u

/* Threads per block of every kernel. */
#define DPSGD_BLOCK 256
/* Columns a block reduces in the per-sample norm kernel (one partial sum per chunk and row). */
#define DPSGD_NORM_CHUNK 8192
/* Columns a block owns in the clip-and-accumulate kernel (4 per thread). */
#define DPSGD_ACC_TILE 1024
/* Opacus's clip factor: min(1, C / (norm + DPSGD_CLIP_EPS)). */
#define DPSGD_CLIP_EPS 1e-6f

/* A column range [start, end) that lies inside one segment (parameter tensor). */
typedef struct DpsgdTile {
    unsigned long long start;
    unsigned long long end;
    unsigned int segment;
    unsigned int pad;
} DpsgdTile;

/* Which Philox stream noise comes from: curand_init(seed, subsequence, 4 * block). */
typedef struct DpsgdNoiseKey {
    unsigned long long seed;
    unsigned long long subsequence;
} DpsgdNoiseKey;

/* Fused noisy SGD step, see src/cpu/optim.rs for the exact formula. */
typedef struct DpsgdSgdParams {
    DpsgdNoiseKey key;
    unsigned long long n;
    float lr;
    float momentum;
    float dampening;
    float weight_decay;
    float noise_std;
    float inv_batch;
    int nesterov;
    int has_momentum;
} DpsgdSgdParams;

/* Fused noisy Adam / AdamW step, see src/cpu/optim.rs for the exact formula. */
typedef struct DpsgdAdamParams {
    DpsgdNoiseKey key;
    unsigned long long n;
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    float noise_std;
    float inv_batch;
    float bias_correction1;
    float bias_correction2;
    int decoupled;
} DpsgdAdamParams;

#endif /* DPSGD_H */
