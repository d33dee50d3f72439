//! The values a template works on, and how Go's `fmt` prints them with `%v`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A value seen by a template: the data passed to `execute`, constants, variables and what functions
/// return. It models the Go values that `text/template` sees when the data comes from JSON or from
/// confd's and consul-template's functions.
#[derive(Clone, Default)]
pub enum Value {
    /// Go's `nil` (an interface holding nothing). A missing map key also evaluates to it.
    #[default]
    Nil,
    Bool(bool),
    /// Go's `int` (64 bits here, as on every platform kvsync runs on).
    Int(i64),
    /// Go's `float64`.
    Float(f64),
    String(String),
    /// Go's `[]interface{}`.
    List(Vec<Value>),
    /// Go's `map[string]interface{}`; ordered by key, as Go prints and ranges over maps.
    Map(BTreeMap<String, Value>),
    /// A struct (or pointer to a struct) with fields and possibly methods, such as confd's `KVPair`.
    Object(Arc<dyn Object>),
    /// A function value, usable with the `call` built-in.
    Func(Function),
}

/// A function callable from a template.
pub type Function = Arc<dyn Fn(&[Value]) -> Result<Value, FuncError> + Send + Sync>;

/// Why a function call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum FuncError {
    /// The function failed; the text is Go's error text (`error calling NAME: TEXT`).
    Failed(String),
    /// A key the template needs does not exist yet; the output must wait for it.
    MissingKey(String),
}

impl FuncError {
    pub fn msg(text: impl Into<String>) -> Self {
        FuncError::Failed(text.into())
    }
}

impl From<String> for FuncError {
    fn from(s: String) -> Self {
        FuncError::Failed(s)
    }
}

impl From<&str> for FuncError {
    fn from(s: &str) -> Self {
        FuncError::Failed(s.to_string())
    }
}

/// A Go struct-like value: named fields read with `.Field`, methods called with `.Method args`.
pub trait Object: Send + Sync {
    /// The Go type name used in messages and by `%T`, e.g. `*dep.KeyPair`.
    fn type_name(&self) -> String;
    /// The value of an exported field, or `None` when the type has no such field.
    fn field(&self, name: &str) -> Option<Value>;
    /// Calls a method; `None` when the type has no such method.
    fn method(&self, _name: &str, _args: &[Value]) -> Option<Result<Value, FuncError>> {
        None
    }
    /// The fields in declaration order, for printing with `%v` (`{a b}`) and `%+v` (`{A:a B:b}`).
    fn fields(&self) -> Vec<(&'static str, Value)>;
    /// Whether Go prints it through a pointer (`&{...}`).
    fn is_pointer(&self) -> bool {
        false
    }
    /// What its `String()` method returns, for types that have one (Go's `fmt.Stringer`).
    fn display(&self) -> Option<String> {
        None
    }
}

/// A plain struct: a type name and its fields in declaration order.
#[derive(Clone)]
pub struct Record {
    pub type_name: &'static str,
    pub pointer: bool,
    pub fields: Vec<(&'static str, Value)>,
}

impl Object for Record {
    fn type_name(&self) -> String {
        if self.pointer {
            format!("*{}", self.type_name)
        } else {
            self.type_name.to_string()
        }
    }
    fn field(&self, name: &str) -> Option<Value> {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
    }
    fn fields(&self) -> Vec<(&'static str, Value)> {
        self.fields.clone()
    }
    fn is_pointer(&self) -> bool {
        self.pointer
    }
}

impl Value {
    pub fn str(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    /// Go's type name of the value, as `%T` and the error messages print it.
    pub fn type_name(&self) -> String {
        match self {
            Value::Nil => "<nil>".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Float(_) => "float64".into(),
            Value::String(_) => "string".into(),
            Value::List(_) => "[]interface {}".into(),
            Value::Map(_) => "map[string]interface {}".into(),
            Value::Object(o) => o.type_name(),
            Value::Func(_) => "func(...interface {}) (interface {}, error)".into(),
        }
    }

    /// Go's truth: false, 0, nil and empty strings, lists and maps are false.
    pub fn is_true(&self) -> bool {
        match self {
            Value::Nil => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::String(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Map(m) => !m.is_empty(),
            Value::Object(_) | Value::Func(_) => true,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Converts JSON into values: integral numbers become `Int`, others `Float`.
    pub fn from_json(j: &serde_json::Value) -> Value {
        match j {
            serde_json::Value::Null => Value::Nil,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => {
                Value::Map(o.iter().map(|(k, v)| (k.clone(), Value::from_json(v))).collect())
            }
        }
    }

    /// Converts to JSON (objects become maps of their fields).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Nil | Value::Func(_) => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => {
                serde_json::Number::from_f64(*f).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null)
            }
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::List(l) => serde_json::Value::Array(l.iter().map(Value::to_json).collect()),
            Value::Map(m) => serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
            Value::Object(o) => {
                serde_json::Value::Object(o.fields().into_iter().map(|(k, v)| (k.to_string(), v.to_json())).collect())
            }
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.type_name(), crate::printf::sprint_value(self))
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Nil, Value::Nil) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b,
            (Value::String(a), Value::String(b)) => a == b,
            (Value::List(a), Value::List(b)) => a == b,
            (Value::Map(a), Value::Map(b)) => a == b,
            (Value::Object(a), Value::Object(b)) => Arc::ptr_eq(a, b),
            (Value::Func(a), Value::Func(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}
impl From<Vec<Value>> for Value {
    fn from(l: Vec<Value>) -> Value {
        Value::List(l)
    }
}
impl From<BTreeMap<String, Value>> for Value {
    fn from(m: BTreeMap<String, Value>) -> Value {
        Value::Map(m)
    }
}
