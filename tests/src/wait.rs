//! Bounded waiting: every wait in the tests ends, with a message saying what did not happen.

use std::time::{Duration, Instant};

/// Polls `cond` every few milliseconds until it holds; panics with `what` after `timeout`.
#[track_caller]
pub fn until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if cond() {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `f` until it returns Some; panics with `what` after `timeout`.
#[track_caller]
pub fn for_some<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the file at `path` holds exactly `content`.
#[track_caller]
pub fn file_is(path: &std::path::Path, content: &str, timeout: Duration) {
    let mut last = None;
    let start = Instant::now();
    loop {
        let now = std::fs::read_to_string(path).ok();
        if now.as_deref() == Some(content) {
            return;
        }
        last = now.or(last);
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {} to hold {content:?}; last seen {last:?}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
