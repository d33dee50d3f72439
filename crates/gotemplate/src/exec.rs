//! Execution: walks the parsed tree with Go's `text/template` semantics (Go 1.19).

use crate::parse::{line_col, Arg, Command, Node, Pipe, Pos};
use crate::printf;
use crate::value::{FuncError, Value};
use crate::{Error, Funcs, Template};

/// The limit on nested template invocations (Go's is 100000; 2000 keeps a render within its stack).
const MAX_EXEC_DEPTH: usize = 2000;

/// Why a walk stopped early: an error, or `{{break}}` / `{{continue}}` unwinding to their range.
pub(crate) enum Stop {
    Err(Box<Error>),
    Break,
    Continue,
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Err(Box::new(e))
    }
}

type R<T> = Result<T, Stop>;

/// The value of dot. `iface_nil` marks a nil taken out of a list or map (Go's nil `interface{}`),
/// on which a field access is an error rather than a missing value.
#[derive(Clone)]
struct Dot {
    value: Value,
    iface_nil: bool,
}

pub(crate) struct State<'a> {
    pub tmpl: &'a Template,
    pub funcs: &'a Funcs,
    pub out: &'a mut Vec<u8>,
    /// The template being executed (for error messages).
    pub name: String,
    vars: Vec<(String, Value)>,
    depth: usize,
}

impl<'a> State<'a> {
    pub fn new(tmpl: &'a Template, funcs: &'a Funcs, out: &'a mut Vec<u8>) -> Self {
        State { tmpl, funcs, out, name: tmpl.name.clone(), vars: Vec::new(), depth: 0 }
    }

    pub fn run(&mut self, data: &Value) -> Result<(), Error> {
        let Some(root) = self.tmpl.trees.get(&self.tmpl.name) else {
            return Err(Error::Exec {
                name: self.tmpl.name.clone(),
                line: 0,
                col: 0,
                context: String::new(),
                message: format!("template: {:?} is an incomplete or empty template", self.tmpl.name),
            });
        };
        self.vars = vec![("$".into(), data.clone())];
        let dot = Dot { value: data.clone(), iface_nil: false };
        match self.walk_list(&dot, root) {
            Ok(()) => Ok(()),
            Err(Stop::Err(e)) => Err(*e),
            Err(_) => Ok(()),
        }
    }

    fn err(&self, pos: Pos, context: &str, message: String) -> Stop {
        let (line, col) = line_col(&self.tmpl.text, pos);
        Stop::Err(Box::new(Error::Exec { name: self.name.clone(), line, col, context: context.to_string(), message }))
    }

    fn func_err(&self, pos: Pos, context: &str, name: &str, e: FuncError) -> Stop {
        match e {
            FuncError::Failed(m) => self.err(pos, context, format!("error calling {name}: {m}")),
            FuncError::MissingKey(key) => {
                let (line, col) = line_col(&self.tmpl.text, pos);
                Stop::Err(Box::new(Error::MissingKey { key, name: self.name.clone(), line, col }))
            }
        }
    }

    fn walk_list(&mut self, dot: &Dot, list: &[Node]) -> R<()> {
        for n in list {
            self.walk(dot, n)?;
        }
        Ok(())
    }

