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
use std::sync::{Arc, OnceLock};

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

/// The Go reference program, built once for all tests of this file; `None` when Go is missing and
/// KVSYNC_TEST_ALLOW_SKIP names gotemplate.
fn reference() -> Option<&'static Path> {
    static REFERENCE: OnceLock<Option<(tempfile::TempDir, std::path::PathBuf)>> = OnceLock::new();
    let built = REFERENCE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        build_reference(dir.path()).map(|bin| (dir, bin))
    });
    match built {
        Some((_, bin)) => Some(bin.as_path()),
        None => {
            skip("go not installed (apt-get install golang-go)");
            None
        }
    }
}

/// Go is missing: fails unless KVSYNC_TEST_ALLOW_SKIP names `gotemplate` (or `all`); an allowed skip
/// prints `KVSYNC-SKIP: gotemplate: <why>` and appends it to the file KVSYNC_TEST_SKIP_LOG names, as
/// the workspace's other tests do, so that `./scripts/test` lists it.
fn skip(why: &str) {
    let allow = std::env::var("KVSYNC_TEST_ALLOW_SKIP").unwrap_or_default();
    if !allow.split(',').map(str::trim).any(|a| a == "gotemplate" || a == "all") {
        panic!(
            "gotemplate cannot run here: {why}. Install Go, or allow the skip with KVSYNC_TEST_ALLOW_SKIP=gotemplate"
        );
    }
    let line = format!("KVSYNC-SKIP: gotemplate: {why}");
    eprintln!("{line}");
    if let Some(log) = std::env::var_os("KVSYNC_TEST_SKIP_LOG") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("open the skip log");
        f.write_all(format!("{line}\n").as_bytes()).expect("record the skip");
    }
}

/// Renders `cases` with Go and with this crate; returns the descriptions of those that differ.
fn differences(bin: &Path, cases: &[Case]) -> Vec<String> {
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
    let mut child = Command::new(bin).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let body = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(body.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
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
    failures
}

#[test]
fn corpus_renders_like_go_text_template() {
    let cases = load_corpus();
    if std::env::var_os("KVSYNC_GOTEMPLATE_CORPUS").is_none() {
        assert!(cases.len() >= 150, "the corpus has {} templates; it needs at least 150", cases.len());
    }
    let Some(bin) = reference() else { return };
    let failures = differences(bin, &cases);
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

fn pick<'a>(rng: &mut fastrand::Rng, items: &[&'a str]) -> &'a str {
    items[rng.usize(..items.len())]
}

/// printf with random flags, widths, precisions and verbs over values of every kind.
fn printf_cases(rng: &mut fastrand::Rng, n: usize) -> Vec<String> {
    const VERBS: &[&str] =
        &["v", "d", "s", "q", "x", "X", "o", "b", "e", "E", "f", "F", "g", "G", "t", "c", "U", "T", "+v", "#v"];
    const FLAGS: &[&str] = &["", "-", "+", " ", "0", "#", "-0", "+0", " 0"];
    const WIDTHS: &[&str] = &["", "1", "5", "12"];
    const PRECS: &[&str] = &["", ".0", ".1", ".3", ".10", "."];
    const VALUES: &[&str] = &[
        "0",
        "1",
        "-1",
        "42",
        "255",
        "3.5",
        "-0.25",
        "1e6",
        "1e-7",
        "123456.789",
        "0.1",
        "1e21",
        "100.0",
        "\"abc\"",
        "\"a\\\"b\"",
        "\"é日\"",
        "\"\"",
        "true",
        "false",
        "nil",
        ".l",
        ".m",
        ".e",
        ".f",
        ".n",
        ".s",
        "'x'",
    ];
    (0..n)
        .map(|_| {
            let verbs = rng.usize(1..4);
            let format: Vec<String> = (0..verbs)
                .map(|_| format!("%{}{}{}{}", pick(rng, FLAGS), pick(rng, WIDTHS), pick(rng, PRECS), pick(rng, VERBS)))
                .collect();
            let nargs = match rng.usize(..5) {
                0 => verbs.saturating_sub(1),
                1 => verbs + 1,
                _ => verbs,
            };
            let args: Vec<&str> = (0..nargs).map(|_| pick(rng, VALUES)).collect();
            format!("{{{{printf \"{}\" {}}}}}", format.join("|"), args.join(" "))
        })
        .collect()
}

