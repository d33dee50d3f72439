//! The KV functions of both dialects, by confd's and consul-template's documented behaviour, and
//! the messages of bad templates.

use std::collections::BTreeMap;
use std::sync::Arc;

use gotemplate::dialect::{self, Dialect};
use gotemplate::{Call, Error, Options, Template, Value};

fn kv(pairs: &[(&str, &str)]) -> Arc<BTreeMap<String, String>> {
    Arc::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn render(d: Dialect, kv: Arc<BTreeMap<String, String>>, text: &str) -> Result<String, Error> {
    let t = Template::parse("t.tmpl", text, &Options::default(), &dialect::names(d))?;
    let mut out = Vec::new();
    t.execute(&Value::Nil, &dialect::functions(d, kv), &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

fn confd_kv() -> Arc<BTreeMap<String, String>> {
    kv(&[
        ("/app/db/host", "db1"),
        ("/app/db/port", "5432"),
        ("/app/name", "shop"),
        ("/app/upstreams/a", "10.0.0.1:80"),
        ("/app/upstreams/b", "10.0.0.2:80"),
        ("/app/upstreams/b/extra", "x"),
    ])
}

#[test]
fn confd_getv_with_and_without_default() {
    let r = render(Dialect::Confd, confd_kv(), r#"{{getv "/app/name"}} {{getv "/nope" "dflt"}}"#).unwrap();
    assert_eq!(r, "shop dflt");
    let e = render(Dialect::Confd, confd_kv(), "line1\n{{getv \"/app/missing\"}}").unwrap_err();
    assert_eq!(
        e.to_string(),
        "template: t.tmpl:2:3: executing \"t.tmpl\" at <getv>: error calling getv: key does not exist: /app/missing"
    );
    assert_eq!(e.position(), (2, 3));
}

#[test]
fn confd_get_gets_getvs_exists() {
    let r = render(
        Dialect::Confd,
        confd_kv(),
        r#"{{with get "/app/db/host"}}{{.Key}}={{.Value}}{{end}} {{exists "/app/name"}} {{exists "/x"}}"#,
    )
    .unwrap();
    assert_eq!(r, "/app/db/host=db1 true false");
    let r = render(
        Dialect::Confd,
        confd_kv(),
        r#"{{range gets "/app/db/*"}}{{.Key}}:{{.Value}} {{end}}|{{getvs "/app/upstreams/*"}}"#,
    )
    .unwrap();
    assert_eq!(r, "/app/db/host:db1 /app/db/port:5432 |[10.0.0.1:80 10.0.0.2:80]");
    let r = render(Dialect::Confd, confd_kv(), r#"{{range gets "/app/db/*"}}{{.}} {{end}}"#).unwrap();
    assert_eq!(r, "{/app/db/host db1} {/app/db/port 5432} ");
    let e = render(Dialect::Confd, confd_kv(), r#"{{get "/nope"}}"#).unwrap_err();
    assert!(e.to_string().contains("key does not exist: /nope"), "{e}");
    let e = render(Dialect::Confd, confd_kv(), r#"{{gets "/app/["}}"#).unwrap_err();
    assert!(e.to_string().contains("syntax error in pattern"), "{e}");
}

#[test]
fn confd_ls_lists_keys_and_dirs_lsdir_only_dirs() {
    assert_eq!(render(Dialect::Confd, confd_kv(), r#"{{ls "/app"}}"#).unwrap(), "[db name upstreams]");
    assert_eq!(render(Dialect::Confd, confd_kv(), r#"{{lsdir "/app"}}"#).unwrap(), "[db upstreams]");
    assert_eq!(render(Dialect::Confd, confd_kv(), r#"{{ls "/app/upstreams"}}"#).unwrap(), "[a b]");
    assert_eq!(render(Dialect::Confd, confd_kv(), r#"{{lsdir "/app/upstreams"}}"#).unwrap(), "[b]");
    assert_eq!(render(Dialect::Confd, confd_kv(), r#"{{ls "/none"}}{{lsdir "/none"}}"#).unwrap(), "[][]");
}

#[test]
fn confd_sort_kv_by_length_reverse_and_datetime() {
    let r = render(Dialect::Confd, confd_kv(), r#"{{range sortKVByLength (gets "/app/*")}}{{.Key}} {{end}}"#).unwrap();
    assert_eq!(r, "/app/name ");
    let r = render(Dialect::Confd, confd_kv(), r#"{{range reverse (gets "/app/db/*")}}{{.Value}} {{end}}"#).unwrap();
    assert_eq!(r, "5432 db1 ");
    let r = render(Dialect::Confd, confd_kv(), r#"{{(datetime).Format "2006"}}"#).unwrap();
    assert_eq!(r.len(), 4);
    assert!(r.starts_with("20"), "{r}");
    let r = render(Dialect::Confd, confd_kv(), r#"{{lookupIP "127.0.0.1"}}"#).unwrap();
    assert_eq!(r, "[127.0.0.1]");
}

fn consul_kv() -> Arc<BTreeMap<String, String>> {
    kv(&[
        ("service/redis/maxconns", "15"),
        ("service/redis/minconns", "5"),
        ("service/redis/", ""),
        ("service/redis/config/a", "1"),
        ("service/redisx", "other"),
        ("app/empty", ""),
    ])
}

#[test]
fn consul_key_waits_for_a_missing_key() {
    let r = render(
        Dialect::ConsulTemplate,
        consul_kv(),
        r#"{{key "service/redis/maxconns"}} {{key "/service/redis/minconns"}}"#,
    )
    .unwrap();
    assert_eq!(r, "15 5");
    let e = render(Dialect::ConsulTemplate, consul_kv(), "x\n  {{ key \"service/redis/nope\" }}").unwrap_err();
    assert_eq!(e.missing_key(), Some("service/redis/nope"));
    assert_eq!(e.position(), (2, 6));
    assert_eq!(e.to_string(), "template: t.tmpl:2:6: waiting for key \"service/redis/nope\", which does not exist yet");
}

#[test]
fn consul_key_or_default_and_key_exists_do_not_wait() {
    let r = render(
        Dialect::ConsulTemplate,
        consul_kv(),
        r#"{{keyOrDefault "nope" "d"}} {{keyOrDefault "app/empty" "d2"}} {{keyOrDefault "service/redis/maxconns" "d"}} {{keyExists "app/empty"}} {{keyExists "nope"}}"#,
    )
    .unwrap();
    assert_eq!(r, "d d2 15 true false");
}

#[test]
fn consul_ls_is_direct_children_tree_is_everything_below() {
    let r = render(Dialect::ConsulTemplate, consul_kv(), r#"{{range ls "service/redis"}}{{.Key}}={{.Value}} {{end}}"#)
        .unwrap();
    // Consul lists by string prefix, so service/redisx is listed too (as consul-template does).
    assert_eq!(r, "maxconns=15 minconns=5 x=other ");
    let r =
        render(Dialect::ConsulTemplate, consul_kv(), r#"{{range tree "service/redis/"}}{{.Key}}:{{.Path}} {{end}}"#)
            .unwrap();
    assert_eq!(r, "config/a:service/redis/config/a maxconns:service/redis/maxconns minconns:service/redis/minconns ");
    let r = render(Dialect::ConsulTemplate, consul_kv(), r#"[{{range ls "nothing"}}x{{end}}]"#).unwrap();
    assert_eq!(r, "[]");
    let e = render(Dialect::ConsulTemplate, consul_kv(), r#"{{range safeLs "nothing/"}}x{{end}}"#).unwrap_err();
    assert_eq!(e.missing_key(), Some("nothing/"));
    let e = render(Dialect::ConsulTemplate, consul_kv(), r#"{{range safeTree "nothing/"}}x{{end}}"#).unwrap_err();
    assert_eq!(e.missing_key(), Some("nothing/"));
}

#[test]
fn consul_by_key_explode_scratch() {
    let r = render(
        Dialect::ConsulTemplate,
        consul_kv(),
        r#"{{range $top, $pairs := tree "service/" | byKey}}{{$top}}:{{range $k, $p := $pairs}}{{$k}}={{$p.Value}},{{end}};{{end}}"#,
    )
    .unwrap();
    assert_eq!(r, "redis:config/a=1,maxconns=15,minconns=5,;");
    let r = render(
        Dialect::ConsulTemplate,
        consul_kv(),
        r#"{{with tree "service/redis" | explode}}{{.config.a}} {{.maxconns}}{{end}}"#,
    )
    .unwrap();
    assert_eq!(r, "1 15");
    let r = render(
        Dialect::ConsulTemplate,
        consul_kv(),
        r#"{{scratch.Set "a" "1"}}{{scratch.SetX "a" "2"}}{{scratch.Get "a"}} {{scratch.Key "a"}} {{scratch.MapSet "m" "y" 2}}{{scratch.MapSet "m" "x" 1}}{{scratch.MapValues "m"}}"#,
    )
    .unwrap();
    assert_eq!(r, "1 true [1 2]");
}

#[test]
fn consul_to_yaml_and_toml() {
    let r = render(Dialect::ConsulTemplate, consul_kv(), r#"{{tree "service/redis" | explode | toYAML}}"#).unwrap();
    assert_eq!(r, "config:\n  a: \"1\"\nmaxconns: \"15\"\nminconns: \"5\"\nx: other");
    let r = render(Dialect::ConsulTemplate, consul_kv(), r#"{{tree "service/redis" | explode | toTOML}}"#).unwrap();
    assert_eq!(r, "maxconns = \"15\"\nminconns = \"5\"\nx = \"other\"\n\n[config]\n  a = \"1\"");
}

#[test]
fn refused_functions_are_named_with_what_kvsync_reads_instead() {
    let names = dialect::names(Dialect::ConsulTemplate);
    let t =
        Template::parse("t", "a\n{{range service \"web\"}}{{.Address}}{{end}}", &Options::default(), &names).unwrap();
    let calls = t.calls();
    assert_eq!(calls, vec![Call { name: "service".into(), line: 2, col: 9, args: vec![Some("web".into())] }]);
    let why = dialect::refused(Dialect::ConsulTemplate, "service").unwrap();
    assert!(why.contains("KV"), "{why}");
    for n in ["secret", "pkiCert", "nomadVar", "plugin", "connect", "nodes", "spew_dump"] {
        assert!(dialect::refused(Dialect::ConsulTemplate, n).is_some(), "{n}");
    }
    assert_eq!(dialect::refused(Dialect::ConsulTemplate, "key"), None);
    assert_eq!(dialect::refused(Dialect::Confd, "getv"), None);
}

#[test]
fn calls_report_static_and_dynamic_arguments() {
    let names = dialect::names(Dialect::ConsulTemplate);
    let text =
        "{{key \"a/b\"}}\n{{keyOrDefault (printf \"x/%s\" \"y\") \"d\"}}{{\"c/d\" | key}}{{range ls \"p/\"}}{{end}}{{tree (\"t/\")}}";
    let t = Template::parse("t", text, &Options::default(), &names).unwrap();
    let calls: Vec<(String, usize, usize, Vec<Option<String>>)> =
        t.calls().into_iter().map(|c| (c.name, c.line, c.col, c.args)).collect();
    assert_eq!(
        calls,
        vec![
            ("key".into(), 1, 3, vec![Some("a/b".into())]),
            ("keyOrDefault".into(), 2, 3, vec![None, Some("d".into())]),
            ("printf".into(), 2, 17, vec![Some("x/%s".into()), Some("y".into())]),
            ("key".into(), 2, 51, vec![Some("c/d".into())]),
            ("ls".into(), 2, 64, vec![Some("p/".into())]),
            ("tree".into(), 2, 82, vec![Some("t/".into())]),
        ]
    );
}

#[test]
fn unknown_function_is_a_parse_error_with_its_place() {
    let e = Template::parse("app.tmpl", "ok\n  {{ nosuch 1 }}", &Options::default(), &dialect::names(Dialect::Confd))
        .unwrap_err();
    assert_eq!(e.to_string(), "template: app.tmpl:2:6: function \"nosuch\" not defined");
    let e = Template::parse("app.tmpl", "{{if .a}}", &Options::default(), &dialect::names(Dialect::Confd)).unwrap_err();
    assert_eq!(e.to_string(), "template: app.tmpl:1:10: unexpected EOF");
    let e = Template::parse("app.tmpl", "{{ getv \"/x\" ", &Options::default(), &dialect::names(Dialect::Confd))
        .unwrap_err();
    assert_eq!(e.to_string(), "template: app.tmpl:1:14: unclosed action");
}

#[test]
fn custom_delimiters_leave_braces_alone() {
    let opts = Options { left_delim: "[[".into(), right_delim: "]]".into() };
    let t =
        Template::parse("t", "{{ not a template }} [[ key \"a\" ]]", &opts, &dialect::names(Dialect::ConsulTemplate))
            .unwrap();
    let mut out = Vec::new();
    t.execute(&Value::Nil, &dialect::functions(Dialect::ConsulTemplate, kv(&[("a", "v")])), &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "{{ not a template }} v");
}

#[test]
fn consul_to_toml_nested_tables_arrays_and_floats() {
    let t = r#"{{parseJSON "{\"title\":\"x\",\"n\":1e21,\"ratio\":0.5,\"on\":true,\"list\":[1,\"a\"],\"srv\":{\"b\":{\"port\":80},\"a\":\"y z\"},\"items\":[{\"k\":\"1\"},{\"k\":\"2\"}],\"odd key\":\"q\\\"\"}" | toTOML}}"#;
    let r = render(Dialect::ConsulTemplate, consul_kv(), t).unwrap();
    assert_eq!(
        r,
        "list = [1.0, \"a\"]\nn = 1000000000000000000000.0\n\"odd key\" = \"q\\\"\"\non = true\nratio = 0.5\ntitle = \"x\"\n\n[[items]]\n  k = \"1\"\n\n[[items]]\n  k = \"2\"\n\n[srv]\n  a = \"y z\"\n  [srv.b]\n    port = 80.0"
    );
}

#[test]
fn endless_template_recursion_is_an_error_not_a_crash() {
    // Run on a thread with a small stack, as a render on a runtime worker would.
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(|| {
            let names = gotemplate::FuncNames::builtins();
            let t = Template::parse(
                "t",
                r#"{{define "r"}}{{if true}}{{with .}}{{template "r" .}}{{end}}{{end}}{{end}}{{template "r" 1}}"#,
                &Options::default(),
                &names,
            )
            .unwrap();
            let mut out = Vec::new();
            t.execute(&Value::Nil, &gotemplate::Funcs::default(), &mut out).unwrap_err().to_string()
        })
        .unwrap();
    let msg = handle.join().expect("no stack overflow");
    assert!(msg.contains("exceeded maximum template depth"), "{msg}");
}

#[test]
fn very_deep_nesting_is_an_error_not_a_crash() {
    let names = gotemplate::FuncNames::builtins();
    let text = format!("{}1{}", "{{if true}}".repeat(20_000), "{{end}}".repeat(20_000));
    let e = Template::parse("deep", &text, &Options::default(), &names).unwrap_err();
    assert!(e.to_string().contains("nested more than 10000 levels deep"), "{e}");
    let text = format!("{{{{{}1{}}}}}", "(".repeat(20_000), ")".repeat(20_000));
    let e = Template::parse("deep", &text, &Options::default(), &names).unwrap_err();
    assert!(e.to_string().contains("nested more than 10000 levels deep"), "{e}");
    // 5000 levels are fine.
    let text = format!("{}1{}", "{{if true}}".repeat(5_000), "{{end}}".repeat(5_000));
    let t = Template::parse("deep", &text, &Options::default(), &names).unwrap();
    let mut out = Vec::new();
    t.execute(&Value::Nil, &gotemplate::Funcs::default(), &mut out).unwrap();
    assert_eq!(out, b"1");
}

#[test]
fn consul_execute_template_renders_a_defined_template() {
    let r = render(
        Dialect::ConsulTemplate,
        consul_kv(),
        r#"{{define "item"}}<{{.}}>{{end}}{{define "plain"}}p{{end}}{{executeTemplate "item" "a" | toUpper}} {{executeTemplate "plain"}}"#,
    )
    .unwrap();
    assert_eq!(r, "<A> p");
    let e = render(Dialect::ConsulTemplate, consul_kv(), r#"{{executeTemplate "nope"}}"#).unwrap_err();
    assert!(e.to_string().contains(r#"no template "nope""#), "{e}");
}

#[test]
fn sprig_functions_and_limits_on_sizes_from_kv() {
    let r = render(
        Dialect::ConsulTemplate,
        consul_kv(),
        r#"{{sprig_quote "a\"b\n"}} {{sprig_squote "x"}} {{sprig_title "hello-world foo_bar"}} {{sprig_substr 1 3 "héllo"}} {{sprig_b64dec "!"}} {{sprig_default "d" ""}} {{sprig_default "d" "v"}} {{sprig_upper "ß"}}"#,
    )
    .unwrap();
    assert_eq!(r, "\"a\\\"b\\n\" 'x' Hello-World Foo_bar é illegal base64 data at input byte 0 d v ß");
    let e = render(Dialect::ConsulTemplate, consul_kv(), r#"{{indent 100000000 "x"}}"#).unwrap_err();
    assert!(e.to_string().contains("longer than 67108864 bytes"), "{e}");
    let e = render(Dialect::ConsulTemplate, consul_kv(), r#"{{sprig_repeat 100000000 "xx"}}"#).unwrap_err();
    assert!(e.to_string().contains("longer than 67108864 bytes"), "{e}");
    let e = render(Dialect::ConsulTemplate, consul_kv(), r#"{{range loop 0 2000000}}{{end}}"#).unwrap_err();
    assert!(e.to_string().contains("more than 1000000 iterations"), "{e}");
    let e = render(Dialect::Confd, confd_kv(), r#"{{seq 1 5000000}}"#).unwrap_err();
    assert!(e.to_string().contains("more than 1000000 numbers"), "{e}");
    let e = render(Dialect::ConsulTemplate, consul_kv(), r#"{{sprig_substr 3 1 "abc"}}"#).unwrap_err();
    assert!(e.to_string().contains("slice bounds out of range"), "{e}");
}
