//! The IDX file format of MNIST and Fashion-MNIST, raw or gzipped.
//!
//! An IDX file is a big-endian header — the magic number `0x0000TTDD` (TT: element type, DD:
//! number of dimensions), then DD dimension sizes as `u32` — followed by the elements in row-major
//! order. dpsgd reads the unsigned-byte type (`TT = 0x08`) that image and label files use:
//! labels are `0x00000801` (`[N]`), images `0x00000803` (`[N, rows, cols]`).
//!
//! Files are recognised as gzip by their first two bytes (`1f 8b`), whatever their name. The data
//! length must equal the product of the dimension sizes exactly: a truncated file, trailing bytes,
//! a wrong magic number, an empty file or a corrupt gzip stream gives [`Error::Format`] naming the
//! file and what is wrong; a file that cannot be read gives [`Error::Io`].

use std::io::{Read, Write};
use std::path::Path;

use crate::{Error, Result};

/// The IDX element type byte for unsigned bytes.
pub const TYPE_U8: u8 = 0x08;
/// Magic number of an IDX label file: unsigned bytes, one dimension (`[N]`).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Magic number of an IDX image file: unsigned bytes, three dimensions (`[N, rows, cols]`).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;

/// The most elements one IDX file may claim (2³⁴ bytes, 16 GiB): a header above it is corrupt.
pub const MAX_ELEMENTS: u64 = 1 << 34;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// An unsigned-byte IDX array: its dimension sizes and its elements in row-major order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimension sizes, outermost first (`[N]` for labels, `[N, rows, cols]` for images).
    pub dims: Vec<usize>,
    /// The elements, row-major; `data.len()` is the product of `dims`.
    pub data: Vec<u8>,
}

fn format_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn describe_type(t: u8) -> &'static str {
    match t {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => "unknown type",
    }
}

/// Reads an unsigned-byte IDX file (raw or gzipped) of any dimensionality.
///
/// With `expected_magic = Some(m)` the magic number must be `m` (for instance
/// [`IMAGES_MAGIC`]); with `None` any unsigned-byte magic `0x000008DD` with `DD ≥ 1` is accepted.
pub fn read_idx(path: impl AsRef<Path>, expected_magic: Option<u32>) -> Result<IdxArray> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_idx(&bytes, path, expected_magic)
}

/// Reads an IDX label file (magic [`LABELS_MAGIC`]), raw or gzipped: one byte per example.
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    Ok(read_idx(path, Some(LABELS_MAGIC))?.data)
}

/// Reads an IDX image file (magic [`IMAGES_MAGIC`]), raw or gzipped.
///
/// Returns `(n, rows, cols, pixels)` with `pixels.len() == n * rows * cols`.
pub fn read_images(path: impl AsRef<Path>) -> Result<(usize, usize, usize, Vec<u8>)> {
    let a = read_idx(path, Some(IMAGES_MAGIC))?;
    Ok((a.dims[0], a.dims[1], a.dims[2], a.data))
}

/// Parses the bytes of an IDX file (raw or gzipped); `path` only names the file in errors.
///
/// See [`read_idx`] for `expected_magic`.
pub fn parse_idx(bytes: &[u8], path: &Path, expected_magic: Option<u32>) -> Result<IdxArray> {
    if bytes.is_empty() {
        return Err(format_err(
            path,
            "empty file (0 bytes); expected an IDX file",
        ));
    }
    if bytes.len() >= 2 && bytes[..2] == GZIP_MAGIC {
        parse_stream(
            flate2::read::MultiGzDecoder::new(bytes),
            path,
            expected_magic,
            true,
        )
    } else {
        parse_stream(bytes, path, expected_magic, false)
    }
}

/// Reads as many bytes as `r` yields into `buf`, up to its length; returns how many.
fn fill(r: &mut impl Read, buf: &mut [u8], path: &Path, gz: bool) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_err(path, e, gz)),
        }
    }
    Ok(got)
}

fn stream_err(path: &Path, e: std::io::Error, gz: bool) -> Error {
    if gz {
        format_err(path, format!("corrupt or truncated gzip stream: {e}"))
    } else {
        // Reading from memory cannot fail; keep the error honest if it ever does.
        format_err(path, format!("read failed: {e}"))
    }
}

