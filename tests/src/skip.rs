//! Tests that cannot run here fail, unless the run says the skip is wanted.
//!
//! A test that needs something this machine lacks (a tool, a privilege, a built artefact) calls
//! [`unavailable`] and returns. It fails unless `KVSYNC_TEST_ALLOW_SKIP` names it: a comma-separated
//! list of test names (`disk_faults::full_and_read_only_file_systems`), of the last part of a name
//! (`full_and_read_only_file_systems`), of groups (`disk_faults`, the part before `::`), or `all`.
//! An allowed skip prints one line, `KVSYNC-SKIP: <test>: <why>`, to stderr and appends the same line
//! to the file named by `KVSYNC_TEST_SKIP_LOG` (which `./scripts/test` sets and prints at its end), so
//! a test that did not run is always visible.

use std::io::Write;

/// The prefix of the line an allowed skip prints and records.
pub const MARK: &str = "KVSYNC-SKIP: ";

/// Whether `allow` (the value of `KVSYNC_TEST_ALLOW_SKIP`) lets `test` skip.
pub fn allowed(allow: &str, test: &str) -> bool {
    let group = test.split("::").next().unwrap_or(test);
    let leaf = test.rsplit("::").next().unwrap_or(test);
    allow
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .any(|a| a == "all" || a == test || a == group || a == leaf)
}

/// The line an allowed skip records.
pub fn line(test: &str, why: &str) -> String {
    // One line whatever `why` holds, so the summary stays one entry per skip.
    format!("{MARK}{test}: {}", why.replace('\n', " "))
}

/// `test` cannot run here because of `why`: panics (the test fails) unless `KVSYNC_TEST_ALLOW_SKIP`
/// names it; otherwise reports the skip and returns, and the caller returns.
#[track_caller]
pub fn unavailable(test: &str, why: &str) {
    let allow = std::env::var("KVSYNC_TEST_ALLOW_SKIP").unwrap_or_default();
    let log = std::env::var_os("KVSYNC_TEST_SKIP_LOG").map(std::path::PathBuf::from);
    unavailable_with(&allow, log.as_deref(), test, why);
}

#[track_caller]
fn unavailable_with(allow: &str, log: Option<&std::path::Path>, test: &str, why: &str) {
    if !allowed(allow, test) {
        panic!(
            "{test} cannot run here: {why}. Provide what it needs, or allow the skip with \
             KVSYNC_TEST_ALLOW_SKIP={test} (or its group `{}`); ./scripts/test then lists it at the end",
            test.split("::").next().unwrap_or(test)
        );
    }
    let line = line(test, why);
    eprintln!("{line}");
    if let Some(path) = log {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            panic!("{test}: cannot record the skip in {}: {e}", path.display());
        }
    }
}

/// Like [`unavailable`] when `ok` is false; returns `ok`, so a test reads
/// `if !skip::require(ok, "group::test", "why") { return; }`.
#[track_caller]
pub fn require(ok: bool, test: &str, why: &str) -> bool {
    if !ok {
        unavailable(test, why);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_groups_and_leaves_allow_a_skip_and_nothing_else_does() {
        let t = "disk_faults::full_and_read_only_file_systems";
        assert!(allowed("disk_faults", t));
        assert!(allowed("exec, disk_faults", t));
        assert!(allowed(t, t));
        assert!(allowed("full_and_read_only_file_systems", t));
        assert!(allowed("all", t));
        assert!(!allowed("", t));
        assert!(!allowed("disk", t));
        assert!(!allowed("exec", t));
        assert!(!allowed("disk_faults::other", t));
    }

    #[test]
    fn the_recorded_line_is_one_line() {
        assert_eq!(line("a::b", "no\nmount"), "KVSYNC-SKIP: a::b: no mount");
    }

    #[test]
    #[should_panic(expected = "cannot run here: needs a thing")]
    fn a_skip_that_is_not_allowed_fails() {
        unavailable_with("exec", None, "disk_faults::x", "needs a thing");
    }

    #[test]
    fn an_allowed_skip_is_recorded_in_the_log_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        unavailable_with("disk_faults", Some(&log), "disk_faults::x", "no tmpfs");
        unavailable_with("all", Some(&log), "exec::y", "no unshare");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "KVSYNC-SKIP: disk_faults::x: no tmpfs\nKVSYNC-SKIP: exec::y: no unshare\n"
        );
    }
}
