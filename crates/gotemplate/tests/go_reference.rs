//! Renders every template of `tests/corpus.txt` with this crate and with Go's `text/template` (a small
//! Go program built from `tests/gotemplate_ref/main.go` with the local Go toolchain, standard library
//! only, no network) and compares the output bytes and whether each failed.
//!
//! Corpus format, one case per line: `OPTIONS :: DATA :: TEMPLATE`. OPTIONS is `-` or a comma list
//! of `confd`, `consul` (register that dialect's pure functions on both sides) and `delims=L R`.
//! DATA is JSON (`-` for none, i.e. Go's nil). In TEMPLATE, `⏎` stands for a newline. Lines
//! starting with `#` and blank lines are ignored.
//!
//! Without `go` in PATH the test fails, unless KVSYNC_TEST_ALLOW_SKIP contains `gotemplate`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use base64::Engine as _;
use gotemplate::{dialect, FuncNames, Funcs, Options, Template, Value};

struct Case {
    name: String,
    template: String,
    data: Option<serde_json::Value>,
    left: String,
    right: String,
    funcs: String,
}

/// The corpus file: `tests/corpus.txt`, or the file KVSYNC_GOTEMPLATE_CORPUS names (to compare
/// other templates with Go the same way).
fn corpus_path() -> std::path::PathBuf {
    match std::env::var_os("KVSYNC_GOTEMPLATE_CORPUS") {
        Some(p) => p.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus.txt"),
    }
}

fn load_corpus() -> Vec<Case> {
    let text = std::fs::read_to_string(corpus_path()).unwrap();
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, " :: ");
        let (Some(opts), Some(data), Some(tmpl)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("corpus.txt:{}: expected `OPTIONS :: DATA :: TEMPLATE`", i + 1);
        };
        let mut case = Case {
            name: format!("corpus.txt:{}", i + 1),
            template: tmpl.replace('⏎', "\n"),
            data: if data == "-" {
                None
            } else {
                Some(serde_json::from_str(data).unwrap_or_else(|e| panic!("corpus.txt:{}: data: {e}", i + 1)))
            },
            left: String::new(),
            right: String::new(),
            funcs: String::new(),
        };
        for opt in opts.split(',').filter(|o| *o != "-") {
            if let Some(d) = opt.strip_prefix("delims=") {
                let (l, r) = d.split_once(' ').expect("delims=L R");
                case.left = l.to_string();
                case.right = r.to_string();
            } else {
                case.funcs = opt.to_string();
            }
        }
        cases.push(case);
    }
    cases
}

/// Builds the Go reference program; `None` when Go is not installed.
fn build_reference(dir: &Path) -> Option<std::path::PathBuf> {
    if Command::new("go").arg("version").output().is_err() {
        return None;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gotemplate_ref/main.go");
    std::fs::copy(&src, dir.join("main.go")).unwrap();
    let bin = dir.join("gotemplate-ref");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg("main.go")
        .current_dir(dir)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .env("GO111MODULE", "")
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build of the reference program failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(bin)
}

fn render_rust(c: &Case) -> (Vec<u8>, Option<String>) {
    let funcs = match c.funcs.as_str() {
        "confd" => dialect::functions(dialect::Dialect::Confd, Arc::new(BTreeMap::new())),
        "consul" => dialect::functions(dialect::Dialect::ConsulTemplate, Arc::new(BTreeMap::new())),
        _ => Funcs::default(),
    };
    let names = if c.funcs.is_empty() { FuncNames::builtins() } else { funcs.names() };
    let opts = Options { left_delim: c.left.clone(), right_delim: c.right.clone() };
    let t = match Template::parse(&c.name, &c.template, &opts, &names) {
        Ok(t) => t,
        Err(e) => return (Vec::new(), Some(e.to_string())),
    };
    let data = c.data.as_ref().map(Value::from_json).unwrap_or(Value::Nil);
    let mut out = Vec::new();
    match t.execute(&data, &funcs, &mut out) {
        Ok(()) => (out, None),
        Err(e) => (out, Some(e.to_string())),
    }
}

#[test]
fn corpus_renders_like_go_text_template() {
    let cases = load_corpus();
    if std::env::var_os("KVSYNC_GOTEMPLATE_CORPUS").is_none() {
        assert!(cases.len() >= 150, "the corpus has {} templates; it needs at least 150", cases.len());
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = build_reference(dir.path()) else {
        let allowed = std::env::var("KVSYNC_TEST_ALLOW_SKIP").unwrap_or_default();
        if allowed.split(',').any(|s| s.trim() == "gotemplate") {
            eprintln!("KVSYNC-SKIP: gotemplate: go not installed");
            return;
        }
        panic!(
            "`go` is not installed (apt-get install golang-go), and KVSYNC_TEST_ALLOW_SKIP does not name gotemplate"
        );
    };
    let input = serde_json::Value::Array(
        cases
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name, "template": c.template, "data": c.data.clone().unwrap_or(serde_json::Value::Null),
                    "left": c.left, "right": c.right, "funcs": c.funcs,
                })
            })
            .collect(),
    );
    let mut child = Command::new(&bin).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let results: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), cases.len());

    let mut failures = Vec::new();
    for (c, r) in cases.iter().zip(&results) {
        let go_out = match &r["output"] {
            serde_json::Value::String(b64) => base64::engine::general_purpose::STANDARD.decode(b64).unwrap(),
            _ => Vec::new(),
        };
        let go_err = r["error"].as_str().map(str::to_string);
        let (rs_out, rs_err) = render_rust(c);
        let same = match (&go_err, &rs_err) {
            (None, None) => go_out == rs_out,
            (Some(_), Some(_)) => true,
            _ => false,
        };
        if !same {
            failures.push(format!(
                "{}: template {:?}\n  go:   {:?} error={:?}\n  rust: {:?} error={:?}",
                c.name,
                c.template,
                String::from_utf8_lossy(&go_out),
                go_err,
                String::from_utf8_lossy(&rs_out),
                rs_err
            ));
        }
    }
    eprintln!(
        "gotemplate corpus: {} templates, {} identical to Go's text/template",
        cases.len(),
        cases.len() - failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} templates differ from Go:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
