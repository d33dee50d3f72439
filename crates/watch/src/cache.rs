//! The last-known-good cache: every watched prefix's snapshot persisted after each change, so that a
//! restart during a backend outage can render from what was last seen.
//!
//! One file per (source, prefix), named by a hash of both, written atomically (temp file, fsync,
//! rename, directory fsync) with mode 0600. The format is binary and self-checking:
//! `KVSYNC-CACHE-1\n`, then length-prefixed source and prefix, version, save time, entry count,
//! the entries, and a SHA-256 of everything before it. A file that fails any check, names another
//! source or prefix, or is older than `max_age`, is reported and ignored: never trusted.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::snapshot::Entries;

const MAGIC: &[u8] = b"KVSYNC-CACHE-1\n";

/// Where snapshots are kept, and how old one may be to be used.
#[derive(Debug, Clone)]
pub struct Cache {
    pub dir: PathBuf,
    pub max_age: Duration,
}

/// A snapshot read back from the cache.
#[derive(Debug, Clone)]
pub struct Cached {
    pub version: u64,
    pub saved_at: SystemTime,
    pub entries: Entries,
}

impl Cache {
    /// The file for one (source, prefix).
    pub fn path(&self, source: &str, prefix: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update(source.as_bytes());
        h.update([0]);
        h.update(prefix.as_bytes());
        let hex: String = h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.snapshot"))
    }

    /// Persists a snapshot atomically with mode 0600.
    pub fn save(&self, source: &str, prefix: &str, version: u64, entries: &Entries) -> Result<(), String> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create cache directory {}: {e}", self.dir.display()))?;
        let mut buf = Vec::with_capacity(64 + entries.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>());
        buf.extend_from_slice(MAGIC);
        put_bytes(&mut buf, source.as_bytes());
        put_bytes(&mut buf, prefix.as_bytes());
        buf.extend_from_slice(&version.to_le_bytes());
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        buf.extend_from_slice(&now.to_le_bytes());
        buf.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (k, v) in entries {
            put_bytes(&mut buf, k.as_bytes());
            put_bytes(&mut buf, v);
        }
        let sum = Sha256::digest(&buf);
        buf.extend_from_slice(&sum);
        let path = self.path(source, prefix);
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(&buf)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("cannot write cache file {}: {e}", path.display())
        })
    }

    /// Reads the snapshot of (source, prefix). Ok(None): there is none. Err: there is one, but it is
    /// corrupt, for another prefix, or too old (the message says which).
    pub fn load(&self, source: &str, prefix: &str) -> Result<Option<Cached>, String> {
        let path = self.path(source, prefix);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read cache file {}: {e}", path.display())),
        };
        let corrupt = |why: &str| format!("cache file {} is corrupt ({why}); ignoring it", path.display());
        if data.len() < MAGIC.len() + 32 || !data.starts_with(MAGIC) {
            return Err(corrupt("bad header"));
        }
        let (body, sum) = data.split_at(data.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(corrupt("checksum mismatch"));
        }
        let mut r = Reader { data: &body[MAGIC.len()..] };
        let Parsed { source: src, prefix: pre, version, saved, entries } =
            r.parsed().ok_or_else(|| corrupt("truncated or malformed"))?;
        if src != source.as_bytes() || pre != prefix.as_bytes() {
            return Err(corrupt("it belongs to another source or prefix"));
        }
        let saved_at = UNIX_EPOCH + Duration::from_secs(saved);
        let age = SystemTime::now().duration_since(saved_at).unwrap_or_default();
        if age > self.max_age {
            return Err(format!(
                "cache file {} is {}s old, older than max_age ({}s); ignoring it",
                path.display(),
                age.as_secs(),
                self.max_age.as_secs()
            ));
        }
        Ok(Some(Cached { version, saved_at, entries }))
    }
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
    buf.extend_from_slice(b);
}

struct Reader<'a> {
    data: &'a [u8],
}

/// The fields of a cache file after the magic.
struct Parsed<'a> {
    source: &'a [u8],
    prefix: &'a [u8],
    version: u64,
    saved: u64,
    entries: Entries,
}

impl<'a> Reader<'a> {
    fn parsed(&mut self) -> Option<Parsed<'a>> {
        let source = self.bytes()?;
        let prefix = self.bytes()?;
        let version = self.u64()?;
        let saved = self.u64()?;
        let n = self.u64()?;
        let mut entries = Entries::new();
        for _ in 0..n {
            let k = String::from_utf8(self.bytes()?.to_vec()).ok()?;
            let v = Bytes::copy_from_slice(self.bytes()?);
            entries.insert(k, v);
        }
        self.data.is_empty().then_some(Parsed { source, prefix, version, saved, entries })
    }

    fn u64(&mut self) -> Option<u64> {
        let (h, t) = self.data.split_at_checked(8)?;
        self.data = t;
        Some(u64::from_le_bytes(h.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        let (h, t) = self.data.split_at_checked(n)?;
        self.data = t;
        Some(h)
    }
}

/// Whether `path` looks like one of our cache files (for tests and tools).
pub fn is_cache_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "snapshot")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Entries {
        [("app/a".to_string(), Bytes::from("1")), ("app/bin".to_string(), Bytes::from(vec![0u8, 255]))].into()
    }

    #[test]
    fn round_trip_with_mode_0600() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache { dir: d.path().join("c"), max_age: Duration::from_secs(60) };
        assert!(c.load("s", "app/").unwrap().is_none());
        c.save("s", "app/", 42, &entries()).unwrap();
        let got = c.load("s", "app/").unwrap().unwrap();
        assert_eq!(got.version, 42);
        assert_eq!(got.entries, entries());
        let mode = fs::metadata(c.path("s", "app/")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(c.load("s", "other/").unwrap().is_none());
        assert!(is_cache_file(&c.path("s", "app/")));
    }

    #[test]
    fn corrupt_and_old_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache { dir: d.path().to_path_buf(), max_age: Duration::from_secs(60) };
        c.save("s", "p/", 1, &entries()).unwrap();
        let p = c.path("s", "p/");
        let mut data = fs::read(&p).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        fs::write(&p, &data).unwrap();
        assert!(c.load("s", "p/").unwrap_err().contains("checksum mismatch"));
        fs::write(&p, b"garbage").unwrap();
        assert!(c.load("s", "p/").unwrap_err().contains("bad header"));
        let old = Cache { dir: d.path().to_path_buf(), max_age: Duration::ZERO };
        old.save("s", "p/", 1, &entries()).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(old.load("s", "p/").unwrap_err().contains("older than max_age"));
    }
}
