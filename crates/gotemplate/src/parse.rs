//! The lexer and parser: template text to a tree, following Go's `text/template/parse` (Go 1.19).

use std::collections::{BTreeMap, BTreeSet};

use crate::Error;

/// A byte offset in the template text.
pub(crate) type Pos = usize;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Text(String),
    LeftDelim,
    RightDelim,
    Space,
    Pipe,
    LeftParen,
    RightParen,
    Declare,
    Assign,
    Char(char),
    Str(String),
    RawStr(String),
    CharConst(String),
    Number(String),
    Bool(bool),
    Dot,
    Field(String),
    Variable(String),
    Ident(String),
    Kw(&'static str),
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: Pos,
}

const KEYWORDS: &[&str] =
    &["block", "break", "continue", "define", "else", "end", "if", "range", "nil", "template", "with"];

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_alnum(c: char) -> bool {
    c == '_' || c.is_alphabetic() || c.is_numeric()
}

struct Lexer<'a> {
    input: &'a str,
    left: &'a str,
    right: &'a str,
    pos: usize,
    tokens: Vec<Token>,
    break_ok: bool,
    continue_ok: bool,
}

impl<'a> Lexer<'a> {
    fn err(&self, pos: Pos, msg: String) -> LexError {
        LexError { pos, msg }
    }

