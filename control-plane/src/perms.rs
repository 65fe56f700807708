//! Private permissions for the data directory and its files: they hold the signing keys (anyone
//! who reads them can mint working credentials) and the admin key. The directory is `0700`, its
//! files `0600`; looser permissions found at start (an older version, a restored backup, a
//! hand-made directory) are tightened with a warning rather than refused, so an upgrade does not
//! stop a running service.

use std::io;
use std::path::Path;

/// Creates `dir` (and missing parents) `0700`, or tightens an existing `dir` to `0700`.
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir)?;
    tighten(dir, 0o700)
}

/// Tightens an existing file to `0600` (nothing if it does not exist).
pub(crate) fn private_file(path: &Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(_) => tighten(path, 0o600),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let found = std::fs::metadata(path)?.permissions().mode() & 0o777;
    // Only group/other bits are removed: an owner who made it read-only keeps it so.
    if found & 0o077 != 0 {
        let tightened = found & !0o077 & mode;
        tracing::warn!(
            path = %path.display(),
            found = format_args!("{found:o}"),
            now = format_args!("{tightened:o}"),
            "data path was readable by other users (it holds the signing keys); permissions tightened"
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(tightened))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}
