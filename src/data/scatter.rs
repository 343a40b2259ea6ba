//! ScatterNet features of a dataset (Tramèr & Boneh, "Differentially Private Learning Needs
//! Better Features (or Much More Data)", ICLR 2021): the fixed scattering transform of
//! [`crate::cpu::scatter`] applied to every image, computed once and cached on disk.
//!
//! The features of an image depend on that image alone and on fixed parameters, so computing
//! them (and caching them) costs no privacy: DP-SGD then trains on `[c·81, 7, 7]` inputs
//! instead of `[c, 28, 28]` pixels.
//!
//! # Cache
//! [`scatter_dataset_cached`] keeps one file per (data, transform) in a folder:
//! `scatter-<key>.bin`, where the key is the SHA-256 of a format tag, the transform's
//! parameters, the implementation version ([`FEATURE_VERSION`]) and the images' bytes. The file
//! holds a header (magic, version, key, shape), the features as little-endian f32 and the
//! SHA-256 of the features. It is read whole into memory. A file that is truncated, has
//! another key or shape, or whose checksum does not match is reported (a warning on stderr
//! and [`CacheOutcome::Recomputed`]) and rewritten from a fresh computation; it is never
//! used.
//!
//! # Device
//! The `_on` variants compute on a [`Device`]: the CPU ([`Scattering2d::transform`], rustfft)
//! or a GPU (`crate::cuda::scatter::CudaScattering2d`, feature `cuda`); a GPU failure is an
//! error, never a silent fallback to the CPU. Both compute the same transform in f64 from the
//! same filters and round once to f32; they differ only in the f64 rounding of the DFTs (dense
//! DFTs by twiddle tables on the GPU, rustfft on the CPU: ~1e-15 of each channel's largest
//! coefficient, `src/cpu/scatter.rs`'s tests). On MNIST's 10 000 test images the kernel's
//! algorithm (run on the host) and the CPU transform give bit-identical f32 features except
//! 0.078% of them (30 928 of 39.7 M, mostly near-zero ones), which differ by at most 1.3e-9 of
//! their channel's largest value, and by at most one f32 ulp where the feature is at least
//! 1e-3 of it (`mnist_features_kernel_algorithm_vs_transform` in tests/scatter.rs;
//! BENCHMARKS.md) — far below the 1e-5 to which both match Kymatio, and below anything
//! training could notice. The device is therefore **not** part of the cache key: a cached file
//! may have been computed on either device, and serves both.

use super::Dataset;
pub use crate::cpu::scatter::{ScatterParams, Scattering2d};
use crate::{Device, Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Version of the feature computation, part of the cache key: bump it whenever the values
/// [`Scattering2d`] computes change, so old cache files are not reused.
pub const FEATURE_VERSION: u32 = 1;

const MAGIC: &[u8; 8] = b"DPSCATv1";
const HEADER: usize = 8 + 4 + 32 + 8 + 4 * 3;

/// What [`scatter_dataset_cached`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// The features were read from this file.
    Hit(PathBuf),
    /// No file existed: the features were computed and written there.
    Computed(PathBuf),
    /// A file existed but was unusable (the reason): recomputed and rewritten.
    Recomputed(PathBuf, String),
}

/// The features of every image of `ds` (images `[c, M, N]` with M, N = `params`' size):
/// a dataset of `[c·K, M/2^J, N/2^J]` examples with the same labels, K =
/// [`ScatterParams::channels`]. Feed it pixels on the scale the features are meant for
/// (Tramèr & Boneh: [0, 1], [`Dataset::load_unit_range`]).
pub fn scatter_dataset(ds: &Dataset, params: ScatterParams) -> Result<Dataset> {
    scatter_dataset_on(ds, params, &Device::Cpu)
}

/// A transform ready to run on a device: the CPU's, or its tables uploaded to a GPU.
enum OnDevice {
    Cpu(Scattering2d),
    #[cfg(feature = "cuda")]
    Cuda(Box<crate::cuda::scatter::CudaScattering2d>),
}

