//! Go's `text/template` for kvsync's `format: go-template`, with the function sets of confd and
//! consul-template, so that their users' templates render unchanged and byte for byte.
//!
//! The reference is Go 1.19's `text/template` (Debian's `golang-go`): the syntax (actions, pipelines,
//! variables, `if`/`else if`/`range`/`with`/`define`/`template`/`block`, `break`/`continue`, trim
//! markers, comments, custom delimiters), the built-in functions, Go's truth, comparison rules and
//! `fmt` printing of values (`map[a:1 b:2]`, `[a b]`, `<no value>`). `range` over an integer is not
//! supported, as in Go 1.19. A test renders a corpus of templates both here and with a Go program
//! and compares the bytes.
//!
//! Data is modelled by [`Value`]: what JSON decodes to (integral numbers as Go's `int`, others as
//! `float64`) plus struct-like [`Object`]s for what the dialect functions return (confd's
//! `KVPair`, consul-template's `KeyPair`).
//!
//! Where this differs from Go (each is a case Go's own templates do not rely on): `{{template}}`
//! calls nest at most 2000 deep (Go: 100000) and blocks 10000 deep; a pointer to a struct inside a
//! list or map prints as `&{...}` where Go prints its address; lists are untyped (see
//! [`dialect`]); strings are UTF-8.
//!
//! Why not the `gtmpl` crate: version 0.7.1 (2021) has no `break`/`continue`, no way to set the
//! delimiters, keeps maps in a `HashMap` (Go prints and ranges over them in key order), has no parse-
//! time check of function names, and its `printf` covers a subset of Go's verbs and none of Go's
//! bad-verb output; fixing that from outside is not possible, so the engine is written here.
//!
//! ```
//! use gotemplate::{FuncNames, Funcs, Options, Template, Value};
//! let t = Template::parse("t", "{{range $k, $v := .}}{{$k}}={{$v}} {{end}}", &Options::default(), &FuncNames::builtins()).unwrap();
//! let mut out = Vec::new();
//! let data = Value::from_json(&serde_json::json!({"b": 2, "a": [1, "x"]}));
//! t.execute(&data, &Funcs::default(), &mut out).unwrap();
//! assert_eq!(String::from_utf8(out).unwrap(), "a=[1 x] b=2 ");
//! ```
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub mod dialect;
mod exec;
mod parse;
pub mod printf;
mod value;

pub use exec::{html_escape, js_escape, query_escape};
pub use value::{FuncError, Function, Object, Record, Value};

/// The built-in functions of `text/template`.
pub const BUILTINS: &[&str] = &[
    "and", "call", "html", "index", "slice", "js", "len", "not", "or", "print", "printf", "println", "urlquery", "eq",
    "ge", "gt", "le", "lt", "ne",
];

/// Parse options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The left action delimiter; empty means `{{`.
    pub left_delim: String,
    /// The right action delimiter; empty means `}}`.
    pub right_delim: String,
}

impl Default for Options {
    fn default() -> Self {
        Options { left_delim: "{{".into(), right_delim: "}}".into() }
    }
}

/// The names of the functions a template may call; Go rejects any other name when parsing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FuncNames(BTreeSet<String>);

impl FuncNames {
    /// The built-ins only.
    pub fn builtins() -> Self {
        FuncNames(BUILTINS.iter().map(|s| s.to_string()).collect())
    }

    /// The built-ins plus `names`.
    pub fn with<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        let mut f = Self::builtins();
        f.0.extend(names.into_iter().map(Into::into));
        f
    }

    pub fn insert(&mut self, name: impl Into<String>) {
        self.0.insert(name.into());
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// The functions available when executing: name to implementation. A function defined here with a
/// built-in's name replaces the built-in, as in Go.
#[derive(Clone, Default)]
pub struct Funcs {
    pub(crate) map: BTreeMap<String, Function>,
}

impl Funcs {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        name: impl Into<String>,
        f: impl Fn(&[Value]) -> Result<Value, FuncError> + Send + Sync + 'static,
    ) {
        self.map.insert(name.into(), Arc::new(f));
    }

    pub fn get(&self, name: &str) -> Option<&Function> {
        self.map.get(name)
    }

    /// The names of these functions plus the built-ins, for [`Template::parse`].
    pub fn names(&self) -> FuncNames {
        FuncNames::with(self.map.keys().cloned())
    }
}

/// A failure to parse or execute a template. Lines and columns are 1-based; columns count characters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("template: {name}:{line}:{col}: {message}")]
    Parse { name: String, line: usize, col: usize, message: String },
    #[error("template: {name}:{line}:{col}: executing {name:?} at <{context}>: {message}")]
    Exec { name: String, line: usize, col: usize, context: String, message: String },
    /// A key the template reads does not exist yet (consul-template's `key`): the output waits for it.
    #[error("template: {name}:{line}:{col}: waiting for key {key:?}, which does not exist yet")]
    MissingKey { key: String, name: String, line: usize, col: usize },
}

