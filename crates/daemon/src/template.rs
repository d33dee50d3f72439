//! Templates: minijinja with strict undefined, and the functions and filters kvsync adds.
//!
//! The context a template sees:
//! - single-input outputs (`source` + `prefix`): `kv`, the keys relative to the prefix as a flat map of
//!   strings, and `tree`, the same keys nested at `/`;
//! - outputs with `inputs:`: one variable per input name holding `{ kv, tree }`.
//!
//! Functions: `key(k)`, `key_or_default(k, default)`, `tree(prefix)`, `env(name[, default])`; with
//! `inputs:`, `key` and friends take `input="name"`. Filters: `from_json`, `to_json`, `from_yaml`,
//! `to_yaml`, `b64encode`, `b64decode` (plus minijinja's builtins).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior};

use crate::format::nest;

/// A compiled template file.
pub struct Template {
    pub path: PathBuf,
    env: Environment<'static>,
    /// The name under which the template is registered (its file name, for messages).
    name: String,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Template").field("path", &self.path).finish()
    }
}

/// The data of one input, as a template sees it.
pub struct InputData<'a> {
    pub name: &'a str,
    /// Where the keys come from, for messages ("main:config/app/").
    pub origin: String,
    pub kv: BTreeMap<&'a str, &'a [u8]>,
}

impl Template {
    /// Reads and compiles a template file; a syntax error names file:line:column.
    pub fn load(path: &Path, _inputs: &[String]) -> Result<Template, String> {
        let source =
            std::fs::read_to_string(path).map_err(|e| format!("template {}: cannot read it: {e}", path.display()))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "template".into());
        let mut env = environment();
        env.add_template_owned(name.clone(), source).map_err(|e| describe(path, &e))?;
        Ok(Template { path: path.to_path_buf(), env, name })
    }

    /// Renders with the given inputs. `single` puts the one input's `kv`/`tree` at the top level.
    pub fn render(&self, inputs: &[InputData<'_>], single: bool) -> Result<String, String> {
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        let mut origins: BTreeMap<String, Value> = BTreeMap::new();
        for i in inputs {
            let mut kv: BTreeMap<&str, Value> = BTreeMap::new();
            for (k, v) in &i.kv {
                match std::str::from_utf8(v) {
                    Ok(s) => kv.insert(k, Value::from(s)),
                    // Non-UTF-8 values are still reachable as bytes (for b64encode).
                    Err(_) => kv.insert(k, Value::from_bytes(v.to_vec())),
                };
            }
            let tree = Value::from_object(TreeObject::new(&i.kv));
            origins.insert(i.name.to_string(), Value::from(i.origin.clone()));
            if single {
                ctx.insert("kv".into(), Value::from_serialize(&kv));
                ctx.insert("tree".into(), tree);
            } else {
                let mut pair = BTreeMap::new();
                pair.insert("kv", Value::from_serialize(&kv));
                pair.insert("tree", tree);
                ctx.insert(i.name.to_string(), Value::from_serialize(&pair));
            }
        }
        ctx.insert("__kvsync_origins".into(), Value::from_serialize(&origins));
        let tmpl = self.env.get_template(&self.name).map_err(|e| describe(&self.path, &e))?;
        tmpl.render(ctx).map_err(|e| match e.kind() {
            ErrorKind::UndefinedError => describe_undefined(&self.path, &e, inputs, single),
            _ => describe(&self.path, &e),
        })
    }
}

/// "template app.conf.j2:2:6: undefined variable `db_host` (keys under main:config/app/: port, user)":
/// the expression that was undefined, read from the error's span, and what does exist.
fn describe_undefined(path: &Path, e: &Error, inputs: &[InputData<'_>], single: bool) -> String {
    let described = describe(path, e);
    let (Some(range), Some(src)) = (e.range(), e.template_source()) else { return described };
    let Some(expr) = src.get(range).map(str::trim).filter(|x| !x.is_empty()) else { return described };
    // The location part of the general description ("template app.conf.j2:2:6").
    let loc = described.split(": ").next().unwrap_or("template");
    let exists = match (single, inputs) {
        (true, [i]) => format!("keys under {}: {}", i.origin, list(i.kv.keys().copied())),
        _ => format!("variables: {}", list(inputs.iter().map(|i| i.name))),
    };
    let hint = if single { "; read a key with kv[\"name\"] or key(\"name\")" } else { "" };
    format!("{loc}: undefined variable `{expr}` ({exists}){hint}")
}

/// "a, b, c and 7 more", or "none".
fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = items.collect();
    if all.is_empty() {
        return "none".into();
    }
    let more = all.len().saturating_sub(10);
    let shown = all[..all.len().min(10)].join(", ");
    if more > 0 {
        format!("{shown} and {more} more")
    } else {
        shown
    }
}

