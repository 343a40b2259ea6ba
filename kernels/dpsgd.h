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

/* Generators of a noise stream (src/rng.rs: Generator). */
#define DPSGD_GEN_PHILOX 0u
#define DPSGD_GEN_CHACHA20 1u

/* One noise stream: Philox4x32-10 (key[0], key[1] = cuRAND's seed; stream = cuRAND's
 * subsequence) or ChaCha20 (256-bit key; stream id; src/cpu/chacha.rs for the layout). */
typedef struct DpsgdNoiseKey {
    unsigned int key[8];
    unsigned long long stream;
    unsigned int generator;
    unsigned int pad;
} DpsgdNoiseKey;

/* Fused noisy SGD step, see src/cpu/optim.rs for the exact formula. The noise std and the
 * inverse expected batch size are f64: the noised gradient is computed in f64, rounded once. */
typedef struct DpsgdSgdParams {
    DpsgdNoiseKey key;
    double noise_std;
    double inv_batch;
    unsigned long long n;
    float lr;
    float momentum;
    float dampening;
    float weight_decay;
    int nesterov;
    int has_momentum;
} DpsgdSgdParams;

/* Fused noisy Adam / AdamW step, see src/cpu/optim.rs for the exact formula. */
typedef struct DpsgdAdamParams {
    DpsgdNoiseKey key;
    double noise_std;
    double inv_batch;
    unsigned long long n;
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    float bias_correction1;
    float bias_correction2;
    int decoupled;
} DpsgdAdamParams;


/* ---- Conv-net layers (kernels/{conv,linear,norm,pool,activation,loss,grad}.cu) ---- */

/* Output tile (rows and columns) of the implicit-GEMM kernels (kernels/nn.cuh): 64 x 64 per
   block of DPSGD_BLOCK threads, 4 x 4 outputs per thread. */
#define DPSGD_GEMM_TILE 64

/* Activation kinds of kernels/activation.cu (src/cpu/activation.rs's `Activation`). */
#define DPSGD_ACT_RELU 0
#define DPSGD_ACT_LEAKY_RELU 1
#define DPSGD_ACT_TANH 2
#define DPSGD_ACT_SIGMOID 3

/* The geometry of a convolution over one image [c, h, w] with a k x k kernel, stride, zero
   padding `pad`, output oh x ow: src/cpu/conv.rs's ConvGeom. */
typedef struct DpsgdConvGeom {
    unsigned int c;
    unsigned int h;
    unsigned int w;
    unsigned int k;
    unsigned int stride;
    unsigned int pad;
    unsigned int oh;
    unsigned int ow;
} DpsgdConvGeom;

/* Arguments of the convolution kernels (kernels/conv.cu). `m` is the channel count of the
   other operand: the output channels of dpsgd_conv_fwd, the channels of dy in
   dpsgd_conv_bwd_data, the rows of the per-example activation in dpsgd_conv_wgrad.
   Gradient kernels: block z covers examples [z·ex_per, min((z+1)·ex_per, batch)) and writes
   at out + z·z_stride as value + beta·old (old unread when beta = 0). */
typedef struct DpsgdConvArgs {
    DpsgdConvGeom g;
    unsigned int m;
    unsigned int batch;
    unsigned int has_bias;
    unsigned int ex_per;
    unsigned long long z_stride;
    float beta;
    unsigned int pad_;
} DpsgdConvArgs;

/* Arguments of the Linear kernels (kernels/linear.cu); ex_per, z_stride and beta as above
   (z_stride is the row stride P of the per-sample matrix in dpsgd_linear_per_sample). */
typedef struct DpsgdLinearArgs {
    unsigned int batch;
    unsigned int inf;
    unsigned int outf;
    unsigned int has_bias;
    unsigned int ex_per;
    unsigned int pad_;
    unsigned long long z_stride;
    float beta;
    unsigned int pad2_;
} DpsgdLinearArgs;

/* Arguments of the GroupNorm kernels (kernels/norm.cu). The backward writes example b's
   (dγ, dβ) at gout + b·out_stride (dγ [c], then dβ [c]) when want_grad. */
typedef struct DpsgdGroupNormArgs {
    unsigned int batch;
    unsigned int c;
    unsigned int spatial;
    unsigned int groups;
    double eps;
    unsigned long long out_stride;
    unsigned int want_grad;
    unsigned int want_dx;
} DpsgdGroupNormArgs;

/* Arguments of the pooling kernels (kernels/pool.cu): `planes` = batch · channels images of
   h x w, k x k windows, stride, output oh x ow. */
typedef struct DpsgdPoolArgs {
    unsigned long long planes;
    unsigned int h;
    unsigned int w;
    unsigned int k;
    unsigned int stride;
    unsigned int oh;
    unsigned int ow;
} DpsgdPoolArgs;

/* ---- The scattering transform (kernels/scatter.cu; CPU twin src/cpu/scatter.rs) ---- */

/* Complex f64 work planes of M_p x N_p per block of dpsgd_scatter (U0, U1, U2, S, W):
   src/cpu/scatter.rs's SCRATCH_PLANES. */
#define DPSGD_SCATTER_PLANES 5

/* Arguments of dpsgd_scatter: `count` image planes of m x n floats, each into out_len =
   K * oh * ow floats; padded size mp x np (reflect padding pad_top rows above, pad_left columns
   left); J, L; the tables' layout is src/cpu/scatter.rs's KernelTables. Block z works in
   scratch planes [z * DPSGD_SCATTER_PLANES, (z + 1) * DPSGD_SCATTER_PLANES) of mp * np
   double2 each. */
typedef struct DpsgdScatterArgs {
    unsigned long long count;
    unsigned long long out_len;
    unsigned int m;
    unsigned int n;
    unsigned int mp;
    unsigned int np;
    unsigned int pad_top;
    unsigned int pad_left;
    unsigned int j;
    unsigned int l;
    unsigned int oh;
    unsigned int ow;
} DpsgdScatterArgs;

#endif /* DPSGD_H */