impl Error {
    /// The key a template waits for, when that is why it did not render.
    pub fn missing_key(&self) -> Option<&str> {
        match self {
            Error::MissingKey { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Line and column (1-based) of the error in the template text.
    pub fn position(&self) -> (usize, usize) {
        match self {
            Error::Parse { line, col, .. } | Error::Exec { line, col, .. } | Error::MissingKey { line, col, .. } => {
                (*line, *col)
            }
        }
    }
}

/// A function call written in a template, found by [`Template::calls`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The function name.
    pub name: String,
    /// 1-based line of the name.
    pub line: usize,
    /// 1-based column (in characters) of the name.
    pub col: usize,
    /// Each argument written after the name: its value when it is a string constant (or a number or
    /// bool constant, as written), `None` when it is computed. A value piped in (`"k" | key`) is the
    /// last argument.
    pub args: Vec<Option<String>>,
}

/// A parsed template, with the templates it defines.
#[derive(Clone)]
pub struct Template {
    pub(crate) name: String,
    pub(crate) text: String,
    pub(crate) trees: BTreeMap<String, Vec<parse::Node>>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template").field("name", &self.name).field("templates", &self.trees.keys()).finish()
    }
}

impl Template {
    /// Parses `text`. `name` is used in messages and is the name `{{template}}` can call it by.
    pub fn parse(name: &str, text: &str, options: &Options, funcs: &FuncNames) -> Result<Template, Error> {
        let left = if options.left_delim.is_empty() { "{{" } else { &options.left_delim };
        let right = if options.right_delim.is_empty() { "}}" } else { &options.right_delim };
        let parsed = on_big_stack(|| parse::parse(name, text, left, right, &funcs.0))?;
        Ok(Template { name: name.to_string(), text: text.to_string(), trees: parsed.trees })
    }

    /// The template's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The names of the templates it defines (with `define` or `block`), and its own.
    pub fn defined(&self) -> impl Iterator<Item = &str> {
        self.trees.keys().map(String::as_str)
    }

    /// Every function call in the template (all defined templates included), in text order.
    pub fn calls(&self) -> Vec<Call> {
        let mut calls = Vec::new();
        for nodes in self.trees.values() {
            for n in nodes {
                collect_node(n, &mut calls, &self.text);
            }
        }
        calls.sort_by_key(|c| (c.line, c.col));
        calls.dedup();
        calls
    }

    /// Executes the template with `data` as dot, writing to `out`. On error, `out` holds what was
    /// written before it (as in Go); callers that must not publish partial output discard it.
    pub fn execute(&self, data: &Value, funcs: &Funcs, out: &mut Vec<u8>) -> Result<(), Error> {
        on_big_stack(|| exec::State::new(self, funcs, out).run(data))
    }
}

/// The stack for parsing and executing: deeply nested templates, `{{template}}` recursion and deeply
/// nested values recurse, and a runtime worker's stack (2 MiB) is not enough for Go's limits.
const STACK_SIZE: usize = 256 * 1024 * 1024;

/// Runs `f` on a thread with a [`STACK_SIZE`] stack (address space only; pages are used as touched),
/// or on the current thread when no thread can be started.
fn on_big_stack<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let mut f = Some(f);
    let result = std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("gotemplate".into())
            .stack_size(STACK_SIZE)
            .spawn_scoped(scope, || (f.take().expect("run once"))());
        match spawned {
            Ok(handle) => Some(handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))),
            Err(_) => None,
        }
    });
    match result {
        Some(r) => r,
        None => (f.take().expect("not run yet"))(),
    }
}

fn collect_node(n: &parse::Node, calls: &mut Vec<Call>, text: &str) {
    use parse::Node;
    match n {
        Node::Text(_) | Node::Break | Node::Continue => {}
        Node::Action { pipe } => collect_pipe(pipe, calls, text),
        Node::If { pipe, list, else_list }
        | Node::Range { pipe, list, else_list }
        | Node::With { pipe, list, else_list } => {
            collect_pipe(pipe, calls, text);
            for n in list.iter().chain(else_list.iter().flatten()) {
                collect_node(n, calls, text);
            }
        }
        Node::Template { pipe, .. } => {
            if let Some(p) = pipe {
                collect_pipe(p, calls, text);
            }
        }
    }
}

fn constant(a: &parse::Arg) -> Option<String> {
    match a {
        // `("a/b")`: a parenthesized constant is still constant.
        parse::Arg::Pipe(p) if p.decl.is_empty() && p.cmds.len() == 1 && p.cmds[0].args.len() == 1 => {
            constant(&p.cmds[0].args[0])
        }
        parse::Arg::String(_, s) => Some(s.clone()),
        parse::Arg::Number(_, n) => Some(n.text.clone()),
        parse::Arg::Bool(_, b) => Some(b.to_string()),
        _ => None,
    }
}

fn collect_pipe(p: &parse::Pipe, calls: &mut Vec<Call>, text: &str) {
    let mut prev: Option<Option<String>> = None;
    for cmd in &p.cmds {
        if let parse::Arg::Ident(pos, name) = &cmd.args[0] {
            let (line, col) = parse::line_col(text, *pos);
            let mut args: Vec<Option<String>> = cmd.args[1..].iter().map(constant).collect();
            if let Some(v) = prev.take() {
                args.push(v);
            }
            calls.push(Call { name: name.clone(), line, col, args });
        }
        let skip = usize::from(matches!(cmd.args[0], parse::Arg::Ident(..)));
        for a in &cmd.args[skip..] {
            collect_arg(a, calls, text);
        }
        // What this stage passes on: a constant only when the stage is a lone constant.
        prev = Some(if cmd.args.len() == 1 { constant(&cmd.args[0]) } else { None });
    }
}

fn collect_arg(a: &parse::Arg, calls: &mut Vec<Call>, text: &str) {
    match a {
        parse::Arg::Pipe(p) => collect_pipe(p, calls, text),
        parse::Arg::Chain { node, .. } => collect_arg(node, calls, text),
        parse::Arg::Ident(pos, name) => {
            // A function used as an argument, called without arguments.
            let (line, col) = parse::line_col(text, *pos);
            calls.push(Call { name: name.clone(), line, col, args: Vec::new() });
        }
        _ => {}
    }
}