    fn rest(&self) -> &'a str {
        &self.input[self.pos..]
    }

    fn peek_char(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn emit(&mut self, tok: Tok, pos: Pos) {
        self.tokens.push(Token { tok, pos });
    }

    fn has_left_trim(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() >= 2 && b[0] == b'-' && is_space(b[1])
    }

    fn has_right_trim(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() >= 2 && is_space(b[0]) && b[1] == b'-'
    }

    /// Whether the right delimiter (optionally with its trim marker) starts here.
    fn at_right_delim(&self) -> (bool, bool) {
        let r = self.rest();
        if Self::has_right_trim(r) && r[2..].starts_with(self.right) {
            return (true, true);
        }
        (r.starts_with(self.right), false)
    }

    fn run(mut self) -> Result<Vec<Token>, LexError> {
        loop {
            // Text up to the next left delimiter.
            let start = self.pos;
            match self.rest().find(self.left) {
                None => {
                    if self.pos < self.input.len() {
                        self.emit(Tok::Text(self.input[start..].to_string()), start);
                    }
                    self.emit(Tok::Eof, self.input.len());
                    return Ok(self.tokens);
                }
                Some(x) => {
                    let delim_at = self.pos + x;
                    let after = delim_at + self.left.len();
                    let trim = Self::has_left_trim(&self.input[after..]);
                    let mut text_end = delim_at;
                    if trim {
                        let t = &self.input[start..delim_at];
                        text_end = start + t.trim_end_matches([' ', '\t', '\r', '\n']).len();
                    }
                    if text_end > start {
                        self.emit(Tok::Text(self.input[start..text_end].to_string()), start);
                    }
                    self.pos = after;
                    let after_marker = if trim { 2 } else { 0 };
                    if self.input[self.pos + after_marker..].starts_with("/*") {
                        self.pos += after_marker;
                        self.lex_comment(delim_at)?;
                        continue;
                    }
                    self.emit(Tok::LeftDelim, delim_at);
                    self.pos += after_marker;
                    self.lex_action()?;
                }
            }
        }
    }

    fn skip_leading_space(&mut self) {
        let r = self.rest();
        let n = r.len() - r.trim_start_matches([' ', '\t', '\r', '\n']).len();
        self.pos += n;
    }

    fn lex_comment(&mut self, delim_at: Pos) -> Result<(), LexError> {
        self.pos += 2;
        let Some(i) = self.rest().find("*/") else {
            return Err(self.err(delim_at, "unclosed comment".into()));
        };
        self.pos += i + 2;
        let (delim, trim) = self.at_right_delim();
        if !delim {
            return Err(self.err(delim_at, "comment ends before closing delimiter".into()));
        }
        if trim {
            self.pos += 2;
        }
        self.pos += self.right.len();
        if trim {
            self.skip_leading_space();
        }
        Ok(())
    }

    fn lex_action(&mut self) -> Result<(), LexError> {
        let mut paren_depth = 0i32;
        loop {
            let (delim, trim) = self.at_right_delim();
            if delim {
                if paren_depth != 0 {
                    return Err(self.err(self.pos, "unclosed left paren".into()));
                }
                let at = self.pos;
                if trim {
                    self.pos += 2;
                }
                self.pos += self.right.len();
                self.emit(Tok::RightDelim, at);
                if trim {
                    self.skip_leading_space();
                }
                return Ok(());
            }
            let start = self.pos;
            let Some(c) = self.peek_char() else {
                return Err(self.err(start, "unclosed action".into()));
            };
            if c.is_ascii() && is_space(c as u8) {
                let mut n = 0;
                while self.pos < self.input.len() && is_space(self.input.as_bytes()[self.pos]) {
                    self.pos += 1;
                    n += 1;
                }
                // A space followed by "-}}" belongs to the delimiter.
                let before = &self.input[self.pos - 1..];
                if Self::has_right_trim(before) && before[2..].starts_with(self.right) {
                    self.pos -= 1;
                    if n == 1 {
                        continue;
                    }
                }
                self.emit(Tok::Space, start);
                continue;
            }
            self.pos += c.len_utf8();
            match c {
                '=' => self.emit(Tok::Assign, start),
                ':' => {
                    if self.peek_char() != Some('=') {
                        return Err(self.err(start, "expected :=".into()));
                    }
                    self.pos += 1;
                    self.emit(Tok::Declare, start);
                }
                '|' => self.emit(Tok::Pipe, start),
                '"' => self.lex_quote(start)?,
                '`' => {
                    let Some(i) = self.rest().find('`') else {
                        return Err(self.err(start, "unterminated raw quoted string".into()));
                    };
                    let s = self.rest()[..i].replace('\r', "");
                    self.pos += i + 1;
                    self.emit(Tok::RawStr(s), start);
                }
                '$' => self.lex_field_or_var(start, true)?,
                '\'' => self.lex_char(start)?,
                '.' if !matches!(self.peek_char(), Some('0'..='9')) => self.lex_field_or_var(start, false)?,
                '.' | '+' | '-' | '0'..='9' => {
                    self.pos = start;
                    self.lex_number(start)?;
                }
                c if is_alnum(c) => {
                    while let Some(c) = self.peek_char() {
                        if !is_alnum(c) {
                            break;
                        }
                        self.pos += c.len_utf8();
                    }
                    let word = &self.input[start..self.pos];
                    self.check_terminator()?;
                    let tok = match word {
                        "true" => Tok::Bool(true),
                        "false" => Tok::Bool(false),
                        "break" if !self.break_ok => Tok::Ident(word.into()),
                        "continue" if !self.continue_ok => Tok::Ident(word.into()),
                        w => match KEYWORDS.iter().find(|k| **k == w) {
                            Some(k) => Tok::Kw(k),
                            None => Tok::Ident(w.into()),
                        },
                    };
                    self.emit(tok, start);
                }
                '(' => {
                    self.emit(Tok::LeftParen, start);
                    paren_depth += 1;
                }
                ')' => {
                    self.emit(Tok::RightParen, start);
                    paren_depth -= 1;
                    if paren_depth < 0 {
                        return Err(self.err(start, "unexpected right paren U+0029 ')'".into()));
                    }
                }
                c if c.is_ascii() && !c.is_ascii_control() => self.emit(Tok::Char(c), start),
                c => return Err(self.err(start, format!("unrecognized character in action: {}", go_u(c)))),
            }
        }
    }

    fn check_terminator(&self) -> Result<(), LexError> {
        match self.peek_char() {
            None => Ok(()),
            Some(c) if c.is_ascii() && is_space(c as u8) => Ok(()),
            Some('.' | ',' | '|' | ':' | ')' | '(') => Ok(()),
            Some(_) if self.rest().starts_with(self.right) => Ok(()),
            Some(c) => Err(self.err(self.pos, format!("bad character {}", go_u(c)))),
        }
    }

    fn lex_field_or_var(&mut self, start: Pos, var: bool) -> Result<(), LexError> {
        if self.check_terminator().is_ok() && !matches!(self.peek_char(), Some(c) if is_alnum(c)) {
            self.emit(if var { Tok::Variable("$".into()) } else { Tok::Dot }, start);
            return Ok(());
        }
        while let Some(c) = self.peek_char() {
            if !is_alnum(c) {
                break;
            }
            self.pos += c.len_utf8();
        }
        self.check_terminator()?;
        let word = self.input[start..self.pos].to_string();
        if var {
            self.emit(Tok::Variable(word), start);
        } else {
            self.emit(Tok::Field(word[1..].to_string()), start);
        }
        Ok(())
    }

    fn lex_quote(&mut self, start: Pos) -> Result<(), LexError> {
        let b = self.input.as_bytes();
        loop {
            match b.get(self.pos) {
                None | Some(b'\n') => return Err(self.err(start, "unterminated quoted string".into())),
                Some(b'\\') => {
                    self.pos += 1;
                    if matches!(b.get(self.pos), None | Some(b'\n')) {
                        return Err(self.err(start, "unterminated quoted string".into()));
                    }
                    self.pos += 1;
                }
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(_) => self.pos += 1,
            }
        }
        let raw = &self.input[start..self.pos];
        let s = unquote(raw, '"').map_err(|m| self.err(start, m))?;
        self.emit(Tok::Str(s), start);
        Ok(())
    }

    fn lex_char(&mut self, start: Pos) -> Result<(), LexError> {
        let b = self.input.as_bytes();
        loop {
            match b.get(self.pos) {
                None | Some(b'\n') => return Err(self.err(start, "unterminated character constant".into())),
                Some(b'\\') => {
                    self.pos += 1;
                    if matches!(b.get(self.pos), None | Some(b'\n')) {
                        return Err(self.err(start, "unterminated character constant".into()));
                    }
                    self.pos += 1;
                }
                Some(b'\'') => {
                    self.pos += 1;
                    break;
                }
                Some(_) => self.pos += 1,
            }
        }
        self.emit(Tok::CharConst(self.input[start..self.pos].to_string()), start);
        Ok(())
    }

    fn lex_number(&mut self, start: Pos) -> Result<(), LexError> {
        let b = self.input.as_bytes();
        let accept = |pos: &mut usize, set: &str| -> bool {
            if let Some(&c) = b.get(*pos) {
                if set.as_bytes().contains(&c) {
                    *pos += 1;
                    return true;
                }
            }
            false
        };
        let accept_run = |pos: &mut usize, set: &str| while accept(pos, set) {};
        let mut p = self.pos;
        accept(&mut p, "+-");
        let mut digits = "0123456789_";
        if accept(&mut p, "0") {
            if accept(&mut p, "xX") {
                digits = "0123456789abcdefABCDEF_";
            } else if accept(&mut p, "oO") {
                digits = "01234567_";
            } else if accept(&mut p, "bB") {
                digits = "01_";
            }
        }
        accept_run(&mut p, digits);
        if accept(&mut p, ".") {
            accept_run(&mut p, digits);
        }
        if digits.len() == 11 && accept(&mut p, "eE") {
            accept(&mut p, "+-");
            accept_run(&mut p, "0123456789_");
        }
        if digits.len() == 23 && accept(&mut p, "pP") {
            accept(&mut p, "+-");
            accept_run(&mut p, "0123456789_");
        }
        accept(&mut p, "i");
        self.pos = p;
        if let Some(c) = self.peek_char() {
            if is_alnum(c) {
                self.pos += c.len_utf8();
                return Err(self.err(start, format!("bad number syntax: {:?}", &self.input[start..self.pos])));
            }
        }
        self.emit(Tok::Number(self.input[start..self.pos].to_string()), start);
        Ok(())
    }
}

