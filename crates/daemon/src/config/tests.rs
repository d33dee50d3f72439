//! Every bad input has a test that shows its message.

use super::*;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(Path::new("/etc/kvsync/k.yaml"), text).map_err(|e| e.to_string())
}

fn parse_in(dir: &Path, text: &str) -> Result<Config, String> {
    Config::parse(&dir.join("k.yaml"), text).map_err(|e| e.to_string())
}

const SRC: &str = "sources:\n  - name: main\n    type: file\n    path: /tmp\n";

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(&format!("{SRC}outputs:\n  - name: a\n    source: main\n    prefix: app/\n    format: json\n    destination: out/a.json\n"))
        .unwrap();
    assert_eq!(c.outputs[0].destination, Path::new("/etc/kvsync/out/a.json"));
    assert_eq!(c.retry.initial, Duration::from_millis(250));
    assert_eq!(c.http.listen.as_deref(), Some("127.0.0.1:9101"));
    assert_eq!(c.sources[0].mode, Mode::Watch);
    assert!(c.outputs[0].single);
}

#[test]
fn malformed_yaml_names_line_and_column() {
    let err = parse("sources:\n  - name: main: x\n").unwrap_err();
    assert!(err.starts_with("/etc/kvsync/k.yaml:2:"), "{err}");
    assert!(err.contains("mapping values are not allowed"), "{err}");
    // One space too few: the syntax error at its line, not the field the mapping then lacks.
    let err = parse("sources:\n  - name: main\n   type: file\n").unwrap_err();
    assert!(err.starts_with("/etc/kvsync/k.yaml:3:"), "{err}");
    assert!(!err.contains("missing field"), "{err}");
}

/// A line indented one space too few inside an output is reported at that line, as a syntax error,
/// not as the field its mapping then lacks.
#[test]
fn a_misindented_line_is_reported_at_its_line() {
    let text = format!(
        "{SRC}outputs:\n  - name: app\n    source: main\n    prefix: app/\n   format: json\n    destination: /tmp/a.json\n"
    );
    let err = parse(&text).unwrap_err();
    assert!(err.starts_with("/etc/kvsync/k.yaml:9:"), "{err}");
    assert!(!err.contains("missing field"), "{err}");
}

/// Problems are located at the entry they concern, even when a source and an output share a name.
#[test]
fn problems_point_at_their_own_entry() {
    let text =
        "sources:\n  - name: app\n    type: file\n    path: /tmp\noutputs:\n  - name: app\n    source: app\n    \
                prefix: app/\n    format: json\n    destination: /tmp/a.json\n    perms: \"999\"\n";
    let err = parse(text).unwrap_err();
    assert!(err.starts_with("/etc/kvsync/k.yaml:6: output `app`:"), "{err}");
    // A second output of the same name points at the second one.
    let text = format!(
        "{SRC}outputs:\n  - name: a\n    source: main\n    format: json\n    destination: /tmp/1\n  \
         - name: a\n    source: main\n    format: json\n    destination: /tmp/2\n"
    );
    let err = parse(&text).unwrap_err();
    assert!(err.contains("k.yaml:10: output `a`: defined twice"), "{err}");
}

#[test]
fn unknown_key_is_an_error_with_location() {
    let err = parse(&format!("{SRC}outputs:\n  - name: a\n    source: main\n    fromat: json\n    destination: x\n"))
        .unwrap_err();
    assert!(err.contains("k.yaml:8:5"), "{err}");
    assert!(err.contains("unknown field `fromat`"), "{err}");
}

#[test]
fn missing_source_is_named_with_the_defined_ones() {
    let err = parse(&format!("{SRC}outputs:\n  - name: app\n    source: nope\n    format: json\n    destination: x\n"))
        .unwrap_err();
    assert!(err.contains("k.yaml:6: output `app`: source `nope` is not defined (defined: main)"), "{err}");
}

#[test]
fn two_outputs_with_one_destination() {
    let err = parse(&format!(
        "{SRC}outputs:\n  - {{name: a, source: main, format: json, destination: /o/x}}\n  - {{name: b, source: main, format: yaml, destination: /o/x}}\n"
    ))
    .unwrap_err();
    assert!(err.contains("output `b`: destination /o/x is also the destination of output `a`"), "{err}");
}