/// Nested if/else if/range/with/break/continue/assignments with random trim markers and text.
fn structure(rng: &mut fastrand::Rng, depth: usize) -> String {
    const EXPRS: &[&str] = &[
        "0",
        "1",
        "2.5",
        "\"abc\"",
        "\"\"",
        "true",
        "false",
        "nil",
        ".l",
        ".m",
        ".e",
        ".n",
        ".s",
        ".i",
        "$x",
        "$",
        "(len .l)",
        "(not .n)",
        "(and .i .s)",
        "(or .n .e)",
        "(print .m)",
        "(eq .i 7)",
        "(index .m \"k\")",
        "(.s | printf \"%q\")",
    ];
    let mut out = String::new();
    for _ in 0..rng.usize(1..4) {
        let l = if rng.bool() { "{{- " } else { "{{" };
        let r = if rng.bool() { " -}}" } else { "}}" };
        let text = pick(rng, &["a", " b ", "\n", "  \n  c", "x\t", ""]);
        match if depth > 2 { 0 } else { rng.usize(..6) } {
            0 => out.push_str(&format!("{text}{l}{}{r}", pick(rng, EXPRS))),
            1 => {
                let (c1, c2) = (pick(rng, EXPRS), pick(rng, EXPRS));
                let (b1, b2, b3) = (structure(rng, depth + 1), structure(rng, depth + 1), structure(rng, depth + 1));
                out.push_str(&format!("{l}if {c1}{r}{b1}{l}else if {c2}{r}{b2}{l}else{r}{b3}{l}end{r}"));
            }
            2 => {
                let over = pick(rng, &[".l", ".m", ".e", ".n", ".s"]);
                let ctl = pick(rng, &["", "{{if eq $i 1}}{{break}}{{end}}", "{{continue}}"]);
                let body = structure(rng, depth + 1);
                out.push_str(&format!(
                    "{l}range $i, $e := {over}{r}[{{{{$i}}}}={{{{$e}}}}]{ctl}{body}{l}else{r}none{l}end{r}"
                ));
            }
            3 => {
                let c = pick(rng, EXPRS);
                let body = structure(rng, depth + 1);
                out.push_str(&format!("{l}with {c}{r}{{{{.}}}}{body}{l}else{r}w{l}end{r}"));
            }
            4 => out.push_str(&format!("{l}$x = {}{r}", pick(rng, EXPRS))),
            _ => out.push_str(&format!("{text}{l}/* c */{r}")),
        }
    }
    out
}

/// Random sequences of template syntax, most of it invalid: both must fail or render the same.
fn syntax_soup(rng: &mut fastrand::Rng) -> String {
    const TOKENS: &[&str] = &[
        "{{", "}}", "{{-", "-}}", "{{- ", " -}}", "/*", "*/", "\"", "'", "`", "(", ")", "|", ":=", "=", "$", "$x", ".",
        ".a", "..", "a", "if", "else", "end", "range", "with", "define", "template", "block", "break", "continue",
        "nil", "true", "1", "-1", "0x", "1e", "\\", " ", "\t", "\n", "é", ",", "print", "len", "and", "#", "@", "{",
        "}",
    ];
    (0..rng.usize(1..15)).map(|_| pick(rng, TOKENS)).collect()
}

#[test]
fn generated_templates_render_like_go_text_template() {
    let mut rng = fastrand::Rng::with_seed(14);
    let data: serde_json::Value = serde_json::json!({
        "l": [1, "a", 2.5, null, [1]], "m": {"k": "v", "n": 3, "z": null}, "e": [], "f": 1.25, "n": null, "s": "str", "i": 7
    });
    let mut templates = printf_cases(&mut rng, 1500);
    templates.extend((0..1000).map(|_| format!("{{{{$x := 1}}}}{}", structure(&mut rng, 0))));
    templates.extend((0..1500).map(|_| syntax_soup(&mut rng)));
    let cases: Vec<Case> = templates
        .into_iter()
        .enumerate()
        .map(|(i, template)| Case {
            name: format!("generated-{i}"),
            template,
            data: Some(data.clone()),
            left: String::new(),
            right: String::new(),
            funcs: String::new(),
        })
        .collect();
    let Some(bin) = reference() else { return };
    let failures = differences(bin, &cases);
    eprintln!(
        "gotemplate generated: {} templates, {} identical to Go's text/template",
        cases.len(),
        cases.len() - failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} generated templates differ from Go:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
