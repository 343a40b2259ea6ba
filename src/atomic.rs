//! Atomic file writes: write a temporary file beside the target, flush and fsync it, then
//! rename it over the target, so a crash (or SIGKILL) leaves the old file or the new one, never a
//! torn one. Used by checkpoints, metrics, configs and the IDX writer.

use crate::{Error, Result};
use std::io::{BufWriter, Write};
use std::path::Path;

/// Writes `path` atomically with the bytes `fill` writes to the temporary file.
pub(crate) fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let io = |source| Error::Io {
        path: tmp.clone(),
        source,
    };
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let mut w = BufWriter::new(file);
    fill(&mut w).map_err(io)?;
    w.flush().map_err(io)?;
    w.get_ref().sync_all().map_err(io)?;
    drop(w);
    std::fs::rename(&tmp, path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