fn parse_stream(
    mut r: impl Read,
    path: &Path,
    expected_magic: Option<u32>,
    gz: bool,
) -> Result<IdxArray> {
    let what = if gz { "decompressed data" } else { "file" };
    let mut magic = [0u8; 4];
    let got = fill(&mut r, &mut magic, path, gz)?;
    if got < 4 {
        return Err(format_err(
            path,
            format!("{what} is {got} bytes long, shorter than the 4-byte IDX magic number"),
        ));
    }
    let m = u32::from_be_bytes(magic);
    let (elem_type, ndim) = (magic[2], magic[3] as usize);
    if let Some(want) = expected_magic {
        if m != want {
            return Err(format_err(
                path,
                format!(
                    "bad magic number 0x{m:08X}, expected 0x{want:08X} ({} with {} dimension(s)){}",
                    describe_type(want.to_be_bytes()[2]),
                    want & 0xFF,
                    if m == IMAGES_MAGIC || m == LABELS_MAGIC {
                        " — is this the images file where labels were expected, or the reverse?"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(format_err(
            path,
            format!("bad magic number 0x{m:08X}: an IDX file starts with two zero bytes"),
        ));
    }
    if elem_type != TYPE_U8 {
        return Err(format_err(
            path,
            format!(
                "IDX element type 0x{elem_type:02X} ({}) is not supported; dpsgd reads unsigned-byte (0x08) IDX files",
                describe_type(elem_type)
            ),
        ));
    }
    if ndim == 0 {
        return Err(format_err(
            path,
            "bad magic number: IDX header declares 0 dimensions",
        ));
    }
    let mut header = vec![0u8; 4 * ndim];
    let got = fill(&mut r, &mut header, path, gz)?;
    if got < header.len() {
        return Err(format_err(
            path,
            format!(
                "truncated header: {ndim} dimension sizes need {} bytes after the magic number, {what} has {got}",
                header.len()
            ),
        ));
    }
    let dims: Vec<u64> = header
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64)
        .collect();
    let dims_str = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(" × ");
    let total = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&t| t <= MAX_ELEMENTS)
        .ok_or_else(|| {
            format_err(
                path,
                format!(
                    "header dimensions {dims_str} exceed {MAX_ELEMENTS} elements: corrupt header"
                ),
            )
        })?;
    // Read at most one byte more than expected, so a huge or trailing stream is caught without
    // reading it all; `Vec` grows with the data, so a lying header allocates nothing up front.
    let mut data = Vec::new();
    (&mut r)
        .take(total + 1)
        .read_to_end(&mut data)
        .map_err(|e| stream_err(path, e, gz))?;
    let header_len = 4 + 4 * ndim;
    if (data.len() as u64) < total {
        return Err(format_err(
            path,
            format!(
                "truncated: header says {dims_str} = {total} data bytes, {what} has {} after its {header_len}-byte header",
                data.len()
            ),
        ));
    }
    if data.len() as u64 > total {
        let mut rest = Vec::new();
        r.read_to_end(&mut rest)
            .map_err(|e| stream_err(path, e, gz))?;
        return Err(format_err(
            path,
            format!(
                "wrong dimensions or trailing data: header says {dims_str} = {total} data bytes, {what} has {} after its {header_len}-byte header",
                data.len() + rest.len()
            ),
        ));
    }
    Ok(IdxArray {
        dims: dims.into_iter().map(|d| d as usize).collect(),
        data,
    })
}

/// Writes an unsigned-byte IDX file with the given dimension sizes, gzipped when `path` ends in
/// `.gz`. The file is written to a temporary name beside `path` and renamed into place.
pub fn write_idx(path: impl AsRef<Path>, dims: &[usize], data: &[u8]) -> Result<()> {
    let path = path.as_ref();
    if dims.is_empty() || dims.len() > 255 {
        return Err(Error::invalid(
            "dims",
            format!("{dims:?}"),
            "1 to 255 dimension sizes",
        ));
    }
    let mut total: usize = 1;
    let mut header = Vec::with_capacity(4 + 4 * dims.len());
    header.extend_from_slice(&[0, 0, TYPE_U8, dims.len() as u8]);
    for &d in dims {
        let d32 = u32::try_from(d)
            .map_err(|_| Error::invalid("dims", format!("{dims:?}"), "sizes below 2^32"))?;
        header.extend_from_slice(&d32.to_be_bytes());
        total = total
            .checked_mul(d)
            .ok_or_else(|| Error::invalid("dims", format!("{dims:?}"), "a product that fits"))?;
    }
    if total != data.len() {
        return Err(Error::shape(
            "write_idx",
            format!(
                "dims {dims:?} hold {total} elements, data has {}",
                data.len()
            ),
        ));
    }
    let gz = path.extension().is_some_and(|e| e == "gz");
    crate::atomic::write_with(path, |w| {
        if gz {
            let mut enc = flate2::write::GzEncoder::new(w, flate2::Compression::default());
            enc.write_all(&header)?;
            enc.write_all(data)?;
            enc.finish()?;
        } else {
            w.write_all(&header)?;
            w.write_all(data)?;
        }
        Ok(())
    })
}