#[test]
fn template_syntax_error_names_the_template_line() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("t.j2"), "ok\n{{ broken( }}\n").unwrap();
    let err = parse_in(
        d.path(),
        &format!("{SRC}outputs:\n  - name: a\n    source: main\n    format: template\n    template: t.j2\n    destination: x\n"),
    )
    .unwrap_err();
    assert!(err.contains("output `a`: template ") && err.contains("t.j2:2:"), "{err}");
    assert!(err.contains("syntax error"), "{err}");
}

#[test]
fn missing_template_file() {
    let err = parse(&format!(
        "{SRC}outputs:\n  - {{name: a, source: main, format: template, template: /no/such.j2, destination: x}}\n"
    ))
    .unwrap_err();
    assert!(err.contains("template /no/such.j2: cannot read it"), "{err}");
}

#[test]
fn bad_values_each_explain_the_fix() {
    let cases = [
        ("    mode: sometimes\n", "mode: `sometimes` is not a mode; use watch or poll"),
        ("    mode: poll\n    interval: 10\n", "interval: `10` has no unit; write e.g. `10s` or `10ms`"),
        ("    type: zookeeper\n", "type: `zookeeper` is not a source type"),
    ];
    for (extra, want) in cases {
        let text = format!(
            "sources:\n  - name: main\n    path: /tmp\n{}",
            if extra.contains("type:") { extra.to_string() } else { format!("    type: file\n{extra}") }
        );
        let err = parse(&text).unwrap_err();
        assert!(err.contains(want), "{extra}: {err}");
    }
    let out =
        |o: &str| parse(&format!("{SRC}outputs:\n  - {{name: a, source: main, destination: x, {o}}}\n")).unwrap_err();
    assert!(out("format: xml").contains("format: `xml` is not a format"));
    assert!(out("format: json, perms: \"999\"").contains("perms: `999` is not an octal mode"));
    assert!(out("format: json, on_change: [{signal: SIGFOO, to: child}]").contains("unknown signal `SIGFOO`"));
    assert!(out("format: json, on_change: [{signal: HUP, to: parent}]").contains("`parent` is not a signal target"));
    assert!(out("format: json, on_change: [{signal: HUP}]").contains("signal needs `to:`"));
    assert!(out("format: json, on_change: [{command: [x], http: \"http://h\"}]").contains("exactly one of"));
    assert!(out("format: json, check: []").contains("check: give the command as a list"));
    assert!(out("format: raw").contains("format raw needs `key:`"));
    assert!(out("format: json, wait: {min: 5s, max: 1s}").contains("wait.max is shorter than wait.min"));
}

