//! The single-file commit: a temp file in the destination's directory (created with the final mode,
//! so it is never more readable than the result), write, fsync, rename over the destination, fsync the
//! directory. A rename refused with EBUSY (a bind-mounted single file, as Docker and Kubernetes
//! `subPath` mounts do) falls back to rewriting the file in place, with a warning.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::warn;

use super::{ctx, parent_of, sync_dir, unique_suffix, CommitError};

const TMP_TAG: &str = ".kvsync-tmp-";

/// A file written next to its destination and not yet renamed into place. Dropping it removes it.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl Staged {
    /// The staged file, for a check command.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the staged file over the destination and fsyncs the directory.
    pub fn commit(mut self) -> Result<(), CommitError> {
        match fs::rename(&self.tmp, &self.dest) {
            Ok(()) => {
                self.done = true;
                sync_dir(parent_of(&self.dest))
            }
            Err(e) if e.raw_os_error() == Some(16) => {
                // EBUSY: the destination is a mount point (a bind-mounted single file).
                warn!(
                    path = %self.dest.display(),
                    "rename refused (EBUSY: the destination is a mount point); rewriting it in place, which is not atomic"
                );
                let data = ctx(fs::read(&self.tmp), "cannot read staged file", &self.tmp)?;
                let mut f =
                    ctx(OpenOptions::new().write(true).truncate(true).open(&self.dest), "cannot open", &self.dest)?;
                ctx(f.write_all(&data).and_then(|_| f.sync_all()), "cannot write", &self.dest)?;
                Ok(())
            }
            Err(e) => Err(CommitError { action: "cannot rename staged file over", path: self.dest.clone(), source: e }),
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `content` to a temp file beside `dest`, with `mode` from creation on, and fsyncs it.
pub fn stage_file(dest: &Path, content: &[u8], mode: u32) -> Result<Staged, CommitError> {
    stage_with(dest, mode, |w| w.write_all(content))
}

/// Creates a temp file beside `dest` with `mode` from creation on, lets `write` fill it (through a
/// large buffer, so a renderer can write piece by piece), and fsyncs it.
pub fn stage_with(
    dest: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<Staged, CommitError> {
    let dir = parent_of(dest);
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}{TMP_TAG}{}", unique_suffix()));
    let f = ctx(OpenOptions::new().write(true).create_new(true).mode(mode & 0o777).open(&tmp), "cannot create", &tmp)?;
    let staged = Staged { tmp: tmp.clone(), dest: dest.to_path_buf(), done: false };
    // The umask may have narrowed the mode; set it exactly (never wider than asked at any moment).
    ctx(f.set_permissions(fs::Permissions::from_mode(mode)), "cannot set mode of", &tmp)?;
    let mut w = io::BufWriter::with_capacity(1 << 20, f);
    ctx(write(&mut w).and_then(|()| w.flush()), "cannot write", &tmp)?;
    let f = w.into_inner().map_err(|e| CommitError {
        action: "cannot write",
        path: tmp.clone(),
        source: e.into_error(),
    })?;
    ctx(f.sync_all(), "cannot fsync", &tmp)?;
    Ok(staged)
}

/// Whether two files hold the same bytes (false if either cannot be read).
pub fn same_contents(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(mut fa), Ok(mut fb)) = (File::open(a), File::open(b)) else { return false };
    match (fa.metadata(), fb.metadata()) {
        (Ok(ma), Ok(mb)) if ma.len() == mb.len() => {}
        _ => return false,
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = match fa.read(&mut ba) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return fb.read(&mut bb[..1]).is_ok_and(|m| m == 0);
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// Removes temp files an interrupted run left beside `dest` (`.<name>.kvsync-tmp-*`).
pub fn clean_stray_temp_files(dest: &Path) {
    let Some(name) = dest.file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
    let prefix = format!(".{name}{TMP_TAG}");
    if let Ok(rd) = fs::read_dir(parent_of(dest)) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::target_mode;

    #[test]
    fn single_file_commit_sets_mode_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("app.conf");
        let s = stage_file(&dest, b"hello", 0o600).unwrap();
        assert_eq!(fs::metadata(s.path()).unwrap().permissions().mode() & 0o777, 0o600);
        s.commit().unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"hello");
        assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(target_mode(&dest, None), 0o600);
        // A dropped stage leaves nothing behind.
        let s = stage_file(&dest, b"other", 0o600).unwrap();
        let tmp = s.path().to_path_buf();
        drop(s);
        assert!(!tmp.exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn stray_temp_files_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("a.conf");
        fs::write(d.path().join(".a.conf.kvsync-tmp-1-deadbeef"), "x").unwrap();
        fs::write(d.path().join("keep"), "x").unwrap();
        clean_stray_temp_files(&dest);
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec!["keep"]);
    }
}
