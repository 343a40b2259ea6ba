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

use super::Dataset;
pub use crate::cpu::scatter::{ScatterParams, Scattering2d};
use crate::{Error, Result};
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
    check_size(ds, params)?;
    let s = Scattering2d::new(params)?;
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
    let d = scatter_dataset(ds, params)?;
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