#[test]
fn source_options_of_another_type_are_reported() {
    let err = parse("sources:\n  - name: e\n    type: etcd\n    address: http://x\n").unwrap_err();
    assert!(err.contains("address do(es) not apply to type etcd"), "{err}");
    let err = parse("sources:\n  - name: c\n    type: consul\n    address: 127.0.0.1:8500\n").unwrap_err();
    assert!(err.contains("needs a scheme; write http://127.0.0.1:8500"), "{err}");
    let err = parse("sources:\n  - name: f\n    type: file\n").unwrap_err();
    assert!(err.contains("type file needs `path:`"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let err = parse(&format!(
        "{SRC}outputs:\n  - {{name: a, source: x, format: json, destination: /a}}\n  - {{name: b, source: y, format: json, destination: /b}}\n"
    ))
    .unwrap_err();
    assert!(err.contains("source `x`") && err.contains("source `y`"), "{err}");
}

#[test]
fn targets_parse() {
    assert_eq!(parse_target("child").unwrap(), Target::Child);
    assert_eq!(parse_target("pid:12").unwrap(), Target::Pid(12));
    assert_eq!(parse_target("pidfile:/run/a.pid").unwrap(), Target::Pidfile("/run/a.pid".into()));
    assert_eq!(parse_target("process:nginx").unwrap(), Target::Process("nginx".into()));
    assert!(parse_target("pid:-1").is_err());
    assert!(parse_target("pid:").is_err());
}

/// The shipped example is valid and documents the formats it promises.
#[test]
fn example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.example.yaml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let formats: Vec<&str> = c.outputs.iter().map(|o| o.format.name()).collect();
    for f in ["template", "json", "files"] {
        assert!(formats.contains(&f), "the example shows format {f}");
    }
}

#[test]
fn exec_defaults() {
    let c = parse(SRC).unwrap();
    assert_eq!(c.exec.kill_signal, 15);
    assert_eq!(c.exec.kill_timeout, Duration::from_secs(10));
    assert_eq!(c.exec.restart, RestartPolicy::Never);
    assert_eq!(c.exec.min_restart_interval, Duration::from_secs(1));
    assert_eq!(c.exec.restart_backoff, (Duration::from_secs(1), Duration::from_secs(30)));
    assert!(c.watch_config);
    let c = parse(&format!(
        "{SRC}exec:\n  command: [app]\n  kill_signal: SIGINT\n  restart: on-failure\n  min_restart_interval: 250ms\n  restart_backoff: {{ initial: 100ms, max: 2s }}\n  env: {{ source: main, prefix: env/ }}\n"
    ))
    .unwrap();
    assert_eq!(c.exec.kill_signal, 2);
    assert_eq!(c.exec.restart, RestartPolicy::OnFailure);
    assert_eq!(c.exec.min_restart_interval, Duration::from_millis(250));
    assert_eq!(c.exec.restart_backoff, (Duration::from_millis(100), Duration::from_secs(2)));
    let env = c.exec.env.unwrap();
    assert!(env.sanitize && !env.upcase);
}

#[test]
fn bad_exec_settings_are_named() {
    let err = parse(&format!("{SRC}exec:\n  restart: sometimes\n")).unwrap_err();
    assert!(err.contains("exec: restart: `sometimes` is not a policy; use never, on-failure or always"), "{err}");
    let err = parse(&format!("{SRC}exec:\n  restart_backoff: {{ initial: 5s, max: 1s }}\n")).unwrap_err();
    assert!(err.contains("exec: restart_backoff: max is shorter than initial; make max at least as long"), "{err}");
    let err = parse(&format!("{SRC}exec:\n  min_restart_interval: soon\n")).unwrap_err();
    assert!(err.contains("exec: min_restart_interval: "), "{err}");
    let err = parse(&format!("{SRC}exec:\n  env: {{ source: nope, prefix: env/ }}\n")).unwrap_err();
    assert!(err.contains("exec: env: source `nope` is not defined"), "{err}");
    let err = parse(&format!("{SRC}exec:\n  command: []\n")).unwrap_err();
    assert!(err.contains("exec: command is empty"), "{err}");
}

/// The example shows the `http` options with their real defaults.
#[test]
fn example_http_section_shows_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.example.yaml");
    let example = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let minimal = parse(&format!(
        "{SRC}outputs:\n  - {{name: a, source: main, prefix: app/, format: json, destination: /o/a}}\n"
    ))
    .unwrap();
    assert_eq!(example.http, minimal.http);
    assert_eq!(minimal.http, HttpConfig { listen: Some("127.0.0.1:9101".into()), max_stale: Duration::from_secs(60) });
}

#[test]
fn http_listen_empty_disables_and_a_bad_address_is_named() {
    let base = format!("{SRC}outputs:\n  - {{name: a, source: main, prefix: app/, format: json, destination: /o/a}}\n");
    let c = parse(&format!("{base}http: {{ listen: \"\", max_stale: 5s }}\n")).unwrap();
    assert_eq!(c.http, HttpConfig { listen: None, max_stale: Duration::from_secs(5) });
    let err = parse(&format!("{base}http: {{ listen: \"localhost:9101\" }}\n")).unwrap_err();
    assert!(err.contains("listen: `localhost:9101` is not an address; write e.g. \"127.0.0.1:9101\""), "{err}");
    let err = parse(&format!("{base}http: {{ listen: \"127.0.0.1:9101\", max_stale: soon }}\n")).unwrap_err();
    assert!(err.contains("max_stale"), "{err}");
}