struct LexError {
    pos: Pos,
    msg: String,
}

/// Go's `%#U` of a rune: `U+0041 'A'`.
pub(crate) fn go_u(c: char) -> String {
    format!("U+{:04X} '{}'", c as u32, c)
}

/// Go's `strconv.Unquote` for double-quoted strings and character constants.
pub(crate) fn unquote(raw: &str, quote: char) -> Result<String, String> {
    let inner = &raw[1..raw.len() - 1];
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    let bad = || "invalid syntax".to_string();
    let mut bytes: Vec<u8> = Vec::new();
    let flush = |bytes: &mut Vec<u8>, out: &mut String| {
        if !bytes.is_empty() {
            out.push_str(&String::from_utf8_lossy(bytes));
            bytes.clear();
        }
    };
    while let Some(c) = chars.next() {
        if c == quote {
            return Err(bad());
        }
        if c != '\\' {
            flush(&mut bytes, &mut out);
            out.push(c);
            continue;
        }
        let e = chars.next().ok_or_else(bad)?;
        let simple = match e {
            'a' => Some('\x07'),
            'b' => Some('\x08'),
            'f' => Some('\x0c'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\x0b'),
            '\\' => Some('\\'),
            '\'' if quote == '\'' => Some('\''),
            '"' if quote == '"' => Some('"'),
            _ => None,
        };
        if let Some(s) = simple {
            flush(&mut bytes, &mut out);
            out.push(s);
            continue;
        }
        let hex = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, n: usize| -> Result<u32, String> {
            let mut v = 0u32;
            for _ in 0..n {
                let d = chars.next().and_then(|c| c.to_digit(16)).ok_or_else(bad)?;
                v = v * 16 + d;
            }
            Ok(v)
        };
        match e {
            'x' => {
                let v = hex(&mut chars, 2)?;
                bytes.push(v as u8);
            }
            'u' | 'U' => {
                let v = hex(&mut chars, if e == 'u' { 4 } else { 8 })?;
                flush(&mut bytes, &mut out);
                out.push(char::from_u32(v).ok_or_else(bad)?);
            }
            '0'..='7' => {
                let mut v = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    let d = chars.next().and_then(|c| c.to_digit(8)).ok_or_else(bad)?;
                    v = v * 8 + d;
                }
                if v > 255 {
                    return Err(bad());
                }
                bytes.push(v as u8);
            }
            _ => return Err(bad()),
        }
    }
    flush(&mut bytes, &mut out);
    Ok(out)
}

// ---------------------------------------------------------------- the tree

#[derive(Debug, Clone)]
pub(crate) enum Node {
    Text(String),
    Action { pipe: Pipe },
    If { pipe: Pipe, list: Vec<Node>, else_list: Option<Vec<Node>> },
    Range { pipe: Pipe, list: Vec<Node>, else_list: Option<Vec<Node>> },
    With { pipe: Pipe, list: Vec<Node>, else_list: Option<Vec<Node>> },
    Template { pos: Pos, name: String, pipe: Option<Pipe> },
    Break,
    Continue,
}

