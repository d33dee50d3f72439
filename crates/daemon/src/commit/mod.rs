//! Atomic commits: a reader of a destination sees the old content or the new, never a mix, an empty
//! file or a missing file.
//!
//! Two kinds, one module each: [`file`], the single-file commit (temp file, fsync, rename, directory
//! fsync), and [`generation`], the `files` format's kubelet layout (a `..<timestamp>` directory per
//! generation, `..data` swapped in one rename, the replaced generation kept as the spare).

mod file;
mod generation;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use file::{clean_stray_temp_files, same_contents, stage_file, stage_with};
pub use generation::{
    clean_stray_generations, commit_generation, current_generation, stage_generation, Changes, TreeState,
};

/// The mode a new file gets when the output sets no `perms` and no file exists yet.
pub const DEFAULT_MODE: u32 = 0o644;

/// An error with the path it concerns; the message says what failed and where.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct CommitError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn ctx<T>(r: io::Result<T>, action: &'static str, path: &Path) -> Result<T, CommitError> {
    r.map_err(|source| CommitError { action, path: path.to_path_buf(), source })
}

/// The mode to write `dest` with: the configured one, else the existing file's, else 0644.
pub fn target_mode(dest: &Path, perms: Option<u32>) -> u32 {
    perms.unwrap_or_else(|| fs::metadata(dest).map(|m| m.permissions().mode() & 0o7777).unwrap_or(DEFAULT_MODE))
}

fn parent_of(dest: &Path) -> &Path {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Checks that the directory a destination goes into exists and is a directory.
pub fn check_parent(dest: &Path) -> Result<(), String> {
    let dir = parent_of(dest);
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "destination directory {} does not exist; create it (kvsync does not create parents)",
            dir.display()
        )),
        Err(e) => Err(format!("cannot use destination directory {}: {e}", dir.display())),
    }
}

fn sync_dir(dir: &Path) -> Result<(), CommitError> {
    ctx(File::open(dir).and_then(|d| d.sync_all()), "cannot fsync directory", dir)
}

fn unique_suffix() -> String {
    format!("{}-{:08x}", std::process::id(), fastrand::u32(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_parent_is_reported() {
        let err = check_parent(Path::new("/nonexistent-kvsync/dir/a.conf")).unwrap_err();
        assert!(err.contains("/nonexistent-kvsync/dir does not exist"), "{err}");
    }
}