    fn walk(&mut self, dot: &Dot, node: &Node) -> R<()> {
        match node {
            Node::Text(t) => {
                self.out.extend_from_slice(t.as_bytes());
                Ok(())
            }
            Node::Action { pipe } => {
                let v = self.eval_pipeline(dot, pipe)?;
                if pipe.decl.is_empty() {
                    self.print_value(&v);
                }
                Ok(())
            }
            Node::If { pipe, list, else_list } | Node::With { pipe, list, else_list } => {
                let mark = self.vars.len();
                let v = self.eval_pipeline(dot, pipe)?;
                let r = if v.is_true() {
                    if matches!(node, Node::With { .. }) {
                        self.walk_list(&Dot { value: v, iface_nil: false }, list)
                    } else {
                        self.walk_list(dot, list)
                    }
                } else if let Some(e) = else_list {
                    self.walk_list(dot, e)
                } else {
                    Ok(())
                };
                self.vars.truncate(mark);
                r
            }
            Node::Range { pipe, list, else_list } => {
                let mark = self.vars.len();
                let r = self.walk_range(dot, pipe, list, else_list.as_deref());
                self.vars.truncate(mark);
                r
            }
            Node::Template { pos, name, pipe } => {
                let Some(tree) = self.tmpl.trees.get(name) else {
                    return Err(self.err(
                        *pos,
                        &format!("{{{{template {:?}}}}}", name),
                        format!("template {:?} not defined", name),
                    ));
                };
                if self.depth >= MAX_EXEC_DEPTH {
                    return Err(self.err(*pos, "", format!("exceeded maximum template depth ({MAX_EXEC_DEPTH})")));
                }
                let new_dot = match pipe {
                    Some(p) => self.eval_pipeline(dot, p)?,
                    None => Value::Nil,
                };
                let saved_vars = std::mem::replace(&mut self.vars, vec![("$".into(), new_dot.clone())]);
                let saved_name = std::mem::replace(&mut self.name, name.clone());
                self.depth += 1;
                let r = self.walk_list(&Dot { value: new_dot, iface_nil: false }, tree);
                self.depth -= 1;
                self.vars = saved_vars;
                self.name = saved_name;
                r
            }
            Node::Break => Err(Stop::Break),
            Node::Continue => Err(Stop::Continue),
        }
    }