#[derive(Debug, Clone)]
pub(crate) struct Pipe {
    pub pos: Pos,
    pub decl: Vec<String>,
    pub is_assign: bool,
    pub cmds: Vec<Command>,
}

#[derive(Debug, Clone)]
pub(crate) struct Command {
    pub pos: Pos,
    pub args: Vec<Arg>,
}

/// A number constant as Go's parser sees it.
#[derive(Debug, Clone)]
pub(crate) struct Number {
    pub text: String,
    pub int: Option<i64>,
    pub float: Option<f64>,
    /// Whether the constant, without context, is a float (Go's `idealConstant`).
    pub ideal_float: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Field { pos: Pos, idents: Vec<String> },
    Chain { pos: Pos, node: Box<Arg>, fields: Vec<String> },
    Variable { pos: Pos, name: String, fields: Vec<String> },
    Dot(Pos),
    Nil(Pos),
    Bool(Pos, bool),
    Number(Pos, Number),
    String(Pos, String),
    Ident(Pos, String),
    Pipe(Box<Pipe>),
}

impl Arg {
    pub fn pos(&self) -> Pos {
        match self {
            Arg::Field { pos, .. } | Arg::Chain { pos, .. } | Arg::Variable { pos, .. } => *pos,
            Arg::Dot(p) | Arg::Nil(p) | Arg::Bool(p, _) | Arg::Number(p, _) | Arg::String(p, _) | Arg::Ident(p, _) => {
                *p
            }
            Arg::Pipe(p) => p.pos,
        }
    }

    /// How Go prints the node (used in error contexts such as `at <.a.b>`).
    pub fn text(&self) -> String {
        match self {
            Arg::Field { idents, .. } => idents.iter().map(|i| format!(".{i}")).collect(),
            Arg::Chain { node, fields, .. } => {
                let base = match &**node {
                    Arg::Pipe(_) => format!("({})", node.text()),
                    n => n.text(),
                };
                format!("{base}{}", fields.iter().map(|i| format!(".{i}")).collect::<String>())
            }
            Arg::Variable { name, fields, .. } => {
                format!("{name}{}", fields.iter().map(|i| format!(".{i}")).collect::<String>())
            }
            Arg::Dot(_) => ".".into(),
            Arg::Nil(_) => "nil".into(),
            Arg::Bool(_, b) => b.to_string(),
            Arg::Number(_, n) => n.text.clone(),
            Arg::String(_, s) => crate::printf::quote(s),
            Arg::Ident(_, s) => s.clone(),
            Arg::Pipe(p) => p.text(),
        }
    }
}

impl Pipe {
    pub fn text(&self) -> String {
        let mut s = String::new();
        if !self.decl.is_empty() {
            s.push_str(&self.decl.join(", "));
            s.push_str(if self.is_assign { " = " } else { " := " });
        }
        let cmds: Vec<String> =
            self.cmds.iter().map(|c| c.args.iter().map(Arg::text).collect::<Vec<_>>().join(" ")).collect();
        s.push_str(&cmds.join(" | "));
        s
    }
}

/// The parsed templates: the main one and every `define`/`block`, by name.
pub(crate) struct Parsed {
    pub trees: BTreeMap<String, Vec<Node>>,
}

struct Parser<'a> {
    name: &'a str,
    text: &'a str,
    toks: Vec<Token>,
    i: usize,
    vars: Vec<String>,
    range_depth: usize,
    /// Nesting of control structures and parentheses.
    depth: usize,
    funcs: &'a BTreeSet<String>,
    trees: BTreeMap<String, Vec<Node>>,
}

type PResult<T> = Result<T, Error>;

/// How deeply control structures and parentheses may nest.
const MAX_NESTING: usize = 10_000;

pub(crate) fn parse(
    name: &str,
    text: &str,
    left: &str,
    right: &str,
    funcs: &BTreeSet<String>,
) -> Result<Parsed, Error> {
    let lexer = Lexer {
        input: text,
        left,
        right,
        pos: 0,
        tokens: Vec::new(),
        break_ok: !funcs.contains("break"),
        continue_ok: !funcs.contains("continue"),
    };
    let toks = lexer.run().map_err(|e| {
        let (line, col) = line_col(text, e.pos);
        Error::Parse { name: name.to_string(), line, col, message: e.msg }
    })?;
    let mut p = Parser {
        name,
        text,
        toks,
        i: 0,
        vars: vec!["$".into()],
        range_depth: 0,
        depth: 0,
        funcs,
        trees: BTreeMap::new(),
    };
    let root = p.parse_root()?;
    add_tree(&mut p.trees, name, root, name, text, 0)?;
    Ok(Parsed { trees: p.trees })
}

fn is_empty_tree(nodes: &[Node]) -> bool {
    nodes.iter().all(|n| matches!(n, Node::Text(t) if t.trim_matches([' ', '\t', '\r', '\n']).is_empty()))
}

