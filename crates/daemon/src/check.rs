//! The optional `check` command: validates a staged file (or generation directory) before commit.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::CheckConfig;

/// Replaces `{{ staged }}` (also `{{staged}}`) in each argument with the staged path.
pub fn argv(check: &CheckConfig, staged: &Path) -> Vec<String> {
    let p = staged.to_string_lossy();
    check.argv.iter().map(|a| a.replace("{{ staged }}", &p).replace("{{staged}}", &p)).collect()
}

/// Why a check refused a staged file: what happened, and the end of what the command printed.
///
/// The two are kept apart because the output may quote the staged file (a config parser printing the
/// offending line): it belongs in the log, where the operator looks, but not in /status.
#[derive(Debug)]
pub struct CheckError {
    /// "check command `nginx -t -c /etc/x.staged` failed with exit status 1"
    pub summary: String,
    /// The last 400 characters of its stdout and stderr; empty when it printed nothing.
    pub output: String,
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.output.is_empty() {
            f.write_str(&self.summary)
        } else {
            write!(f, "{}: {}", self.summary, self.output)
        }
    }
}

impl CheckError {
    fn new(summary: String) -> Self {
        CheckError { summary, output: String::new() }
    }
}

/// Runs the check; Ok when it exits 0 within its timeout. The error quotes the command and the end
/// of its output. A check that hangs is killed (with its process group) at the timeout.
pub fn run(check: &CheckConfig, staged: &Path) -> Result<(), CheckError> {
    let argv = argv(check, staged);
    let shown = argv.join(" ");
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    // Tracked, so that the orphan reaper (PID 1 duty) leaves its exit status to us.
    let mut child = crate::process::spawn_tracked(|| cmd.spawn(), |c| Some(c.id()))
        .map_err(|e| CheckError::new(format!("check command `{shown}` could not start: {e}")))?;
    let pid = child.id();
    let result = wait_check(&mut child, check, &shown);
    crate::process::untrack(pid);
    result
}

fn wait_check(child: &mut std::process::Child, check: &CheckConfig, shown: &str) -> Result<(), CheckError> {
    // Collect output on threads so a chatty check cannot block on a full pipe.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.take(64 * 1024).read_to_string(&mut s);
        }
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.take(64 * 1024).read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + check.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                // Kill the whole group: a shell wrapper's children must not outlive the check.
                let _ = crate::process::signal_group(child.id(), crate::process::SIGKILL);
                let _ = child.kill();
                let _ = child.wait();
                return Err(CheckError::new(format!(
                    "check command `{shown}` did not finish within {}; it was killed",
                    crate::config::units::format_duration(check.timeout)
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(CheckError::new(format!("check command `{shown}`: {e}"))),
        }
    };
    let output = format!("{}{}", t_out.join().unwrap_or_default(), t_err.join().unwrap_or_default());
    if status.success() {
        return Ok(());
    }
    let tail: String = {
        let t = output.trim();
        let start = t.char_indices().rev().nth(400).map(|(i, _)| i).unwrap_or(0);
        t[start..].to_string()
    };
    let how = match status.code() {
        Some(c) => format!("exit status {c}"),
        None => "a signal".to_string(),
    };
    Err(CheckError { summary: format!("check command `{shown}` failed with {how}"), output: tail })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(argv: &[&str], ms: u64) -> CheckConfig {
        CheckConfig { argv: argv.iter().map(|s| s.to_string()).collect(), timeout: Duration::from_millis(ms) }
    }

    #[test]
    fn passes_and_fails_with_output() {
        let p = Path::new("/tmp/x.staged");
        assert_eq!(argv(&cfg(&["t", "-c", "{{ staged }}"], 1), p), vec!["t", "-c", "/tmp/x.staged"]);
        run(&cfg(&["sh", "-c", "test \"$1\" = /tmp/x.staged", "sh", "{{ staged }}"], 5000), p).unwrap();
        let err = run(&cfg(&["sh", "-c", "echo bad directive >&2; exit 3"], 5000), p).unwrap_err();
        assert_eq!(err.summary, "check command `sh -c echo bad directive >&2; exit 3` failed with exit status 3");
        assert_eq!(err.output, "bad directive");
        let shown = err.to_string();
        assert!(shown.contains("exit status 3") && shown.contains("bad directive"), "{shown}");
    }

    #[test]
    fn hanging_check_is_killed() {
        let start = Instant::now();
        let err = run(&cfg(&["sleep", "30"], 200), Path::new("/x")).unwrap_err().to_string();
        assert!(err.contains("did not finish within 200ms"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn missing_program_is_reported() {
        let err = run(&cfg(&["/nonexistent/checker"], 1000), Path::new("/x")).unwrap_err().to_string();
        assert!(err.contains("could not start"), "{err}");
    }
}