    fn walk_range(&mut self, dot: &Dot, pipe: &Pipe, list: &[Node], else_list: Option<&[Node]>) -> R<()> {
        let val = self.eval_pipeline(dot, pipe)?;
        let mark = self.vars.len();
        let items: Vec<(Value, Value)> = match &val {
            Value::List(l) => l.iter().enumerate().map(|(i, e)| (Value::Int(i as i64), e.clone())).collect(),
            Value::Map(m) => m.iter().map(|(k, e)| (Value::String(k.clone()), e.clone())).collect(),
            Value::Nil => Vec::new(),
            other => {
                return Err(self.err(
                    pipe.pos,
                    &pipe.text(),
                    format!("range can't iterate over {}", printf::sprint_value(other)),
                ));
            }
        };
        if items.is_empty() {
            if let Some(e) = else_list {
                return self.walk_list(dot, e);
            }
            return Ok(());
        }
        for (index, elem) in items {
            if !pipe.decl.is_empty() {
                self.set_top_var(mark, 1, elem.clone());
            }
            if pipe.decl.len() > 1 {
                self.set_top_var(mark, 2, index);
            }
            let iface_nil = matches!(elem, Value::Nil);
            let r = self.walk_list(&Dot { value: elem, iface_nil }, list);
            self.vars.truncate(mark);
            match r {
                Ok(()) | Err(Stop::Continue) => {}
                Err(Stop::Break) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sets the n-th variable from the top of the stack as it was when the range began.
    fn set_top_var(&mut self, mark: usize, n: usize, v: Value) {
        let i = mark - n;
        self.vars[i].1 = v;
    }

    fn print_value(&mut self, v: &Value) {
        let s = match v {
            Value::Nil => "<no value>".to_string(),
            v => printf::sprint_value(v),
        };
        self.out.extend_from_slice(s.as_bytes());
    }

    fn eval_pipeline(&mut self, dot: &Dot, pipe: &Pipe) -> R<Value> {
        let mut value: Option<Value> = None;
        for cmd in &pipe.cmds {
            value = Some(self.eval_command(dot, cmd, value)?);
        }
        let value = value.unwrap_or_default();
        for name in &pipe.decl {
            if pipe.is_assign {
                match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                    Some(slot) => slot.1 = value.clone(),
                    None => return Err(self.err(pipe.pos, &pipe.text(), format!("undefined variable: {name}"))),
                }
            } else {
                self.vars.push((name.clone(), value.clone()));
            }
        }
        Ok(value)
    }

    fn not_a_function(&self, cmd: &Command, final_: &Option<Value>) -> R<()> {
        if cmd.args.len() > 1 || final_.is_some() {
            let a = &cmd.args[0];
            return Err(self.err(a.pos(), &a.text(), format!("can't give argument to non-function {}", a.text())));
        }
        Ok(())
    }

    fn eval_command(&mut self, dot: &Dot, cmd: &Command, final_: Option<Value>) -> R<Value> {
        let first = &cmd.args[0];
        match first {
            Arg::Field { pos, idents } => self.eval_field_chain(
                dot,
                &dot.value,
                dot.iface_nil,
                *pos,
                &first.text(),
                idents,
                &cmd.args[1..],
                final_,
            ),
            Arg::Chain { pos, node, fields } => {
                if let Arg::Nil(_) = **node {
                    return Err(self.err(
                        *pos,
                        &first.text(),
                        format!("indirection through explicit nil in {}", first.text()),
                    ));
                }
                let recv = self.eval_arg(dot, node)?;
                self.eval_field_chain(dot, &recv, false, *pos, &first.text(), fields, &cmd.args[1..], final_)
            }
            Arg::Ident(pos, name) => self.eval_function(dot, *pos, name, &cmd.args[1..], final_),
            Arg::Pipe(p) => {
                self.not_a_function(cmd, &final_)?;
                self.eval_pipeline(dot, p)
            }
            Arg::Variable { pos, name, fields } => {
                let v = self.var_value(*pos, name)?;
                if fields.is_empty() {
                    self.not_a_function(cmd, &final_)?;
                    return Ok(v);
                }
                self.eval_field_chain(dot, &v, false, *pos, &first.text(), fields, &cmd.args[1..], final_)
            }
            _ => {
                self.not_a_function(cmd, &final_)?;
                match first {
                    Arg::Bool(_, b) => Ok(Value::Bool(*b)),
                    Arg::Dot(_) => Ok(dot.value.clone()),
                    Arg::Nil(p) => Err(self.err(*p, "nil", "nil is not a command".into())),
                    Arg::Number(p, n) => self.ideal_constant(*p, n),
                    Arg::String(_, s) => Ok(Value::String(s.clone())),
                    _ => unreachable!("handled above"),
                }
            }
        }
    }

    fn ideal_constant(&self, pos: Pos, n: &crate::parse::Number) -> R<Value> {
        if n.ideal_float {
            return Ok(Value::Float(n.float.unwrap_or(0.0)));
        }
        match n.int {
            Some(i) => Ok(Value::Int(i)),
            None => Err(self.err(pos, &n.text, format!("{} overflows int", n.text))),
        }
    }

    fn var_value(&self, pos: Pos, name: &str) -> R<Value> {
        match self.vars.iter().rev().find(|(n, _)| n == name) {
            Some((_, v)) => Ok(v.clone()),
            None => Err(self.err(pos, name, format!("undefined variable: {name}"))),
        }
    }

    /// Evaluates an argument of a function or method.
    fn eval_arg(&mut self, dot: &Dot, arg: &Arg) -> R<Value> {
        match arg {
            Arg::Dot(_) => Ok(dot.value.clone()),
            Arg::Nil(_) => Ok(Value::Nil),
            Arg::Field { pos, idents } => {
                self.eval_field_chain(dot, &dot.value, dot.iface_nil, *pos, &arg.text(), idents, &[], None)
            }
            Arg::Variable { pos, name, fields } => {
                let v = self.var_value(*pos, name)?;
                if fields.is_empty() {
                    return Ok(v);
                }
                self.eval_field_chain(dot, &v, false, *pos, &arg.text(), fields, &[], None)
            }
            Arg::Pipe(p) => self.eval_pipeline(dot, p),
            Arg::Ident(pos, name) => self.eval_function(dot, *pos, name, &[], None),
            Arg::Chain { pos, node, fields } => {
                if let Arg::Nil(_) = **node {
                    return Err(self.err(
                        *pos,
                        &arg.text(),
                        format!("indirection through explicit nil in {}", arg.text()),
                    ));
                }
                let recv = self.eval_arg(dot, node)?;
                self.eval_field_chain(dot, &recv, false, *pos, &arg.text(), fields, &[], None)
            }
            Arg::Bool(_, b) => Ok(Value::Bool(*b)),
            Arg::Number(p, n) => self.ideal_constant(*p, n),
            Arg::String(_, s) => Ok(Value::String(s.clone())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn eval_field_chain(
        &mut self,
        dot: &Dot,
        receiver: &Value,
        receiver_iface_nil: bool,
        pos: Pos,
        ctx: &str,
        idents: &[String],
        args: &[Arg],
        final_: Option<Value>,
    ) -> R<Value> {
        let mut recv = receiver.clone();
        let mut iface_nil = receiver_iface_nil;
        let n = idents.len();
        for (i, ident) in idents.iter().enumerate() {
            let last = i == n - 1;
            let (a, f) = if last { (args, final_.clone()) } else { (&[][..], None) };
            let (v, present_nil) = self.eval_field(dot, &recv, iface_nil, pos, ctx, ident, a, f)?;
            recv = v;
            iface_nil = present_nil;
        }
        Ok(recv)
    }

    /// One `.Field` step. Returns the value and whether it is a nil stored in a map (Go's nil interface).
    #[allow(clippy::too_many_arguments)]
    fn eval_field(
        &mut self,
        dot: &Dot,
        recv: &Value,
        iface_nil: bool,
        pos: Pos,
        ctx: &str,
        field: &str,
        args: &[Arg],
        final_: Option<Value>,
    ) -> R<(Value, bool)> {
        let has_args = !args.is_empty() || final_.is_some();
        match recv {
            Value::Nil if iface_nil => {
                Err(self.err(pos, ctx, format!("nil pointer evaluating interface {{}}.{field}")))
            }
            Value::Nil => Ok((Value::Nil, false)),
            Value::Map(m) => {
                if has_args {
                    return Err(self.err(pos, ctx, format!("{field} is not a method but has arguments")));
                }
                match m.get(field) {
                    Some(v) => Ok((v.clone(), matches!(v, Value::Nil))),
                    None => Ok((Value::Nil, false)),
                }
            }
            Value::Object(o) => {
                let mut argv = Vec::new();
                for a in args {
                    argv.push(self.eval_arg(dot, a)?);
                }
                if let Some(f) = final_.clone() {
                    argv.push(f);
                }
                if let Some(r) = o.method(field, &argv) {
                    return r.map(|v| (v, false)).map_err(|e| self.func_err(pos, ctx, field, e));
                }
                if let Some(v) = o.field(field) {
                    if has_args {
                        return Err(self.err(
                            pos,
                            ctx,
                            format!("{field} has arguments but cannot be invoked as function"),
                        ));
                    }
                    return Ok((v, false));
                }
                Err(self.err(pos, ctx, format!("can't evaluate field {field} in type {}", o.type_name())))
            }
            other => Err(self.err(pos, ctx, format!("can't evaluate field {field} in type {}", other.type_name()))),
        }
    }

    fn eval_function(&mut self, dot: &Dot, pos: Pos, name: &str, args: &[Arg], final_: Option<Value>) -> R<Value> {
        let numin = args.len() + usize::from(final_.is_some());
        let want = |s: &Self, min: usize, exact: bool| -> R<()> {
            if exact && numin != min {
                return Err(s.err(pos, name, format!("wrong number of args for {name}: want {min} got {numin}")));
            }
            if !exact && numin < min {
                return Err(s.err(
                    pos,
                    name,
                    format!("wrong number of args for {name}: want at least {min} got {}", args.len()),
                ));
            }
            Ok(())
        };
        // and/or short-circuit: arguments are evaluated only as far as needed.
        if (name == "and" || name == "or") && !self.funcs.map.contains_key(name) {
            want(self, 1, false)?;
            let mut v = Value::Nil;
            for a in args {
                v = self.eval_arg(dot, a)?;
                if v.is_true() == (name == "or") {
                    return Ok(v);
                }
            }
            if let Some(f) = final_ {
                v = f;
            }
            return Ok(v);
        }
        let mut argv = Vec::with_capacity(numin);
        for a in args {
            argv.push(self.eval_arg(dot, a)?);
        }
        if let Some(f) = final_ {
            argv.push(f);
        }
        if let Some(f) = self.funcs.map.get(name) {
            return f(&argv).map_err(|e| self.func_err(pos, name, name, e));
        }
        let r = match name {
            "not" => {
                want(self, 1, true)?;
                Ok(Value::Bool(!argv[0].is_true()))
            }
            "len" => {
                want(self, 1, true)?;
                builtin_len(&argv[0])
            }
            "index" => {
                want(self, 1, false)?;
                builtin_index(&argv[0], &argv[1..])
            }
            "slice" => {
                want(self, 1, false)?;
                builtin_slice(&argv[0], &argv[1..])
            }
            "print" => Ok(Value::String(printf::sprint(&argv))),
            "println" => Ok(Value::String(printf::sprintln(&argv))),
            "printf" => {
                want(self, 1, false)?;
                match &argv[0] {
                    Value::String(f) => Ok(Value::String(printf::sprintf(f, &argv[1..]))),
                    other => {
                        let a = args.first().map(Arg::text).unwrap_or_default();
                        return Err(self.err(
                            pos,
                            name,
                            if args.first().is_some_and(|a| matches!(a, Arg::Number(..) | Arg::Bool(..) | Arg::Nil(_)))
                            {
                                format!("expected string; found {a}")
                            } else {
                                format!("wrong type for value; expected string; got {}", other.type_name())
                            },
                        ));
                    }
                }
            }
            "html" => Ok(Value::String(html_escape(&eval_args(&argv)))),
            "js" => Ok(Value::String(js_escape(&eval_args(&argv)))),
            "urlquery" => Ok(Value::String(query_escape(&eval_args(&argv)))),
            "eq" => {
                want(self, 1, false)?;
                builtin_eq(&argv[0], &argv[1..]).map(Value::Bool)
            }
            "ne" => {
                want(self, 2, true)?;
                builtin_eq(&argv[0], &argv[1..]).map(|b| Value::Bool(!b))
            }
            "lt" | "le" | "gt" | "ge" => {
                want(self, 2, true)?;
                let (a, b) = (&argv[0], &argv[1]);
                match name {
                    "lt" => builtin_lt(a, b),
                    "le" => {
                        builtin_lt(a, b).and_then(|l| if l { Ok(true) } else { builtin_eq(a, std::slice::from_ref(b)) })
                    }
                    "gt" => builtin_lt(a, b).and_then(|l| {
                        if l {
                            Ok(false)
                        } else {
                            builtin_eq(a, std::slice::from_ref(b)).map(|e| !e)
                        }
                    }),
                    _ => builtin_lt(a, b).map(|l| !l),
                }
                .map(Value::Bool)
            }
            "executeTemplate" => {
                // consul-template's executeTemplate: a template defined in this file, rendered to a string.
                want(self, 1, false)?;
                let Value::String(tname) = &argv[0] else {
                    return Err(self.err(
                        pos,
                        name,
                        format!("wrong type for value; expected string; got {}", argv[0].type_name()),
                    ));
                };
                if argv.len() > 2 {
                    return Err(self.func_err(
                        pos,
                        name,
                        name,
                        FuncError::msg(format!(
                            "executeTemplate: wrong number of arguments, expected 1 or 2, but got {}",
                            argv.len()
                        )),
                    ));
                }
                let Some(tree) = self.tmpl.trees.get(tname) else {
                    return Err(self.func_err(
                        pos,
                        name,
                        name,
                        FuncError::msg(format!(
                            "template: no template {tname:?} associated with template {:?}",
                            self.tmpl.name
                        )),
                    ));
                };
                if self.depth >= MAX_EXEC_DEPTH {
                    return Err(self.err(pos, name, format!("exceeded maximum template depth ({MAX_EXEC_DEPTH})")));
                }
                let data = argv.get(1).cloned().unwrap_or(Value::Nil);
                let mut buf = Vec::new();
                let mut sub = State {
                    tmpl: self.tmpl,
                    funcs: self.funcs,
                    out: &mut buf,
                    name: tname.clone(),
                    vars: vec![("$".into(), data.clone())],
                    depth: self.depth + 1,
                };
                match sub.walk_list(&Dot { value: data, iface_nil: false }, tree) {
                    Ok(()) | Err(Stop::Break) | Err(Stop::Continue) => {}
                    Err(e) => return Err(e),
                }
                Ok(Value::String(String::from_utf8_lossy(&buf).into_owned()))
            }
            "call" => {
                want(self, 1, false)?;
                match &argv[0] {
                    Value::Func(f) => f(&argv[1..]),
                    Value::Nil => Err(FuncError::msg("call of nil")),
                    other => Err(FuncError::msg(format!("non-function of type {}", other.type_name()))),
                }
            }
            _ => return Err(self.err(pos, name, format!("{name:?} is not a defined function"))),
        };
        r.map_err(|e| self.func_err(pos, name, name, e))
    }
}

/// Nil arguments of `print` and friends print as `<no value>`, as Go's `printableValue` does.
fn printable(args: &[Value]) -> Vec<Value> {
    args.iter().map(|a| if let Value::Nil = a { Value::String("<no value>".into()) } else { a.clone() }).collect()
}

/// Go's `evalArgs`: a single string as is, anything else through `fmt.Sprint`.
fn eval_args(args: &[Value]) -> String {
    if let [Value::String(s)] = args {
        return s.clone();
    }
    printf::sprint(&printable(args))
}

fn builtin_len(v: &Value) -> Result<Value, FuncError> {
    match v {
        Value::String(s) => Ok(Value::Int(s.len() as i64)),
        Value::List(l) => Ok(Value::Int(l.len() as i64)),
        Value::Map(m) => Ok(Value::Int(m.len() as i64)),
        Value::Nil => Err(FuncError::msg("len of nil pointer")),
        other => Err(FuncError::msg(format!("len of type {}", other.type_name()))),
    }
}

fn index_arg(i: &Value, cap: usize) -> Result<usize, FuncError> {
    match i {
        Value::Int(x) => {
            if *x < 0 || *x as u64 > cap as u64 {
                Err(FuncError::msg(format!("index out of range: {x}")))
            } else {
                Ok(*x as usize)
            }
        }
        Value::Nil => Err(FuncError::msg("cannot index slice/array with nil")),
        other => Err(FuncError::msg(format!("cannot index slice/array with type {}", other.type_name()))),
    }
}

fn builtin_index(item: &Value, indexes: &[Value]) -> Result<Value, FuncError> {
    if let Value::Nil = item {
        return Err(FuncError::msg("index of untyped nil"));
    }
    let mut item = item.clone();
    for idx in indexes {
        item = match &item {
            Value::List(l) => {
                let x = index_arg(idx, l.len())?;
                match l.get(x) {
                    Some(v) => v.clone(),
                    None => return Err(FuncError::msg(format!("index out of range: {x}"))),
                }
            }
            Value::String(s) => {
                let x = index_arg(idx, s.len())?;
                match s.as_bytes().get(x) {
                    Some(b) => Value::Int(*b as i64),
                    None => return Err(FuncError::msg(format!("index out of range: {x}"))),
                }
            }
            Value::Map(m) => match idx {
                Value::String(k) => m.get(k).cloned().unwrap_or(Value::Nil),
                Value::Nil => Value::Nil,
                other => return Err(FuncError::msg(format!("value has type {}; should be string", other.type_name()))),
            },
            Value::Nil => return Err(FuncError::msg("index of nil pointer")),
            other => return Err(FuncError::msg(format!("can't index item of type {}", other.type_name()))),
        };
    }
    Ok(item)
}

fn builtin_slice(item: &Value, indexes: &[Value]) -> Result<Value, FuncError> {
    if let Value::Nil = item {
        return Err(FuncError::msg("slice of untyped nil"));
    }
    if indexes.len() > 3 {
        return Err(FuncError::msg(format!("too many slice indexes: {}", indexes.len())));
    }
    let len = match item {
        Value::String(s) => {
            if indexes.len() == 3 {
                return Err(FuncError::msg("cannot 3-index slice a string"));
            }
            s.len()
        }
        Value::List(l) => l.len(),
        other => return Err(FuncError::msg(format!("can't slice item of type {}", other.type_name()))),
    };
    let mut idx = [0, len, len];
    for (i, x) in indexes.iter().enumerate() {
        idx[i] = index_arg(x, len)?;
    }
    if idx[0] > idx[1] {
        return Err(FuncError::msg(format!("invalid slice index: {} > {}", idx[0], idx[1])));
    }
    if indexes.len() == 3 && idx[1] > idx[2] {
        return Err(FuncError::msg(format!("invalid slice index: {} > {}", idx[1], idx[2])));
    }
    Ok(match item {
        Value::String(s) => Value::String(String::from_utf8_lossy(&s.as_bytes()[idx[0]..idx[1]]).into_owned()),
        Value::List(l) => Value::List(l[idx[0]..idx[1]].to_vec()),
        _ => unreachable!("checked above"),
    })
}

#[derive(PartialEq, Clone, Copy)]
enum Kind {
    Invalid,
    Bool,
    Int,
    Float,
    String,
    Other,
}

fn basic_kind(v: &Value) -> Kind {
    match v {
        Value::Nil => Kind::Invalid,
        Value::Bool(_) => Kind::Bool,
        Value::Int(_) => Kind::Int,
        Value::Float(_) => Kind::Float,
        Value::String(_) => Kind::String,
        _ => Kind::Other,
    }
}

const ERR_BAD_COMPARISON: &str = "incompatible types for comparison";
const ERR_BAD_COMPARISON_TYPE: &str = "invalid type for comparison";

fn builtin_eq(a: &Value, rest: &[Value]) -> Result<bool, FuncError> {
    if rest.is_empty() {
        return Err(FuncError::msg("missing argument for comparison"));
    }
    let k1 = basic_kind(a);
    for b in rest {
        let k2 = basic_kind(b);
        let truth = if k1 != k2 {
            if k1 != Kind::Invalid && k2 != Kind::Invalid {
                return Err(FuncError::msg(ERR_BAD_COMPARISON));
            }
            false
        } else {
            match (a, b) {
                (Value::Bool(x), Value::Bool(y)) => x == y,
                (Value::Int(x), Value::Int(y)) => x == y,
                (Value::Float(x), Value::Float(y)) => x == y,
                (Value::String(x), Value::String(y)) => x == y,
                (Value::Nil, Value::Nil) => true,
                (Value::List(_), Value::List(_)) | (Value::Map(_), Value::Map(_)) => {
                    return Err(FuncError::msg(format!(
                        "non-comparable type {}: {}",
                        printf::sprint_value(b),
                        b.type_name()
                    )));
                }
                (x, y) if x.type_name() != y.type_name() => {
                    return Err(FuncError::msg(format!(
                        "non-comparable types {}: {}, {}: {}",
                        printf::sprint_value(x),
                        x.type_name(),
                        y.type_name(),
                        printf::sprint_value(y)
                    )));
                }
                (x, y) => x == y,
            }
        };
        if truth {
            return Ok(true);
        }
    }
    Ok(false)
}

fn builtin_lt(a: &Value, b: &Value) -> Result<bool, FuncError> {
    let k1 = basic_kind(a);
    let k2 = basic_kind(b);
    if matches!(k1, Kind::Invalid | Kind::Other) || matches!(k2, Kind::Invalid | Kind::Other) {
        return Err(FuncError::msg(ERR_BAD_COMPARISON_TYPE));
    }
    if k1 != k2 {
        return Err(FuncError::msg(ERR_BAD_COMPARISON));
    }
    match (a, b) {
        (Value::Bool(_), _) => Err(FuncError::msg(ERR_BAD_COMPARISON_TYPE)),
        (Value::Int(x), Value::Int(y)) => Ok(x < y),
        (Value::Float(x), Value::Float(y)) => Ok(x < y),
        (Value::String(x), Value::String(y)) => Ok(x.as_bytes() < y.as_bytes()),
        _ => Err(FuncError::msg(ERR_BAD_COMPARISON)),
    }
}

/// Go's `template.HTMLEscapeString`.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\0' => out.push('\u{FFFD}'),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Go's `template.JSEscapeString`.
pub fn js_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u00{:02X}", c as u32)),
            c if (c as u32) < 0x80 => out.push(c),
            c if printf::is_print(c) => out.push(c),
            c => out.push_str(&format!("\\u{:04X}", c as u32)),
        }
    }
    out
}

/// Go's `url.QueryEscape`.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