fn add_tree(
    trees: &mut BTreeMap<String, Vec<Node>>,
    tname: &str,
    nodes: Vec<Node>,
    name: &str,
    text: &str,
    pos: Pos,
) -> PResult<()> {
    match trees.get(tname) {
        Some(old) if !is_empty_tree(old) => {
            if !is_empty_tree(&nodes) {
                let (line, col) = line_col(text, pos);
                return Err(Error::Parse {
                    name: name.to_string(),
                    line,
                    col,
                    message: format!("template: multiple definition of template {:?}", tname),
                });
            }
        }
        _ => {
            trees.insert(tname.to_string(), nodes);
        }
    }
    Ok(())
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, pos: Pos) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

impl<'a> Parser<'a> {
    fn err<T>(&self, pos: Pos, message: String) -> PResult<T> {
        let (line, col) = line_col(self.text, pos);
        Err(Error::Parse { name: self.name.to_string(), line, col, message })
    }

    fn next(&mut self) -> Token {
        let t = self.toks[self.i.min(self.toks.len() - 1)].clone();
        self.i += 1;
        t
    }

    fn peek(&self) -> &Token {
        &self.toks[self.i.min(self.toks.len() - 1)]
    }

    fn next_non_space(&mut self) -> Token {
        loop {
            let t = self.next();
            if t.tok != Tok::Space {
                return t;
            }
        }
    }

    fn peek_non_space(&mut self) -> Token {
        let t = self.next_non_space();
        self.i -= 1;
        t
    }

    fn backup(&mut self) {
        self.i -= 1;
    }

    fn describe(t: &Token) -> String {
        match &t.tok {
            Tok::Text(s) => format!("{:?}", s),
            Tok::LeftDelim => "<left delim>".into(),
            Tok::RightDelim => "<right delim>".into(),
            Tok::Space => "<space>".into(),
            Tok::Pipe => "<|>".into(),
            Tok::LeftParen => "<(>".into(),
            Tok::RightParen => "<)>".into(),
            Tok::Declare => "\":=\"".into(),
            Tok::Assign => "\"=\"".into(),
            Tok::Char(c) => format!("{:?}", c.to_string()),
            Tok::Str(s) => crate::printf::quote(s),
            Tok::RawStr(s) => format!("`{s}`"),
            Tok::CharConst(s) | Tok::Number(s) => format!("{:?}", s),
            Tok::Bool(b) => format!("\"{b}\""),
            Tok::Dot => "<.>".into(),
            Tok::Field(f) => format!("<.{f}>"),
            Tok::Variable(v) => format!("<{v}>"),
            Tok::Ident(i) => format!("<{i}>"),
            Tok::Kw(k) => format!("<{k}>"),
            Tok::Eof => "EOF".into(),
        }
    }

    fn unexpected<T>(&self, t: &Token, context: &str) -> PResult<T> {
        self.err(t.pos, format!("unexpected {} in {}", Self::describe(t), context))
    }

    fn parse_root(&mut self) -> PResult<Vec<Node>> {
        let mut root = Vec::new();
        while self.peek().tok != Tok::Eof {
            if self.peek().tok == Tok::LeftDelim {
                let save = self.i;
                self.next();
                if self.next_non_space().tok == Tok::Kw("define") {
                    self.parse_definition()?;
                    continue;
                }
                self.i = save;
            }
            match self.text_or_action()? {
                Item::Node(n) => root.push(n),
                Item::End(pos) => return self.err(pos, "unexpected {{end}}".into()),
                Item::Else(pos, _) => return self.err(pos, "unexpected {{else}}".into()),
            }
        }
        Ok(root)
    }

    fn parse_definition(&mut self) -> PResult<()> {
        let context = "define clause";
        let t = self.next_non_space();
        let name = match &t.tok {
            Tok::Str(s) | Tok::RawStr(s) => s.clone(),
            _ => return self.unexpected(&t, context),
        };
        let t2 = self.next_non_space();
        if t2.tok != Tok::RightDelim {
            return self.unexpected(&t2, context);
        }
        let saved_vars = std::mem::replace(&mut self.vars, vec!["$".into()]);
        let saved_depth = std::mem::replace(&mut self.range_depth, 0);
        let (list, end) = self.item_list()?;
        self.vars = saved_vars;
        self.range_depth = saved_depth;
        if let Item::Else(pos, _) = end {
            return self.err(pos, format!("unexpected {{{{else}}}} in {context}"));
        }
        add_tree(&mut self.trees, &name, list, self.name, self.text, t.pos)
    }

    fn item_list(&mut self) -> PResult<(Vec<Node>, Item)> {
        let mut list = Vec::new();
        while self.peek_non_space().tok != Tok::Eof {
            match self.text_or_action()? {
                Item::Node(n) => list.push(n),
                other => return Ok((list, other)),
            }
        }
        let pos = self.peek().pos;
        self.err(pos, "unexpected EOF".into())
    }

