//! The `properties` and `env` outputs read back by the programs that consume them, on a corpus of
//! hostile keys and values (spaces, `=`, `:`, `#`, `!`, backslashes, quotes, `$`, newlines, tabs,
//! non-ASCII and astral characters): `properties` by Java's own `java.util.Properties.load`, `env` by
//! sourcing it in `bash` and in `sh` (`set -a; . file; env -0`). Each reader must give back exactly
//! the keys and values that were written, not only a parser written for the tests.
//!
//! Java comes from Debian's JDK (`./scripts/test` installs default-jdk-headless when `java` or `javac`
//! is missing); the reader is a one-file program run with `java Reader.java`. Without it the test fails
//! unless `KVSYNC_TEST_ALLOW_SKIP` names it.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kvsync_tests::{kvsync, skip};

const T: Duration = Duration::from_secs(30);

/// Values that break naive quoting or escaping.
const HOSTILE_VALUES: &[&str] = &[
    "plain",
    "",
    " leading and trailing spaces ",
    "a=b:c#d!e",
    "#starts with a hash",
    "!starts with a bang",
    "=starts with equals",
    ":starts with a colon",
    "back\\slash\\",
    "\\n is not a newline",
    "line one\nline two\n",
    "carriage\rreturn",
    "tab\there",
    "form\x0cfeed",
    "double \"quotes\" and 'single'",
    "$HOME ${HOME} $(echo no) `echo no`",
    "ünïcödé ключ 中文",
    "astral 😀 𝄞",
    "\u{7f}del and \u{1}control",
    "ends with a backslash \\",
    "semicolon; and & ampersand | pipe",
];

/// Keys (file names under the prefix) that break naive key escaping in `properties`.
const HOSTILE_KEYS: &[&str] = &[
    "with space",
    "eq=key",
    "colon:key",
    "#hash",
    "!bang",
    "back\\slash",
    "tab\tkey",
    "ünïcödé",
    "astral😀",
    "dir/nested key",
    "trailing space ",
];

/// Writes the corpus under `kv/app/`, renders `format` from it with `once`, and returns the rendered
/// file and the relative keys with their values.
fn render(dir: &Path, format: &str, extra: &str, keys: &[(String, String)]) -> std::path::PathBuf {
    let kv = dir.join("kv/app");
    for (k, v) in keys {
        let p = kv.join(k);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, v).unwrap();
    }
    let out = dir.join(format!("out.{format}"));
    let cfg = dir.join(format!("{format}.yaml"));
    fs::write(
        &cfg,
        format!(
            "sources:\n  - {{ name: s, type: file, path: {} }}\nhttp: {{ listen: \"\" }}\noutputs:\n  \
             - {{ name: o, source: s, prefix: app/, format: {format}, destination: {}{extra} }}\n",
            dir.join("kv").display(),
            out.display()
        ),
    )
    .unwrap();
    let (status, _, err) = kvsync::run(&["once", "--config", &cfg.display().to_string(), "--timeout", "10s"], T);
    assert!(status.success(), "{err}");
    out
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

const JAVA_READER: &str = r#"
import java.io.FileInputStream;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.Properties;
import java.util.TreeMap;

/** Loads a properties file with java.util.Properties.load and prints every key and value as hex UTF-8. */
public class Reader {
    static String hex(String s) {
        StringBuilder b = new StringBuilder();
        for (byte x : s.getBytes(StandardCharsets.UTF_8)) b.append(String.format("%02x", x & 0xff));
        return b.toString();
    }
    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        try (InputStream in = new FileInputStream(args[0])) { p.load(in); }
        TreeMap<String, String> m = new TreeMap<>();
        for (String k : p.stringPropertyNames()) m.put(k, p.getProperty(k));
        for (var e : m.entrySet()) System.out.println(hex(e.getKey()) + " " + hex(e.getValue()));
    }
}
"#;

#[test]
fn properties_read_back_by_java_properties_load() {
    const TEST: &str = "format_readers::properties_read_back_by_java_properties_load";
    let java = Command::new("java").arg("-version").output();
    if !java.as_ref().is_ok_and(|o| o.status.success()) {
        skip::unavailable(TEST, &format!("`java` cannot run ({java:?}); ./scripts/test installs default-jdk-headless"));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Every hostile key with a plain value, and every hostile value under a plain key.
    let mut corpus: Vec<(String, String)> =
        HOSTILE_KEYS.iter().enumerate().map(|(i, k)| (k.to_string(), format!("value of key {i}"))).collect();
    corpus.extend(HOSTILE_VALUES.iter().enumerate().map(|(i, v)| (format!("v{i:02}"), v.to_string())));
    let out = render(dir.path(), "properties", "", &corpus);

    let reader = dir.path().join("Reader.java");
    fs::write(&reader, JAVA_READER).unwrap();
    let run = Command::new("java").arg(&reader).arg(&out).output().unwrap();
    if !run.status.success() {
        let err = String::from_utf8_lossy(&run.stderr);
        // A JRE without the compiler module cannot launch a source file.
        if err.contains("jdk.compiler") {
            skip::unavailable(TEST, &format!("`java Reader.java` needs a JDK: {}", err.trim()));
            return;
        }
        panic!("java failed: {err}");
    }
    let read: BTreeMap<Vec<u8>, Vec<u8>> = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (unhex(k), unhex(v))
        })
        .collect();
    // What was written: `/` in a relative key becomes `.`.
    let want: BTreeMap<Vec<u8>, Vec<u8>> =
        corpus.iter().map(|(k, v)| (k.replace('/', ".").into_bytes(), v.clone().into_bytes())).collect();
    let show = |m: &BTreeMap<Vec<u8>, Vec<u8>>| -> Vec<(String, String)> {
        m.iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    };
    assert_eq!(
        show(&read),
        show(&want),
        "java.util.Properties.load read back something else from:\n{}",
        fs::read_to_string(&out).unwrap()
    );
}

/// Sources the env file in `shell` with `set -a` and returns the variables it exported.
fn source_in(shell: &str, file: &Path) -> BTreeMap<String, Vec<u8>> {
    let out = Command::new(shell)
        .args(["-c", "set -a; . \"$1\"; env -0", shell])
        .arg(file)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap_or_else(|e| panic!("run {shell}: {e}"));
    assert!(out.status.success(), "{shell} could not source the file: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let i = e.iter().position(|b| *b == b'=')?;
            Some((String::from_utf8_lossy(&e[..i]).into_owned(), e[i + 1..].to_vec()))
        })
        .collect()
}

#[test]
fn env_read_back_by_bash_and_sh() {
    let dir = tempfile::tempdir().unwrap();
    let corpus: Vec<(String, String)> =
        HOSTILE_VALUES.iter().enumerate().map(|(i, v)| (format!("v{i:02}"), v.to_string())).collect();
    let out = render(dir.path(), "env", ", upcase: true", &corpus);
    for shell in ["bash", "sh"] {
        let env = source_in(shell, &out);
        for (k, v) in &corpus {
            let name = k.to_uppercase();
            let got = env.get(&name).map(|b| String::from_utf8_lossy(b).into_owned());
            assert_eq!(
                got.as_deref(),
                Some(v.as_str()),
                "{shell} read {name} back differently from:\n{}",
                fs::read_to_string(&out).unwrap()
            );
        }
    }
}