/// "app.conf.j2:12:5: undefined value: ..." with the column computed from the error's span.
fn describe(path: &Path, e: &Error) -> String {
    let mut loc = path.display().to_string();
    if let Some(line) = e.line() {
        loc.push_str(&format!(":{line}"));
        if let (Some(range), Some(src)) = (e.range(), e.template_source()) {
            let start = range.start.min(src.len());
            let line_start = src[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
            loc.push_str(&format!(":{}", src[line_start..start].chars().count() + 1));
        }
    }
    let mut msg = e.kind().to_string();
    if let Some(d) = e.detail() {
        msg.push_str(": ");
        msg.push_str(d);
    }
    // A function's own error (e.g. a missing key) is carried as the source.
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    format!("template {loc}: {msg}")
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.add_function("key", key);
    env.add_function("key_or_default", key_or_default);
    env.add_function("tree", tree);
    env.add_function("env", env_var);
    env.add_filter("from_json", from_json);
    env.add_filter("to_json", to_json);
    env.add_filter("from_yaml", from_yaml);
    env.add_filter("to_yaml", to_yaml);
    env.add_filter("b64encode", b64encode);
    env.add_filter("b64decode", b64decode);
    env
}

/// `tree`: the keys nested at `/` (`tree.db.host`), and also callable: `tree("db/")` is the
/// nested form of the keys under `db/`, relative to it.
#[derive(Debug)]
struct TreeObject {
    nested: Value,
    flat: BTreeMap<String, Value>,
}

impl TreeObject {
    fn new(kv: &BTreeMap<&str, &[u8]>) -> TreeObject {
        let flat: BTreeMap<String, Value> = kv
            .iter()
            .map(|(k, v)| {
                let v = match std::str::from_utf8(v) {
                    Ok(s) => Value::from(s),
                    Err(_) => Value::from_bytes(v.to_vec()),
                };
                (k.to_string(), v)
            })
            .collect();
        TreeObject { nested: nest::tree_of_values(flat.clone()), flat }
    }
}

impl minijinja::value::Object for TreeObject {
    fn repr(self: &std::sync::Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }

    fn get_value(self: &std::sync::Arc<Self>, key: &Value) -> Option<Value> {
        self.nested.get_item(key).ok().filter(|v| !v.is_undefined())
    }

    fn enumerate(self: &std::sync::Arc<Self>) -> minijinja::value::Enumerator {
        let keys: Vec<Value> = self.nested.try_iter().map(|it| it.collect()).unwrap_or_default();
        minijinja::value::Enumerator::Values(keys)
    }

    fn call(self: &std::sync::Arc<Self>, _state: &State<'_, '_>, args: &[Value]) -> Result<Value, Error> {
        let prefix = match args {
            [p] => p.as_str().ok_or_else(|| invalid("tree(prefix): the prefix must be a string"))?.to_string(),
            _ => return Err(invalid("tree(prefix) takes one argument, e.g. tree(\"db/\")")),
        };
        let sub = self
            .flat
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(prefix.as_str()))
            .filter(|(k, _)| k.len() > prefix.len())
            .map(|(k, v)| (k[prefix.len()..].to_string(), v.clone()))
            .collect();
        Ok(nest::tree_of_values(sub))
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// The `kv` map of the input a function is asked about, and a label for messages.
fn input_kv(state: &State, kwargs: &Kwargs) -> Result<(Value, String), Error> {
    let input: Option<String> = kwargs.get("input")?;
    let origins = state.lookup("__kvsync_origins");
    match input {
        Some(name) => {
            let pair = state
                .lookup(&name)
                .filter(|v| !v.is_undefined())
                .ok_or_else(|| invalid(format!("there is no input named `{name}`")))?;
            let origin = origins.and_then(|o| o.get_attr(&name).ok()).map(|v| v.to_string()).unwrap_or(name);
            Ok((pair.get_attr("kv")?, origin))
        }
        None => {
            let kv = state.lookup("kv").filter(|v| !v.is_undefined()).ok_or_else(|| {
                invalid("this output has several inputs; name one, e.g. key(\"db/host\", input=\"app\")")
            })?;
            let origin = origins
                .and_then(|o| o.try_iter().ok().and_then(|mut it| it.next()).and_then(|k| o.get_item(&k).ok()))
                .map(|v| v.to_string())
                .unwrap_or_default();
            Ok((kv, origin))
        }
    }
}

fn key(state: &State, k: String, kwargs: Kwargs) -> Result<Value, Error> {
    let (kv, origin) = input_kv(state, &kwargs)?;
    kwargs.assert_all_used()?;
    let v = kv.get_item(&Value::from(k.as_str()))?;
    if v.is_undefined() {
        let mut keys: Vec<String> = kv.try_iter()?.map(|k| k.to_string()).collect();
        let more = keys.len().saturating_sub(10);
        keys.truncate(10);
        let list = if keys.is_empty() { "none".to_string() } else { keys.join(", ") };
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        return Err(invalid(format!(
            "key `{k}` is missing under {origin} (keys there: {list}{more}); use key_or_default(\"{k}\", ...) if it is optional"
        )));
    }
    Ok(v)
}

fn key_or_default(state: &State, k: String, default: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let (kv, _) = input_kv(state, &kwargs)?;
    kwargs.assert_all_used()?;
    let v = kv.get_item(&Value::from(k.as_str()))?;
    Ok(if v.is_undefined() { default } else { v })
}

fn tree(state: &State, prefix: String, kwargs: Kwargs) -> Result<Value, Error> {
    let (kv, _) = input_kv(state, &kwargs)?;
    kwargs.assert_all_used()?;
    let mut sub: BTreeMap<String, Value> = BTreeMap::new();
    for k in kv.try_iter()? {
        let ks = k.to_string();
        if let Some(rel) = ks.strip_prefix(prefix.as_str()) {
            if !rel.is_empty() {
                sub.insert(rel.to_string(), kv.get_item(&k)?);
            }
        }
    }
    Ok(nest::tree_of_values(sub))
}

fn env_var(name: String, default: Option<String>) -> Result<Value, Error> {
    match (std::env::var(&name), default) {
        (Ok(v), _) => Ok(Value::from(v)),
        (Err(_), Some(d)) => Ok(Value::from(d)),
        (Err(_), None) => Err(invalid(format!(
            "environment variable `{name}` is not set; set it or give a default: env(\"{name}\", \"...\")"
        ))),
    }
}

fn from_json(s: String) -> Result<Value, Error> {
    serde_json::from_str::<serde_json::Value>(&s)
        .map(|v| Value::from_serialize(&v))
        .map_err(|e| invalid(format!("from_json: not valid JSON: {e}")))
}

fn to_json(v: Value) -> Result<String, Error> {
    serde_json::to_string(&v).map_err(|e| invalid(format!("to_json: {e}")))
}

fn from_yaml(s: String) -> Result<Value, Error> {
    serde_yaml::from_str::<serde_yaml::Value>(&s)
        .map(|v| Value::from_serialize(&v))
        .map_err(|e| invalid(format!("from_yaml: not valid YAML: {e}")))
}

fn to_yaml(v: Value) -> Result<String, Error> {
    serde_yaml::to_string(&v).map_err(|e| invalid(format!("to_yaml: {e}")))
}

fn b64encode(v: Value) -> Result<String, Error> {
    let bytes = match v.as_bytes() {
        Some(b) => b.to_vec(),
        None => v.to_string().into_bytes(),
    };
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn b64decode(s: String) -> Result<Value, Error> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| invalid(format!("b64decode: not valid base64: {e}")))?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => Value::from(s),
        Err(e) => Value::from_bytes(e.into_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpl(src: &str) -> (tempfile::TempDir, Template) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.j2");
        std::fs::write(&p, src).unwrap();
        let t = Template::load(&p, &[]).unwrap();
        (d, t)
    }

    fn one<'a>(kv: &'a [(&'a str, &'a str)]) -> Vec<InputData<'a>> {
        vec![InputData {
            name: "app",
            origin: "main:config/app/".into(),
            kv: kv.iter().map(|(k, v)| (*k, v.as_bytes())).collect(),
        }]
    }

    #[test]
    fn renders_kv_tree_and_functions() {
        let (_d, t) = tmpl(
            "host={{ kv['db/host'] }} port={{ tree.db.port }} k={{ key('db/host') }} d={{ key_or_default('nope', 'x') }} \
             t={{ tree('db/') | to_json }} b={{ 'hi' | b64encode }} {{ 'aGk=' | b64decode }} j={{ ('{\"a\": 1}' | from_json).a }} \
             y={{ ('a: 2' | from_yaml).a }}\n",
        );
        let out = t.render(&one(&[("db/host", "h"), ("db/port", "5")]), true).unwrap();
        assert_eq!(out, "host=h port=5 k=h d=x t={\"host\":\"h\",\"port\":\"5\"} b=aGk= hi j=1 y=2\n");
    }

    #[test]
    fn missing_key_names_the_key_and_what_exists() {
        let (_d, t) = tmpl("a\n{{ key('db/host') }}");
        let err = t.render(&one(&[("port", "1"), ("user", "u")]), true).unwrap_err();
        assert!(err.contains("t.j2:2:"), "{err}");
        assert!(err.contains("key `db/host` is missing under main:config/app/ (keys there: port, user)"), "{err}");
    }

    #[test]
    fn strict_undefined_is_an_error_with_location() {
        let (_d, t) = tmpl("line one\n  {{ db_host }}\n");
        let err = t.render(&one(&[("port", "1"), ("user", "u")]), true).unwrap_err();
        assert!(err.starts_with("template "), "{err}");
        assert!(
            err.ends_with(
                "t.j2:2:6: undefined variable `db_host` (keys under main:config/app/: port, user); \
                 read a key with kv[\"name\"] or key(\"name\")"
            ),
            "{err}"
        );
        // An attribute of a variable that exists names the whole expression.
        let (_d, t) = tmpl("{{ kv.db_host }}");
        let err = t.render(&one(&[("port", "1")]), true).unwrap_err();
        assert!(err.contains("undefined variable `kv.db_host` (keys under main:config/app/: port)"), "{err}");
    }

    #[test]
    fn syntax_error_names_file_line_column() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.j2");
        std::fs::write(&p, "ok\n{% if %}\n").unwrap();
        let err = Template::load(&p, &[]).unwrap_err();
        assert!(err.contains("bad.j2:2:"), "{err}");
        assert!(err.contains("syntax error"), "{err}");
    }

    #[test]
    fn inputs_are_named() {
        let (_d, t) = tmpl("{{ app.kv.a }}-{{ flags.tree.x.y }}-{{ key('a', input='app') }}");
        let inputs = vec![
            InputData { name: "app", origin: "main:app/".into(), kv: [("a", b"1".as_slice())].into() },
            InputData { name: "flags", origin: "etcd:features/".into(), kv: [("x/y", b"on".as_slice())].into() },
        ];
        assert_eq!(t.render(&inputs, false).unwrap(), "1-on-1");
        let (_d, t) = tmpl("{{ key('a') }}");
        assert!(t.render(&inputs, false).unwrap_err().contains("input=\"app\""));
    }

    #[test]
    fn env_function_requires_a_default_when_unset() {
        let (_d, t) = tmpl("{{ env('KVSYNC_SURELY_UNSET_VAR') }}");
        assert!(t.render(&one(&[]), true).unwrap_err().contains("KVSYNC_SURELY_UNSET_VAR"));
        let (_d, t) = tmpl("{{ env('KVSYNC_SURELY_UNSET_VAR', 'dflt') }}");
        assert_eq!(t.render(&one(&[]), true).unwrap(), "dflt");
    }
}