    fn text_or_action(&mut self) -> PResult<Item> {
        let t = self.next_non_space();
        match t.tok {
            Tok::Text(s) => Ok(Item::Node(Node::Text(s))),
            Tok::LeftDelim => self.action(),
            _ => self.unexpected(&t, "input"),
        }
    }

    fn action(&mut self) -> PResult<Item> {
        let t = self.next_non_space();
        match t.tok {
            Tok::Kw("block") => return self.block_control().map(Item::Node),
            Tok::Kw("break") | Tok::Kw("continue") => {
                let is_break = t.tok == Tok::Kw("break");
                let word = if is_break { "{{break}}" } else { "{{continue}}" };
                let n = self.next_non_space();
                if n.tok != Tok::RightDelim {
                    return self.unexpected(&n, word);
                }
                if self.range_depth == 0 {
                    return self.err(t.pos, format!("{word} outside {{{{range}}}}"));
                }
                return Ok(Item::Node(if is_break { Node::Break } else { Node::Continue }));
            }
            Tok::Kw("else") => {
                let peek = self.peek_non_space();
                if peek.tok == Tok::Kw("if") {
                    return Ok(Item::Else(peek.pos, true));
                }
                let n = self.next_non_space();
                if n.tok != Tok::RightDelim {
                    return self.unexpected(&n, "else");
                }
                return Ok(Item::Else(n.pos, false));
            }
            Tok::Kw("end") => {
                let n = self.next_non_space();
                if n.tok != Tok::RightDelim {
                    return self.unexpected(&n, "end");
                }
                return Ok(Item::End(t.pos));
            }
            Tok::Kw("if") => return self.control("if").map(Item::Node),
            Tok::Kw("range") => return self.control("range").map(Item::Node),
            Tok::Kw("with") => return self.control("with").map(Item::Node),
            Tok::Kw("template") => {
                let context = "template clause";
                let nt = self.next_non_space();
                let name = self.template_name(&nt, context)?;
                let pipe = if self.next_non_space().tok != Tok::RightDelim {
                    self.backup();
                    Some(self.pipeline(context, Tok::RightDelim)?)
                } else {
                    None
                };
                return Ok(Item::Node(Node::Template { pos: nt.pos, name, pipe }));
            }
            _ => {}
        }
        self.backup();
        let pipe = self.pipeline("command", Tok::RightDelim)?;
        Ok(Item::Node(Node::Action { pipe }))
    }

    fn template_name(&self, t: &Token, context: &str) -> PResult<String> {
        match &t.tok {
            Tok::Str(s) | Tok::RawStr(s) => Ok(s.clone()),
            _ => self.unexpected(t, context),
        }
    }

    fn block_control(&mut self) -> PResult<Node> {
        let context = "block clause";
        let nt = self.next_non_space();
        let name = self.template_name(&nt, context)?;
        let pipe = self.pipeline(context, Tok::RightDelim)?;
        let saved_vars = std::mem::replace(&mut self.vars, vec!["$".into()]);
        let saved_depth = std::mem::replace(&mut self.range_depth, 0);
        let (list, end) = self.item_list()?;
        self.vars = saved_vars;
        self.range_depth = saved_depth;
        if let Item::Else(pos, _) = end {
            return self.err(pos, format!("unexpected {{{{else}}}} in {context}"));
        }
        add_tree(&mut self.trees, &name, list, self.name, self.text, nt.pos)?;
        Ok(Node::Template { pos: nt.pos, name, pipe: Some(pipe) })
    }

    fn control(&mut self, context: &str) -> PResult<Node> {
        self.enter()?;
        let r = self.control_inner(context);
        self.depth -= 1;
        r
    }

