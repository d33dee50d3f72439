//! The ACL token, read from a file and re-read whenever the file changes.
//!
//! Secrets are rotated by rewriting the file (or, in Kubernetes, by swapping the `..data` symlink of a
//! secret volume), so the file's identity and modification time are checked before every request and
//! the token is re-read only when they moved. The token itself never appears in a log line, an error
//! message or a `Debug` output: it lives only in a header value marked sensitive.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use http::HeaderValue;

/// What identifies one version of the file: a rewrite or a symlink swap changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// A token file and the token last read from it.
pub(crate) struct TokenFile {
    path: PathBuf,
    /// The stamp of the file when it was last read, and its token (None: the file is empty).
    cached: Mutex<Option<(Stamp, Option<HeaderValue>)>>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl TokenFile {
    /// Reads the file once, so that a missing or malformed token file is a configuration error at start.
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = TokenFile { path: path.to_path_buf(), cached: Mutex::new(None) };
        file.current()?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token to send (None: the file is empty, use the agent's default token), re-read if the
    /// file changed since the last call. The error names the file, never its content.
    pub fn current(&self) -> Result<Option<HeaderValue>, String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&self.path)
            .map_err(|e| format!("cannot read the Consul token file {}: {e}", self.path.display()))?;
        let stamp = Stamp { modified: meta.modified().ok(), len: meta.len(), inode: meta.ino() };
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, token)) = cached.as_ref() {
            if *seen == stamp {
                return Ok(token.clone());
            }
        }
        let raw = std::fs::read(&self.path)
            .map_err(|e| format!("cannot read the Consul token file {}: {e}", self.path.display()))?;
        let token = parse(&raw).map_err(|why| format!("the Consul token file {} {why}", self.path.display()))?;
        *cached = Some((stamp, token.clone()));
        Ok(token)
    }

    /// Forgets the cached token so that the next request re-reads the file even if its stamp did not
    /// move (a rewrite within the file system's timestamp granularity, same length).
    pub fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Whether the file looks different from when the token was last read (cheap: one stat).
    pub fn changed(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(&self.path) else { return false };
        let stamp = Stamp { modified: meta.modified().ok(), len: meta.len(), inode: meta.ino() };
        let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        cached.as_ref().is_none_or(|(seen, _)| *seen != stamp)
    }
}

/// The token in a file's content: surrounding whitespace (a trailing newline) is not part of it.
fn parse(raw: &[u8]) -> Result<Option<HeaderValue>, &'static str> {
    let text = std::str::from_utf8(raw).map_err(|_| "is not UTF-8 text")?;
    let token = text.trim();
    if token.is_empty() {
        return Ok(None);
    }
    if token.contains(['\n', '\r']) {
        return Err("holds more than one line; it must hold only the token");
    }
    let mut value = HeaderValue::from_str(token).map_err(|_| "holds characters that cannot be sent in a header")?;
    // Keeps the value out of hyper's and http's Debug output.
    value.set_sensitive(true);
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_rereads_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "secret-one\n").unwrap();
        let file = TokenFile::open(&path).unwrap();
        assert_eq!(file.current().unwrap().unwrap(), "secret-one");
        assert!(!file.changed());
        std::fs::write(&path, "secret-number-two").unwrap();
        assert!(file.changed());
        assert_eq!(file.current().unwrap().unwrap(), "secret-number-two");
    }

    #[test]
    fn empty_file_means_no_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  \n").unwrap();
        assert!(TokenFile::open(&path).unwrap().current().unwrap().is_none());
    }

    #[test]
    fn errors_name_the_file_never_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "line-one-secret\nline-two-secret\n").unwrap();
        let err = TokenFile::open(&path).unwrap_err();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let missing = TokenFile::open(&dir.path().join("nope")).unwrap_err();
        assert!(missing.contains("nope") && missing.contains("cannot read"), "{missing}");
    }

    #[test]
    fn debug_output_hides_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "hunter2").unwrap();
        let file = TokenFile::open(&path).unwrap();
        assert!(!format!("{file:?}").contains("hunter2"));
        assert!(!format!("{:?}", file.current().unwrap()).contains("hunter2"));
    }
}
