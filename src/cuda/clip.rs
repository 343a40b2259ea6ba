//! Per-sample norms, clip factors and fused clip-and-accumulate on the GPU
//! (`kernels/clip.cu`). Same signatures and semantics as [`crate::cpu::clip`].

use super::ffi::{DpsgdTile, DPSGD_ACC_TILE, DPSGD_BLOCK, DPSGD_NORM_CHUNK};
use super::{drv, CudaBackend};
use crate::check;
use crate::{Error, GradElement, Layout, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// Splits every segment of `layout` into column tiles of at most `width` columns.
pub(crate) fn tiles(layout: &Layout, width: usize) -> Vec<DpsgdTile> {
    let mut v = Vec::new();
    for s in 0..layout.num_segments() {
        let r = layout.segment(s);
        let mut a = r.start;
        while a < r.end {
            let b = (a + width).min(r.end);
            v.push(DpsgdTile {
                start: a as u64,
                end: b as u64,
                segment: s as u32,
                pad: 0,
            });
            a = b;
        }
    }
    v
}

impl CudaBackend {
    /// The tile table of `layout` at `width`, uploaded once and cached.
    pub(crate) fn tile_table(
        &self,
        layout: &Layout,
        width: usize,
    ) -> Result<(Arc<CudaSlice<DpsgdTile>>, usize)> {
        let key = (layout.offsets().to_vec(), width);
        let mut cache = self.tiles.lock().map_err(|_| Error::Cuda {
            op: "tile cache",
            msg: "poisoned lock".into(),
        })?;
        if let Some((t, n)) = cache.get(&key) {
            return Ok((t.clone(), *n));
        }
        let host = tiles(layout, width);
        let dev = Arc::new(self.htod(&host)?);
        if cache.len() > 64 {
            cache.clear();
        }
        cache.insert(key, (dev.clone(), host.len()));
        Ok((dev, host.len()))
    }

    fn sumsq_kernel<T: GradElement>(&self) -> &cudarc::driver::CudaFunction {
        match T::NAME {
            "bf16" => &self.k.sumsq_bf16,
            "f16" => &self.k.sumsq_f16,
            _ => &self.k.sumsq_f32,
        }
    }

    fn acc_kernel<T: GradElement>(&self) -> &cudarc::driver::CudaFunction {
        match T::NAME {
            "bf16" => &self.k.clip_acc_bf16,
            "f16" => &self.k.clip_acc_f16,
            _ => &self.k.clip_acc_f32,
        }
    }
}

fn cfg1(blocks: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.max(1) as u32, 1, 1),
        block_dim: (DPSGD_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// GPU twin of [`crate::cpu::clip::per_sample_norms`]: a block per (chunk of ≤ 8192 columns,
/// row) writes a partial sum of squares, then one thread per row adds its chunks in order. The
/// norms are copied back to check them for NaN/Inf (B floats).
pub fn per_sample_norms<T: GradElement>(
    dev: &CudaBackend,
    grads: &CudaView<'_, T>,
    batch: usize,
    layout: &Layout,
    norms: &mut CudaViewMut<'_, f32>,
    seg_norms: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    check::norms_shapes(grads.len(), batch, layout, norms.len(), seg_norms.len())?;
    if batch == 0 {
        return Ok(());
    }
    let (chunks, nc) = dev.tile_table(layout, DPSGD_NORM_CHUNK as usize)?;
    // SAFETY: every element of `partial` (row r, chunk c) is written by the sumsq kernel's block
    // (c, r mod gridDim.y) before dpsgd_norms_finalize reads it, on the same stream.
    let mut partial = unsafe { dev.stream.alloc::<f32>(batch * nc) }.map_err(drv("alloc"))?;
    let (b64, p64, nc32, ns32) = (
        batch as u64,
        layout.num_params() as u64,
        nc as u32,
        layout.num_segments() as u32,
    );
    let cfg = LaunchConfig {
        grid_dim: (nc as u32, batch.min(65535) as u32, 1),
        block_dim: (DPSGD_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = dev.stream.launch_builder(dev.sumsq_kernel::<T>());
    l.arg(grads)
        .arg(&b64)
        .arg(&p64)
        .arg(chunks.as_ref())
        .arg(&nc32)
        .arg(&mut partial);
    // SAFETY: argument types and order match dpsgd_sumsq_partial_*; `grads` holds batch·P
    // elements (checked above), `chunks` nc tiles inside [0, P), `partial` batch·nc floats.
    unsafe { l.launch(cfg) }.map_err(drv("dpsgd_sumsq_partial"))?;
    let mut l = dev.stream.launch_builder(&dev.k.norms_finalize);
    l.arg(&partial)
        .arg(chunks.as_ref())
        .arg(&nc32)
        .arg(&ns32)
        .arg(&b64)
        .arg(&mut *norms)
        .arg(&mut *seg_norms);
    // SAFETY: types and order match dpsgd_norms_finalize; norms has batch and seg_norms
    // batch·S elements (checked above); one thread per row.
    unsafe { l.launch(cfg1(b64.div_ceil(DPSGD_BLOCK as u64))) }
        .map_err(drv("dpsgd_norms_finalize"))?;
    let host = dev.dtoh(&norms.as_view())?;
    check::finite_norms(&host)
}

/// GPU twin of [`crate::cpu::clip::clip_factors`].
pub fn clip_factors(
    dev: &CudaBackend,
    norms: &CudaView<'_, f32>,
    max_norms: &[f32],
    factors: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    check::factors_shapes(norms.len(), max_norms, factors.len())?;
    if norms.is_empty() {
        return Ok(());
    }
    let c = dev.htod(max_norms)?;
    let (ns, n) = (max_norms.len() as u32, norms.len() as u64);
    let mut l = dev.stream.launch_builder(&dev.k.clip_factors);
    l.arg(norms).arg(&c).arg(&ns).arg(&n).arg(&mut *factors);
    // SAFETY: types and order match dpsgd_clip_factors; norms and factors hold n floats, c holds
    // ns floats (checked above).
    unsafe { l.launch(cfg1(n.div_ceil(DPSGD_BLOCK as u64))) }.map_err(drv("dpsgd_clip_factors"))?;
    Ok(())
}

/// GPU twin of [`crate::cpu::clip::scale_rows`]: `g[i, j] *= factors[i]` in place, one thread
/// per element.
pub fn scale_rows(
    dev: &CudaBackend,
    g: &mut CudaViewMut<'_, f32>,
    batch: usize,
    factors: &CudaView<'_, f32>,
) -> Result<()> {
    let p = check::scale_rows_shapes(g.len(), batch, factors.len())?;
    if batch == 0 || p == 0 {
        return Ok(());
    }
    let (p, n) = (p as u64, g.len() as u64);
    let mut l = dev.stream.launch_builder(&dev.k.scale_rows);
    l.arg(&mut *g).arg(factors).arg(&p).arg(&n);
    // SAFETY: types and order match dpsgd_scale_rows; g holds n = batch · p floats and factors
    // holds batch floats (checked above), so every index i < n reads factors[i / p] < batch.
    unsafe { l.launch(cfg1(n.div_ceil(DPSGD_BLOCK as u64))) }.map_err(drv("dpsgd_scale_rows"))?;
    Ok(())
}

/// GPU twin of [`crate::cpu::clip::clip_accumulate`]. Blocks own tiles of 1024 columns (inside
/// one segment) and a range of rows; when there are too few tiles to fill the GPU, rows are
/// split into ranges whose partial sums a second kernel adds in a fixed order (deterministic).
pub fn clip_accumulate<T: GradElement>(
    dev: &CudaBackend,
    grads: &CudaView<'_, T>,
    batch: usize,
    layout: &Layout,
    factors: &CudaView<'_, f32>,
    sum: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    let nf = check::accumulate_shapes(grads.len(), batch, layout, factors.len(), sum.len())?;
    let p = layout.num_params();
    if batch == 0 || p == 0 {
        return Ok(());
    }
    let tile_layout = if nf == 1 {
        Layout::flat(p)
    } else {
        layout.clone()
    };
    let (tiles, nt) = dev.tile_table(&tile_layout, DPSGD_ACC_TILE as usize)?;
    let target_blocks = dev.sm_count as usize * 8;
    let mut splits = target_blocks
        .div_ceil(nt)
        .clamp(1, batch.div_ceil(8).max(1));
    let rows_per = batch.div_ceil(splits);
    splits = batch.div_ceil(rows_per);
    let cfg = LaunchConfig {
        grid_dim: (nt as u32, splits as u32, 1),
        block_dim: (DPSGD_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let (b64, p64, nf32, rows64) = (batch as u64, p as u64, nf as u32, rows_per as u64);
    if splits == 1 {
        let direct = 1i32;
        let mut l = dev.stream.launch_builder(dev.acc_kernel::<T>());
        l.arg(grads)
            .arg(&b64)
            .arg(&p64)
            .arg(factors)
            .arg(&nf32)
            .arg(tiles.as_ref())
            .arg(&rows64)
            .arg(&mut *sum)
            .arg(&direct);
        // SAFETY: types and order match dpsgd_clip_accumulate_*; grads holds batch·P, factors
        // batch·F, sum P elements (checked above); the tiles cover [0, P).
        unsafe { l.launch(cfg) }.map_err(drv("dpsgd_clip_accumulate"))?;
        return Ok(());
    }
    // SAFETY: the accumulate kernel writes every (split, column) of `partial` (the tiles cover
    // all columns and the grid covers all splits) before dpsgd_reduce_splits reads it.
    let mut partial = unsafe { dev.stream.alloc::<f32>(splits * p) }.map_err(drv("alloc"))?;
    let direct = 0i32;
    let mut l = dev.stream.launch_builder(dev.acc_kernel::<T>());
    l.arg(grads)
        .arg(&b64)
        .arg(&p64)
        .arg(factors)
        .arg(&nf32)
        .arg(tiles.as_ref())
        .arg(&rows64)
        .arg(&mut partial)
        .arg(&direct);
    // SAFETY: as above, with `partial` holding splits·P floats.
    unsafe { l.launch(cfg) }.map_err(drv("dpsgd_clip_accumulate"))?;
    let s64 = splits as u64;
    let mut l = dev.stream.launch_builder(&dev.k.reduce_splits);
    l.arg(&partial).arg(&s64).arg(&p64).arg(&mut *sum);
    // SAFETY: types and order match dpsgd_reduce_splits; partial holds splits·P and sum P floats.
    unsafe { l.launch(cfg1(p64.div_ceil(DPSGD_BLOCK as u64))) }
        .map_err(drv("dpsgd_reduce_splits"))?;
    Ok(())
}