    /// Counts one more level of nesting; refuses templates nested deeper than [`MAX_NESTING`].
    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            let pos = self.peek().pos;
            self.depth -= 1;
            return self.err(pos, format!("template nested more than {MAX_NESTING} levels deep"));
        }
        Ok(())
    }

    fn control_inner(&mut self, context: &str) -> PResult<Node> {
        let nvars = self.vars.len();
        let pipe = self.pipeline(context, Tok::RightDelim)?;
        if context == "range" {
            self.range_depth += 1;
        }
        let (list, next) = self.item_list()?;
        if context == "range" {
            self.range_depth -= 1;
        }
        let mut else_list = None;
        match next {
            Item::End(_) => {}
            Item::Else(_, is_if) => {
                if context == "if" && is_if {
                    self.next_non_space(); // the "if"
                    let n = self.control("if")?;
                    else_list = Some(vec![n]);
                } else if is_if {
                    // "else if" on range/with: Go parses the `if` as the start of a pipeline.
                    let t = self.next_non_space();
                    return self.unexpected(&t, "else");
                } else {
                    let (l, end) = self.item_list()?;
                    if let Item::Else(pos, _) = end {
                        return self.err(pos, "expected end; found {{else}}".into());
                    }
                    else_list = Some(l);
                }
            }
            Item::Node(_) => unreachable!("item_list returns at end or else"),
        }
        self.vars.truncate(nvars);
        Ok(match context {
            "if" => Node::If { pipe, list, else_list },
            "range" => Node::Range { pipe, list, else_list },
            _ => Node::With { pipe, list, else_list },
        })
    }

    fn pipeline(&mut self, context: &str, end: Tok) -> PResult<Pipe> {
        let start = self.peek_non_space();
        let mut pipe = Pipe { pos: start.pos, decl: Vec::new(), is_assign: false, cmds: Vec::new() };
        loop {
            let v = self.peek_non_space();
            let Tok::Variable(vname) = &v.tok else { break };
            let vname = vname.clone();
            let save = self.i;
            self.next_non_space();
            let next = self.peek_non_space();
            match next.tok {
                Tok::Assign | Tok::Declare => {
                    pipe.is_assign = next.tok == Tok::Assign;
                    self.next_non_space();
                    if pipe.is_assign && !self.vars.contains(&vname) {
                        return self.err(v.pos, format!("undefined variable {:?}", vname));
                    }
                    pipe.decl.push(vname.clone());
                    self.vars.push(vname);
                    break;
                }
                Tok::Char(',') => {
                    self.next_non_space();
                    pipe.decl.push(vname.clone());
                    self.vars.push(vname);
                    if context == "range" && pipe.decl.len() < 2 {
                        match self.peek_non_space().tok {
                            Tok::Variable(_) | Tok::RightDelim | Tok::RightParen => continue,
                            _ => return self.err(v.pos, "range can only initialize variables".into()),
                        }
                    }
                    return self.err(v.pos, format!("too many declarations in {context}"));
                }
                _ => {
                    self.i = save;
                    break;
                }
            }
        }
        loop {
            let t = self.next_non_space();
            if t.tok == end {
                self.check_pipeline(&pipe, context, t.pos)?;
                return Ok(pipe);
            }
            match t.tok {
                Tok::Bool(_)
                | Tok::CharConst(_)
                | Tok::Dot
                | Tok::Field(_)
                | Tok::Ident(_)
                | Tok::Number(_)
                | Tok::Kw("nil")
                | Tok::RawStr(_)
                | Tok::Str(_)
                | Tok::Variable(_)
                | Tok::LeftParen => {
                    self.backup();
                    let c = self.command()?;
                    pipe.cmds.push(c);
                }
                _ => return self.unexpected(&t, context),
            }
        }
    }

    fn check_pipeline(&self, pipe: &Pipe, context: &str, pos: Pos) -> PResult<()> {
        if pipe.cmds.is_empty() {
            return self.err(pos, format!("missing value for {context}"));
        }
        for (i, c) in pipe.cmds.iter().enumerate().skip(1) {
            if matches!(c.args[0], Arg::Bool(..) | Arg::Dot(_) | Arg::Nil(_) | Arg::Number(..) | Arg::String(..)) {
                return self.err(c.pos, format!("non executable command in pipeline stage {}", i + 1));
            }
        }
        Ok(())
    }

    fn command(&mut self) -> PResult<Command> {
        let pos = self.peek_non_space().pos;
        let mut cmd = Command { pos, args: Vec::new() };
        loop {
            self.peek_non_space();
            if let Some(op) = self.operand()? {
                cmd.args.push(op);
            }
            let t = self.next();
            match t.tok {
                Tok::Space => continue,
                Tok::RightDelim | Tok::RightParen => self.backup(),
                Tok::Pipe => {}
                _ => return self.unexpected(&t, "operand"),
            }
            break;
        }
        if cmd.args.is_empty() {
            return self.err(pos, "empty command".into());
        }
        Ok(cmd)
    }

    fn operand(&mut self) -> PResult<Option<Arg>> {
        let Some(node) = self.term()? else { return Ok(None) };
        if let Tok::Field(_) = self.peek().tok {
            let pos = self.peek().pos;
            let mut fields = Vec::new();
            while let Tok::Field(f) = &self.peek().tok {
                fields.push(f.clone());
                self.next();
            }
            return Ok(Some(match node {
                Arg::Field { pos, mut idents } => {
                    idents.extend(fields);
                    Arg::Field { pos, idents }
                }
                Arg::Variable { pos, name, fields: mut f } => {
                    f.extend(fields);
                    Arg::Variable { pos, name, fields: f }
                }
                Arg::Bool(..) | Arg::String(..) | Arg::Number(..) | Arg::Nil(_) | Arg::Dot(_) => {
                    return self.err(pos, format!("unexpected . after term {:?}", node.text()));
                }
                other => Arg::Chain { pos, node: Box::new(other), fields },
            }));
        }
        Ok(Some(node))
    }

    fn term(&mut self) -> PResult<Option<Arg>> {
        let t = self.next_non_space();
        Ok(Some(match t.tok {
            Tok::Ident(name) => {
                if !self.funcs.contains(&name) {
                    return self.err(t.pos, format!("function {:?} not defined", name));
                }
                Arg::Ident(t.pos, name)
            }
            Tok::Dot => Arg::Dot(t.pos),
            Tok::Kw("nil") => Arg::Nil(t.pos),
            Tok::Variable(name) => {
                if !self.vars.contains(&name) {
                    return self.err(t.pos, format!("undefined variable {:?}", name));
                }
                Arg::Variable { pos: t.pos, name, fields: Vec::new() }
            }
            Tok::Field(f) => Arg::Field { pos: t.pos, idents: vec![f] },
            Tok::Bool(b) => Arg::Bool(t.pos, b),
            Tok::Number(text) => match parse_number(&text, false) {
                Ok(n) => Arg::Number(t.pos, n),
                Err(m) => return self.err(t.pos, m),
            },
            Tok::CharConst(text) => match parse_number(&text, true) {
                Ok(n) => Arg::Number(t.pos, n),
                Err(m) => return self.err(t.pos, m),
            },
            Tok::LeftParen => {
                self.enter()?;
                let p = self.pipeline("parenthesized pipeline", Tok::RightParen);
                self.depth -= 1;
                Arg::Pipe(Box::new(p?))
            }
            Tok::Str(s) | Tok::RawStr(s) => Arg::String(t.pos, s),
            _ => {
                self.backup();
                return Ok(None);
            }
        }))
    }
}

