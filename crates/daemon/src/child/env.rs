//! The child's environment from KV (`exec.env`): one variable per key under a prefix.

use kvsync_watch::View;
use tracing::warn;

use super::Env;
use crate::config::ExecEnv;

/// The child's environment from the keys of `exec.env` (problems with single keys are logged).
pub fn env_from_view(view: &View, e: &ExecEnv) -> Env {
    let (env, problems) = child_env(view, e);
    for p in problems {
        warn!("exec.env: {p}");
    }
    env
}

/// One variable per key under the prefix: the name sanitized (or checked) and optionally upcased,
/// the value as it is. Keys that cannot become a variable are skipped, each with a problem saying why.
pub fn child_env(view: &View, e: &ExecEnv) -> (Env, Vec<String>) {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut problems = Vec::new();
    for (rel, value) in view.relative() {
        if rel.is_empty() || rel.ends_with('/') {
            continue; // folder markers
        }
        let key = format!("{}{rel}", e.prefix);
        let name = if e.sanitize {
            crate::format::env::name(rel, e.upcase)
        } else {
            let valid = rel.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && rel.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                problems.push(format!(
                    "key `{key}` is not a valid variable name (letters, digits and _, not starting with a digit); \
                     skipped. Set `sanitize: true` to turn other characters into _"
                ));
                continue;
            }
            if e.upcase {
                rel.to_ascii_uppercase()
            } else {
                rel.to_string()
            }
        };
        let Ok(v) = std::str::from_utf8(value) else {
            problems.push(format!("the value of `{key}` is not UTF-8; skipped"));
            continue;
        };
        if v.contains('\0') {
            problems.push(format!("the value of `{key}` holds a NUL byte, which an environment cannot; skipped"));
            continue;
        }
        if let Some(prev) = out.iter_mut().find(|(n, _)| *n == name) {
            problems.push(format!("key `{key}` gives variable {name} a second time; the later key wins"));
            prev.1 = v.to_string();
            continue;
        }
        out.push((name, v.to_string()));
    }
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    fn view(keys: &[(&str, &[u8])]) -> View {
        let entries = keys.iter().map(|(k, v)| (format!("env/{k}"), bytes::Bytes::copy_from_slice(v))).collect();
        View {
            source: "main".into(),
            prefix: "env/".into(),
            version: 1,
            entries: Arc::new(entries),
            received: Instant::now(),
            stale: false,
        }
    }

    fn env_cfg(sanitize: bool, upcase: bool) -> ExecEnv {
        ExecEnv { source: "main".into(), prefix: "env/".into(), sanitize, upcase }
    }

    #[test]
    fn child_env_sanitizes_and_upcases() {
        let v = view(&[("db-host", b"h"), ("app/port", b"80"), ("9lives", b"x"), ("dir/", b"")]);
        let (env, problems) = child_env(&v, &env_cfg(true, true));
        // In key order: 9lives, app/port, db-host.
        assert_eq!(
            env,
            vec![("_9LIVES".into(), "x".into()), ("APP_PORT".into(), "80".into()), ("DB_HOST".into(), "h".into())]
        );
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn child_env_reports_what_it_skips() {
        let v = view(&[("db-host", b"h"), ("OK", b"1"), ("bin", b"\xff"), ("nul", b"a\0b")]);
        let (env, problems) = child_env(&v, &env_cfg(false, false));
        assert_eq!(env, vec![("OK".into(), "1".into())]);
        assert_eq!(
            problems,
            vec![
                "the value of `env/bin` is not UTF-8; skipped".to_string(),
                "key `env/db-host` is not a valid variable name (letters, digits and _, not starting with a digit); \
                 skipped. Set `sanitize: true` to turn other characters into _"
                    .to_string(),
                "the value of `env/nul` holds a NUL byte, which an environment cannot; skipped".to_string(),
            ]
        );
        let v = view(&[("a-b", b"1"), ("a.b", b"2")]);
        let (env, problems) = child_env(&v, &env_cfg(true, false));
        assert_eq!(env, vec![("a_b".into(), "2".into())]);
        assert_eq!(problems, vec!["key `env/a.b` gives variable a_b a second time; the later key wins".to_string()]);
    }
}