impl OnDevice {
    fn new(params: ScatterParams, device: &Device) -> Result<Self> {
        let s = Scattering2d::new(params)?;
        match device {
            Device::Cpu => Ok(OnDevice::Cpu(s)),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => {
                let g = crate::cuda::scatter::CudaScattering2d::new(d.backend(), &s)?;
                Ok(OnDevice::Cuda(Box::new(g)))
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(d) => {
                let _ = d;
                Err(Error::CudaNotCompiled)
            }
        }
    }

    fn out_len(&self) -> usize {
        match self {
            OnDevice::Cpu(s) => s.out_len(),
            #[cfg(feature = "cuda")]
            OnDevice::Cuda(s) => s.out_len(),
        }
    }

    fn transform(&self, images: &[f32], c: usize, out: &mut [f32]) -> Result<()> {
        match self {
            OnDevice::Cpu(s) => s.transform(images, c, out),
            #[cfg(feature = "cuda")]
            OnDevice::Cuda(s) => s.transform_host(images, c, out),
        }
    }
}

/// [`scatter_dataset`] computed on `device` (see [Device](self#device)): the CPU, or the
/// CUDA kernel on a GPU (an error, not a fallback, if it fails).
pub fn scatter_dataset_on(ds: &Dataset, params: ScatterParams, device: &Device) -> Result<Dataset> {
    check_size(ds, params)?;
    let s = OnDevice::new(params, device)?;
    let mut out = vec![0f32; ds.len() * ds.channels() * s.out_len()];
    s.transform(ds.images(), ds.channels(), &mut out)?;
    let (h, w) = params.out_hw();
    Dataset::new(
        out,
        ds.labels().to_vec(),
        ds.channels() * params.channels(),
        h,
        w,
        ds.classes(),
    )
}

fn check_size(ds: &Dataset, params: ScatterParams) -> Result<()> {
    if (ds.height(), ds.width()) != (params.height, params.width) {
        return Err(Error::shape(
            "scatter_dataset",
            format!(
                "images are {}×{}, the transform is built for {}×{}",
                ds.height(),
                ds.width(),
                params.height,
                params.width
            ),
        ));
    }
    Ok(())
}

/// The cache key of `ds`'s features under `params` (64 hex digits).
pub fn cache_key(ds: &Dataset, params: ScatterParams) -> String {
    let mut h = Sha256::new();
    h.update(b"dpsgd scattering features\0");
    h.update(FEATURE_VERSION.to_le_bytes());
    for v in [
        params.j,
        params.l,
        params.height,
        params.width,
        ds.len(),
        ds.channels(),
    ] {
        h.update((v as u64).to_le_bytes());
    }
    let mut buf = Vec::with_capacity(1 << 16);
    for chunk in ds.images().chunks(1 << 14) {
        buf.clear();
        buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        h.update(&buf);
    }
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// [`scatter_dataset`] through a cache in `dir` (created if missing): reads
/// `dir/scatter-<key>.bin` when it is valid, else computes the features and writes it
/// atomically. See the [module docs](self) for the format and what happens to a corrupt file.
pub fn scatter_dataset_cached(
    ds: &Dataset,
    params: ScatterParams,
    dir: &Path,
) -> Result<(Dataset, CacheOutcome)> {
    scatter_dataset_cached_on(ds, params, dir, &Device::Cpu)
}

/// [`scatter_dataset_cached`] computing missing features on `device` (the same key and file
/// whatever the device: see [Device](self#device)).
pub fn scatter_dataset_cached_on(
    ds: &Dataset,
    params: ScatterParams,
    dir: &Path,
    device: &Device,
) -> Result<(Dataset, CacheOutcome)> {
    check_size(ds, params)?;
    let key = cache_key(ds, params);
    let path = dir.join(format!("scatter-{key}.bin"));
    let (h, w) = params.out_hw();
    let shape = [ds.channels() * params.channels(), h, w];
    let mut reason = None;
    match std::fs::read(&path) {
        Ok(bytes) => match parse(&bytes, &key, ds.len(), shape) {
            Ok(feats) => {
                let d = Dataset::new(feats, ds.labels().to_vec(), shape[0], h, w, ds.classes())?;
                return Ok((d, CacheOutcome::Hit(path)));
            }
            Err(why) => {
                eprintln!(
                    "warning: scattering cache {} is unusable ({why}); recomputing it",
                    path.display()
                );
                reason = Some(why);
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::Io { path, source }),
    }
    let d = scatter_dataset_on(ds, params, device)?;
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let bytes = serialise(&key, d.len(), shape, d.images());
    crate::train::write_atomic(&path, &bytes)?;
    let outcome = match reason {
        None => CacheOutcome::Computed(path),
        Some(r) => CacheOutcome::Recomputed(path, r),
    };
    Ok((d, outcome))
}

fn serialise(key: &str, n: usize, shape: [usize; 3], feats: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + feats.len() * 4 + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FEATURE_VERSION.to_le_bytes());
    out.extend_from_slice(&key_bytes(key));
    out.extend_from_slice(&(n as u64).to_le_bytes());
    for s in shape {
        out.extend_from_slice(&(s as u32).to_le_bytes());
    }
    let start = out.len();
    out.extend(feats.iter().flat_map(|v| v.to_le_bytes()));
    let sum = Sha256::digest(&out[start..]);
    out.extend_from_slice(&sum);
    out
}

fn key_bytes(key: &str) -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(key.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    k
}

/// The features in a cache file, or why it cannot be used.
fn parse(
    bytes: &[u8],
    key: &str,
    n: usize,
    shape: [usize; 3],
) -> std::result::Result<Vec<f32>, String> {
    let per = shape[0] * shape[1] * shape[2];
    let want = HEADER + n * per * 4 + 32;
    if bytes.len() != want {
        return Err(format!("{} bytes, {want} expected", bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err("wrong magic".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap_or([0; 4]));
    if u32_at(8) != FEATURE_VERSION {
        return Err(format!("feature version {}", u32_at(8)));
    }
    if bytes[12..44] != key_bytes(key) {
        return Err("key mismatch".into());
    }
    let n_file = u64::from_le_bytes(bytes[44..52].try_into().unwrap_or([0; 8]));
    let shape_file = [u32_at(52), u32_at(56), u32_at(60)];
    if n_file != n as u64 || shape_file.iter().zip(shape).any(|(&a, b)| a as usize != b) {
        return Err(format!("shape {n_file} × {shape_file:?}"));
    }
    let payload = &bytes[HEADER..want - 32];
    if Sha256::digest(payload).as_slice() != &bytes[want - 32..] {
        return Err("checksum mismatch (corrupt file)".into());
    }
    let feats: Vec<f32> = payload
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if feats.iter().any(|v| !v.is_finite()) {
        return Err("non-finite feature".into());
    }
    Ok(feats)
}

/// The augmented views of [`scatter_views`]: view 0 of every image is the image itself, views
/// 1 .. V − 1 are random shifts (and flips) drawn by [`crate::augment::Augmentation::apply`]
/// from a **public** stream: [`crate::rng::Purpose::AugmentationViews`] of the fixed seed
/// `seed`, stream = the image's index. The draws depend on no data and are not secret (they
/// only choose which function of an example DP-SGD clips; De et al. 2022, §3.1), so one cache
/// serves every run whatever its seed, and nothing here needs accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ViewSpec {
    /// Views per image, V (1..=[`MAX_VIEWS`]; 1: the identity only).
    pub views: usize,
    /// The random transform of views 1 .. V − 1.
    pub augmentation: crate::augment::Augmentation,
    /// Seed of the public view stream.
    pub seed: u64,
}

/// Largest number of views per image ([`ViewSpec::views`]): each view of MNIST's 60 000
/// training images takes 0.95 GB of memory (and of cache file).
pub const MAX_VIEWS: usize = 16;

impl ViewSpec {
    /// Checks the fields.
    pub fn validate(&self) -> Result<()> {
        if self.views == 0 || self.views > MAX_VIEWS {
            return Err(Error::invalid(
                "augmult_views",
                self.views,
                format!("in 1..={MAX_VIEWS} views per image (each view of 60 000 MNIST images takes 0.95 GB)"),
            ));
        }
        self.augmentation.validate()
    }
}

/// Images per block of [`scatter_views`] (bounds the copies held at once).
const VIEW_BLOCK: usize = 512;

/// The scattering features of V views of every image of `ds` (see [`ViewSpec`]): a dataset
/// of `ds.len() · V` examples, **example-major** — row `i·V + v` is view v of image i (view 0
/// the unshifted image, whose features equal [`scatter_dataset`]'s) — with the labels
/// repeated.
pub fn scatter_views(ds: &Dataset, params: ScatterParams, spec: ViewSpec) -> Result<Dataset> {
    scatter_views_on(ds, params, spec, &Device::Cpu)
}

/// [`scatter_views`] computed on `device` (see [Device](self#device)).
pub fn scatter_views_on(
    ds: &Dataset,
    params: ScatterParams,
    spec: ViewSpec,
    device: &Device,
) -> Result<Dataset> {
    check_size(ds, params)?;
    spec.validate()?;
    let s = OnDevice::new(params, device)?;
    let (c, h, w) = (ds.channels(), ds.height(), ds.width());
    let ex = c * h * w;
    let v = spec.views;
    let out_ex = c * s.out_len();
    let n = ds.len();
    let mut out = vec![0f32; n * v * out_ex];
    let key = crate::rng::RunKeys::seeded(spec.seed).key(crate::rng::Purpose::AugmentationViews);
    let mut copies = vec![0f32; VIEW_BLOCK.min(n.max(1)) * v * ex];
    for (blk, imgs) in ds.images().chunks(VIEW_BLOCK * ex).enumerate() {
        let b = imgs.len() / ex;
        for (j, img) in imgs.chunks(ex).enumerate() {
            let i = blk * VIEW_BLOCK + j;
            let mut rng = key.rng(i as u64);
            let dst = &mut copies[j * v * ex..(j + 1) * v * ex];
            dst[..ex].copy_from_slice(img);
            for u in 1..v {
                spec.augmentation
                    .apply(img, &mut dst[u * ex..(u + 1) * ex], (c, h, w), &mut rng);
            }
        }
        let first = blk * VIEW_BLOCK * v * out_ex;
        s.transform(
            &copies[..b * v * ex],
            c,
            &mut out[first..first + b * v * out_ex],
        )?;
    }
    let labels: Vec<u32> = ds
        .labels()
        .iter()
        .flat_map(|&y| std::iter::repeat_n(y, v))
        .collect();
    let (oh, ow) = params.out_hw();
    Dataset::new(out, labels, c * params.channels(), oh, ow, ds.classes())
}

/// The cache key of `ds`'s views under `params` and `spec` (64 hex digits): the plain key's
/// inputs plus the view count, the transform and the view seed.
pub fn views_cache_key(ds: &Dataset, params: ScatterParams, spec: ViewSpec) -> String {
    let mut h = Sha256::new();
    h.update(b"dpsgd scattering views\0");
    h.update(cache_key(ds, params).as_bytes());
    for v in [
        spec.views as u64,
        spec.augmentation.max_shift as u64,
        spec.augmentation.hflip as u64,
        spec.seed,
    ] {
        h.update(v.to_le_bytes());
    }
    hex(&h.finalize())
}

/// [`scatter_views`] through a cache in `dir`: `dir/views-<key>.bin`, the format of
/// [`scatter_dataset_cached`]'s files (header, little-endian f32, SHA-256 of the payload),
/// written and read in blocks so that no second copy of the (V × 0.95 GB for MNIST) payload
/// is held. An unusable file is reported and recomputed, as there.
pub fn scatter_views_cached(
    ds: &Dataset,
    params: ScatterParams,
    spec: ViewSpec,
    dir: &Path,
) -> Result<(Dataset, CacheOutcome)> {
    scatter_views_cached_on(ds, params, spec, dir, &Device::Cpu)
}

/// [`scatter_views_cached`] computing missing views on `device` (the same key and file
/// whatever the device: see [Device](self#device)).
pub fn scatter_views_cached_on(
    ds: &Dataset,
    params: ScatterParams,
    spec: ViewSpec,
    dir: &Path,
    device: &Device,
) -> Result<(Dataset, CacheOutcome)> {
    check_size(ds, params)?;
    spec.validate()?;
    let key = views_cache_key(ds, params, spec);
    let path = dir.join(format!("views-{key}.bin"));
    let (h, w) = params.out_hw();
    let shape = [ds.channels() * params.channels(), h, w];
    let n = ds.len() * spec.views;
    let labels: Vec<u32> = ds
        .labels()
        .iter()
        .flat_map(|&y| std::iter::repeat_n(y, spec.views))
        .collect();
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let mut reason = None;
    match std::fs::File::open(&path) {
        Ok(f) => match read_streaming(f, &key, n, shape).map_err(io)? {
            Ok(feats) => {
                let d = Dataset::new(feats, labels, shape[0], h, w, ds.classes())?;
                return Ok((d, CacheOutcome::Hit(path)));
            }
            Err(why) => {
                eprintln!(
                    "warning: scattering views cache {} is unusable ({why}); recomputing it",
                    path.display()
                );
                reason = Some(why);
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::Io { path, source }),
    }
    let d = scatter_views_on(ds, params, spec, device)?;
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let tmp = dir.join(format!("views-{key}.bin.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut head = Vec::with_capacity(HEADER);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&FEATURE_VERSION.to_le_bytes());
        head.extend_from_slice(&key_bytes(&key));
        head.extend_from_slice(&(n as u64).to_le_bytes());
        for s in shape {
            head.extend_from_slice(&(s as u32).to_le_bytes());
        }
        f.write_all(&head)?;
        let mut sha = Sha256::new();
        let mut buf = Vec::with_capacity(1 << 20);
        for chunk in d.images().chunks(1 << 18) {
            buf.clear();
            buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            sha.update(&buf);
            f.write_all(&buf)?;
        }
        f.write_all(&sha.finalize())?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(io)?;
    let outcome = match reason {
        None => CacheOutcome::Computed(path),
        Some(r) => CacheOutcome::Recomputed(path, r),
    };
    Ok((d, outcome))
}

/// The payload of a views cache file read in blocks (I/O errors outside, reasons a file
/// cannot be used inside).
fn read_streaming(
    f: std::fs::File,
    key: &str,
    n: usize,
    shape: [usize; 3],
) -> std::io::Result<std::result::Result<Vec<f32>, String>> {
    use std::io::Read;
    let per = shape[0] * shape[1] * shape[2];
    let want = (HEADER + n * per * 4 + 32) as u64;
    let len = f.metadata()?.len();
    if len != want {
        return Ok(Err(format!("{len} bytes, {want} expected")));
    }
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    let mut head = [0u8; HEADER];
    r.read_exact(&mut head)?;
    if &head[..8] != MAGIC {
        return Ok(Err("wrong magic".into()));
    }
    let u32_at = |o: usize| u32::from_le_bytes(head[o..o + 4].try_into().unwrap_or([0; 4]));
    if u32_at(8) != FEATURE_VERSION {
        return Ok(Err(format!("feature version {}", u32_at(8))));
    }
    if head[12..44] != key_bytes(key) {
        return Ok(Err("key mismatch".into()));
    }
    let n_file = u64::from_le_bytes(head[44..52].try_into().unwrap_or([0; 8]));
    let shape_file = [u32_at(52), u32_at(56), u32_at(60)];
    if n_file != n as u64 || shape_file.iter().zip(shape).any(|(&a, b)| a as usize != b) {
        return Ok(Err(format!("shape {n_file} × {shape_file:?}")));
    }
    let mut feats = Vec::with_capacity(n * per);
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = n * per * 4;
    while left > 0 {
        let m = left.min(buf.len());
        r.read_exact(&mut buf[..m])?;
        sha.update(&buf[..m]);
        feats.extend(
            buf[..m]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        left -= m;
    }
    let mut sum = [0u8; 32];
    r.read_exact(&mut sum)?;
    if sha.finalize().as_slice() != sum {
        return Ok(Err("checksum mismatch (corrupt file)".into()));
    }
    if feats.iter().any(|v| !v.is_finite()) {
        return Ok(Err("non-finite feature".into()));
    }
    Ok(Ok(feats))
}