enum Item {
    Node(Node),
    End(Pos),
    /// `{{else}}`; true when an `if` follows (`{{else if ...}}`).
    Else(Pos, bool),
}

/// Go's `parse.NumberNode` for a number or character constant.
fn parse_number(text: &str, is_char: bool) -> Result<Number, String> {
    if is_char {
        let s = unquote(text, '\'').map_err(|_| format!("malformed character constant: {text}"))?;
        let mut cs = s.chars();
        let (Some(c), None) = (cs.next(), cs.next()) else {
            return Err(format!("malformed character constant: {text}"));
        };
        let i = c as i64;
        return Ok(Number { text: text.into(), int: Some(i), float: Some(i as f64), ideal_float: false });
    }
    if text.ends_with('i') {
        return Err(format!("complex numbers are not supported: {text}"));
    }
    let int = parse_go_int(text);
    let mut float = None;
    let is_hex = {
        let t = text.trim_start_matches(['+', '-']);
        t.starts_with("0x") || t.starts_with("0X")
    };
    let is_hex_int = is_hex && !text.contains(['p', 'P']);
    if let Some(i) = int {
        float = Some(i as f64);
    } else if is_hex && !is_hex_int {
        float = parse_hex_float(text);
    } else if !is_hex {
        let cleaned: String = text.chars().filter(|c| *c != '_').collect();
        if let Ok(f) = cleaned.parse::<f64>() {
            if f.is_finite() {
                float = Some(f);
            }
        }
    }
    let mut int = int;
    if int.is_none() {
        if let Some(f) = float {
            if f == f.trunc() && f.abs() < 9.2e18 {
                int = Some(f as i64);
            }
        }
    }
    if int.is_none() && float.is_none() {
        return Err(format!("illegal number syntax: {:?}", text));
    }
    let ideal_float = float.is_some() && !is_hex_int && text.contains(['.', 'e', 'E', 'p', 'P']);
    if !ideal_float && int.is_none() {
        return Err(format!("{text} overflows int"));
    }
    Ok(Number { text: text.into(), int, float, ideal_float })
}

/// A hexadecimal floating-point constant such as `0x1.8p-2`.
fn parse_hex_float(text: &str) -> Option<f64> {
    let (neg, t) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let t = t.get(2..)?.replace('_', "");
    let (mant, exp) = t.split_once(['p', 'P'])?;
    let exp: i32 = exp.parse().ok()?;
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut v = 0f64;
    for c in int.chars() {
        v = v * 16.0 + c.to_digit(16)? as f64;
    }
    let mut scale = 1.0 / 16.0;
    for c in frac.chars() {
        v += c.to_digit(16)? as f64 * scale;
        scale /= 16.0;
    }
    let v = v * 2f64.powi(exp);
    Some(if neg { -v } else { v })
}

/// Go's `strconv.ParseInt(text, 0, 64)`.
fn parse_go_int(text: &str) -> Option<i64> {
    let (neg, t) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (base, digits, prefixed) = if let Some(r) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (16, r, true)
    } else if let Some(r) = t.strip_prefix("0o").or_else(|| t.strip_prefix("0O")) {
        (8, r, true)
    } else if let Some(r) = t.strip_prefix("0b").or_else(|| t.strip_prefix("0B")) {
        (2, r, true)
    } else if t.len() > 1 && t.starts_with('0') {
        (8, &t[1..], true)
    } else {
        (10, t, false)
    };
    if digits.contains('_') && !prefixed {
        return None;
    }
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    if digits.is_empty() {
        return None;
    }
    let u = u64::from_str_radix(&digits, base).ok()?;
    if neg {
        if u <= i64::MAX as u64 + 1 {
            Some((u as i128).wrapping_neg() as i64)
        } else {
            None
        }
    } else {
        i64::try_from(u).ok()
    }
}
