//! A static type checker for CEL validation rules.
//!
//! cel-rust only parses an expression when it "compiles" it; functions and
//! fields are looked up when it runs. The API server instead type-checks each
//! rule against the schema of the node it sits on when the CRD is created, so
//! a misspelled field or an unknown function is an error up front (and a
//! `has()` on a misspelled field is not silently `false`). This module does
//! that check: it derives the CEL type of `self` from the schema the way the
//! API server does (`SchemaDeclType`) and walks the expression.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue, operators};

use crate::schema::Schema;

/// A CEL type, as far as the checker needs to know it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Ty {
    Dyn,
    Null,
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Duration,
    Timestamp,
    Type,
    List(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    /// A schema object with `properties`: only those (escaped) fields exist.
    Object(Arc<BTreeMap<String, Ty>>),
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Dyn => f.write_str("dyn"),
            Ty::Null => f.write_str("null_type"),
            Ty::Bool => f.write_str("bool"),
            Ty::Int => f.write_str("int"),
            Ty::Uint => f.write_str("uint"),
            Ty::Double => f.write_str("double"),
            Ty::String => f.write_str("string"),
            Ty::Bytes => f.write_str("bytes"),
            Ty::Duration => f.write_str("google.protobuf.Duration"),
            Ty::Timestamp => f.write_str("google.protobuf.Timestamp"),
            Ty::Type => f.write_str("type"),
            Ty::List(e) => write!(f, "list({e})"),
            Ty::Map(k, v) => write!(f, "map({k}, {v})"),
            Ty::Object(_) => f.write_str("object"),
        }
    }
}

/// The type identifiers of standard CEL (`type(x) == string`).
const TYPE_NAMES: &[&str] = &[
    "bool",
    "bytes",
    "double",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];

/// CEL reserved words: a property with one of these names is reached as
/// `__name__` (Kubernetes `apiservercel.Escape`).
const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// The name under which a property is visible in CEL, or `None` when it is
/// not accessible at all (Kubernetes `apiservercel.Escape`).
pub(crate) fn escape_property(name: &str) -> Option<String> {
    let first = name.chars().next()?;
    if first.is_ascii_digit() {
        return None;
    }
    if RESERVED.contains(&name) {
        return Some(format!("__{name}__"));
    }
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '_' if chars.peek() == Some(&'_') => {
                chars.next();
                out.push_str("__underscores__");
            }
            '.' => out.push_str("__dot__"),
            '-' => out.push_str("__dash__"),
            '/' => out.push_str("__slash__"),
            c if c.is_ascii_alphanumeric() || c == '_' => out.push(c),
            _ => return None,
        }
    }
    Some(out)
}

/// The CEL type of values of `s` (Kubernetes `SchemaDeclType`). `root` adds
/// the fields every resource root has (`apiVersion`, `kind`,
/// `metadata.name`, `metadata.generateName`).
pub(crate) fn decl_type(s: &Schema, root: bool) -> Ty {
    if s.int_or_string {
        return Ty::Dyn;
    }
    match s.ty.as_deref() {
        Some("array") => match &s.items {
            Some(items) => Ty::List(Box::new(decl_type(items, items.embedded))),
            None => Ty::Dyn,
        },
        Some("object") => {
            if let Some(ap) = s.additional_schema() {
                return Ty::Map(Box::new(Ty::String), Box::new(decl_type(ap, ap.embedded)));
            }
            let mut fields = BTreeMap::new();
            for (name, prop) in &s.properties {
                if let Some(escaped) = escape_property(name) {
                    fields.insert(escaped, decl_type(prop, prop.embedded));
                }
            }
            if root {
                fields.insert("apiVersion".into(), Ty::String);
                fields.insert("kind".into(), Ty::String);
                let mut meta = BTreeMap::new();
                meta.insert("name".to_owned(), Ty::String);
                meta.insert("generateName".to_owned(), Ty::String);
                fields.insert("metadata".into(), Ty::Object(Arc::new(meta)));
            }
            Ty::Object(Arc::new(fields))
        }
        Some("string") => match s.format.as_deref() {
            Some("date" | "date-time") => Ty::Timestamp,
            Some("duration") => Ty::Duration,
            _ => Ty::String,
        },
        Some("boolean") => Ty::Bool,
        Some("number") => Ty::Double,
        Some("integer") => Ty::Int,
        _ => Ty::Dyn,
    }
}

/// Type-checks a rule with `self` (and `oldSelf`) of type `self_ty`; the
/// rule must evaluate to a bool.
pub(crate) fn check_rule(expr: &IdedExpr, self_ty: &Ty) -> Result<(), String> {
    let mut checker = Checker {
        scope: vec![
            ("self".to_owned(), self_ty.clone()),
            ("oldSelf".to_owned(), self_ty.clone()),
        ],
    };
    let t = checker.check(expr)?;
    match t {
        Ty::Bool | Ty::Dyn => Ok(()),
        other => Err(format!(
            "cel expression must evaluate to a bool, not {other}"
        )),
    }
}

struct Checker {
    scope: Vec<(String, Ty)>,
}

fn is_num(t: &Ty) -> bool {
    matches!(t, Ty::Int | Ty::Uint | Ty::Double)
}

/// `t` may be passed where `want` is expected.
fn fits(t: &Ty, want: &Ty) -> bool {
    t == want || *t == Ty::Dyn || *want == Ty::Dyn
}

/// The common type of two branches (of `?:`, or elements of a literal).
fn join(a: &Ty, b: &Ty) -> Option<Ty> {
    match (a, b) {
        _ if a == b => Some(a.clone()),
        (Ty::Dyn, _) | (_, Ty::Dyn) => Some(Ty::Dyn),
        (Ty::Null, o) | (o, Ty::Null) => Some(o.clone()),
        (Ty::List(x), Ty::List(y)) => Some(Ty::List(Box::new(join(x, y).unwrap_or(Ty::Dyn)))),
        (Ty::Map(k1, v1), Ty::Map(k2, v2)) => Some(Ty::Map(
            Box::new(join(k1, k2).unwrap_or(Ty::Dyn)),
            Box::new(join(v1, v2).unwrap_or(Ty::Dyn)),
        )),
        (Ty::Object(_), Ty::Object(_)) => Some(Ty::Dyn),
        _ => None,
    }
}

/// Whether `==` between values of these types type-checks.
fn eq_compatible(a: &Ty, b: &Ty) -> bool {
    match (a, b) {
        (Ty::Dyn, _) | (_, Ty::Dyn) | (Ty::Null, _) | (_, Ty::Null) => true,
        _ if is_num(a) && is_num(b) => true,
        (Ty::List(x), Ty::List(y)) => eq_compatible(x, y),
        (Ty::Map(k1, v1), Ty::Map(k2, v2)) => eq_compatible(k1, k2) && eq_compatible(v1, v2),
        (Ty::Object(_), Ty::Object(_)) => true,
        _ => a == b,
    }
}

fn orderable(a: &Ty, b: &Ty) -> bool {
    match (a, b) {
        (Ty::Dyn, _) | (_, Ty::Dyn) => true,
        _ if is_num(a) && is_num(b) => true,
        _ => {
            a == b
                && matches!(
                    a,
                    Ty::String | Ty::Bytes | Ty::Bool | Ty::Duration | Ty::Timestamp
                )
        }
    }
}

fn no_overload(name: &str, target: Option<&Ty>, args: &[Ty]) -> String {
    let args = args
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match target {
        Some(t) => format!("found no matching overload for '{name}' applied to '{t}.({args})'"),
        None => format!("found no matching overload for '{name}' applied to '({args})'"),
    }
}

fn arith(op: &str, a: &Ty, b: &Ty) -> Option<Ty> {
    use Ty::*;
    if *a == Dyn || *b == Dyn {
        return Some(Dyn);
    }
    match op {
        operators::ADD => match (a, b) {
            (Int, Int) | (Uint, Uint) | (Double, Double) | (String, String) | (Bytes, Bytes) => {
                Some(a.clone())
            }
            (List(x), List(y)) => Some(List(Box::new(join(x, y).unwrap_or(Dyn)))),
            (Duration, Duration) => Some(Duration),
            (Timestamp, Duration) | (Duration, Timestamp) => Some(Timestamp),
            _ => None,
        },
        operators::SUBSTRACT => match (a, b) {
            (Int, Int) | (Uint, Uint) | (Double, Double) => Some(a.clone()),
            (Duration, Duration) | (Timestamp, Timestamp) => Some(Duration),
            (Timestamp, Duration) => Some(Timestamp),
            _ => None,
        },
        operators::MULTIPLY | operators::DIVIDE => match (a, b) {
            (Int, Int) | (Uint, Uint) | (Double, Double) => Some(a.clone()),
            _ => None,
        },
        operators::MODULO => match (a, b) {
            (Int, Int) | (Uint, Uint) => Some(a.clone()),
            _ => None,
        },
        _ => None,
    }
}

impl Checker {
    fn lookup(&self, name: &str) -> Option<Ty> {
        self.scope
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
    }

    fn check(&mut self, e: &IdedExpr) -> Result<Ty, String> {
        match &e.expr {
            Expr::Unspecified => Err("unsupported (empty) expression".to_owned()),
            Expr::Literal(l) => Ok(match l {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::Uint,
            }),
            Expr::Ident(name) => self
                .lookup(name)
                .or_else(|| TYPE_NAMES.contains(&name.as_str()).then_some(Ty::Type))
                .ok_or_else(|| format!("undeclared reference to '{name}' (in container '')")),
            Expr::Select(sel) => {
                let t = self.check(&sel.operand)?;
                let field = select_field(&t, &sel.field)?;
                Ok(if sel.test { Ty::Bool } else { field })
            }
            Expr::List(list) => {
                if !list.optional_indices.is_empty() {
                    return Err("optional list elements are not supported".to_owned());
                }
                // Kubernetes enables `HomogeneousAggregateLiterals`.
                let mut elem: Option<Ty> = None;
                for el in &list.elements {
                    let t = self.check(el)?;
                    elem = Some(match elem {
                        None => t,
                        Some(prev) => join(&prev, &t)
                            .ok_or_else(|| format!("expected type '{prev}' but found '{t}'"))?,
                    });
                }
                Ok(Ty::List(Box::new(elem.unwrap_or(Ty::Dyn))))
            }
            Expr::Map(map) => {
                let mut key: Option<Ty> = None;
                let mut val: Option<Ty> = None;
                for entry in &map.entries {
                    let EntryExpr::MapEntry(me) = &entry.expr else {
                        return Err("struct fields in a map literal".to_owned());
                    };
                    if me.optional {
                        return Err("optional map entries are not supported".to_owned());
                    }
                    let k = self.check(&me.key)?;
                    if !matches!(k, Ty::String | Ty::Int | Ty::Uint | Ty::Bool | Ty::Dyn) {
                        return Err(format!("unsupported map key type {k}"));
                    }
                    let v = self.check(&me.value)?;
                    key = Some(match key {
                        None => k,
                        Some(p) => join(&p, &k)
                            .ok_or_else(|| format!("expected type '{p}' but found '{k}'"))?,
                    });
                    val = Some(match val {
                        None => v,
                        Some(p) => join(&p, &v)
                            .ok_or_else(|| format!("expected type '{p}' but found '{v}'"))?,
                    });
                }
                Ok(Ty::Map(
                    Box::new(key.unwrap_or(Ty::Dyn)),
                    Box::new(val.unwrap_or(Ty::Dyn)),
                ))
            }
            Expr::Struct(s) => Err(format!(
                "undeclared reference to '{}': message construction is not supported",
                s.type_name
            )),
            Expr::Comprehension(c) => {
                let range = self.check(&c.iter_range)?;
                let (first, second) = match &range {
                    Ty::List(e) => {
                        if c.iter_var2.is_some() {
                            (Ty::Int, (**e).clone())
                        } else {
                            ((**e).clone(), Ty::Dyn)
                        }
                    }
                    Ty::Map(k, v) => ((**k).clone(), (**v).clone()),
                    Ty::Dyn => (Ty::Dyn, Ty::Dyn),
                    other => {
                        return Err(format!(
                            "expression of type '{other}' cannot be range of a comprehension \
                             (must be list, map, or dynamic)"
                        ));
                    }
                };
                let accu = self.check(&c.accu_init)?;
                let base = self.scope.len();
                self.scope.push((c.accu_var.clone(), accu));
                self.scope.push((c.iter_var.clone(), first));
                if let Some(v2) = &c.iter_var2 {
                    self.scope.push((v2.clone(), second));
                }
                let cond = self.check(&c.loop_cond);
                let step = self.check(&c.loop_step);
                self.scope.truncate(base + 1);
                let result = self.check(&c.result);
                self.scope.truncate(base);
                let cond = cond?;
                step?;
                if !fits(&cond, &Ty::Bool) {
                    return Err(format!("comprehension condition must be bool, not {cond}"));
                }
                result
            }
            Expr::Call(call) => self.check_call(call),
        }
    }

    fn check_call(&mut self, call: &CallExpr) -> Result<Ty, String> {
        let name = call.func_name.as_str();
        let target = match &call.target {
            Some(t) => Some(self.check(t)?),
            None => None,
        };
        let args = call
            .args
            .iter()
            .map(|a| self.check(a))
            .collect::<Result<Vec<_>, _>>()?;
        let fail = || no_overload(name, target.as_ref(), &args);
        if let Some(t) = &target {
            return self.check_member(name, t, &args, call);
        }
        match (name, args.as_slice()) {
            (operators::LOGICAL_AND | operators::LOGICAL_OR, [a, b]) => {
                if fits(a, &Ty::Bool) && fits(b, &Ty::Bool) {
                    Ok(Ty::Bool)
                } else {
                    Err(fail())
                }
            }
            (operators::LOGICAL_NOT, [a]) => {
                if fits(a, &Ty::Bool) {
                    Ok(Ty::Bool)
                } else {
                    Err(fail())
                }
            }
            (operators::NOT_STRICTLY_FALSE, [_]) => Ok(Ty::Bool),
            (operators::CONDITIONAL, [c, a, b]) => {
                if !fits(c, &Ty::Bool) {
                    return Err(fail());
                }
                join(a, b).ok_or_else(fail)
            }
            (operators::NEGATE, [a]) => match a {
                Ty::Int | Ty::Double | Ty::Dyn | Ty::Duration => Ok(a.clone()),
                _ => Err(fail()),
            },
            (
                operators::ADD
                | operators::SUBSTRACT
                | operators::MULTIPLY
                | operators::DIVIDE
                | operators::MODULO,
                [a, b],
            ) => arith(name, a, b).ok_or_else(fail),
            (operators::EQUALS | operators::NOT_EQUALS, [a, b]) => {
                if eq_compatible(a, b) {
                    Ok(Ty::Bool)
                } else {
                    Err(fail())
                }
            }
            (
                operators::LESS
                | operators::LESS_EQUALS
                | operators::GREATER
                | operators::GREATER_EQUALS,
                [a, b],
            ) => {
                if orderable(a, b) {
                    Ok(Ty::Bool)
                } else {
                    Err(fail())
                }
            }
            (operators::INDEX, [c, i]) => match c {
                Ty::List(e) if matches!(i, Ty::Int | Ty::Uint | Ty::Dyn) => Ok((**e).clone()),
                Ty::Map(k, v) if fits(i, k) => Ok((**v).clone()),
                Ty::Object(fields) if fits(i, &Ty::String) => {
                    // `self['field']` on an object: the field's type when
                    // the key is a literal, else dyn.
                    if let Some(Expr::Literal(LiteralValue::String(s))) =
                        call.args.get(1).map(|a| &a.expr)
                    {
                        let key: &str = s;
                        fields
                            .get(key)
                            .cloned()
                            .ok_or_else(|| format!("undefined field '{key}'"))
                    } else {
                        Ok(Ty::Dyn)
                    }
                }
                Ty::Dyn => Ok(Ty::Dyn),
                _ => Err(fail()),
            },
            (operators::IN, [_, c]) => match c {
                Ty::List(_) | Ty::Map(_, _) | Ty::Dyn => Ok(Ty::Bool),
                _ => Err(fail()),
            },
            ("size", [a]) => match a {
                Ty::String | Ty::Bytes | Ty::List(_) | Ty::Map(_, _) | Ty::Dyn => Ok(Ty::Int),
                _ => Err(fail()),
            },
            ("matches", [s, p]) => {
                if fits(s, &Ty::String) && fits(p, &Ty::String) {
                    check_regex_literal(call.args.get(1))?;
                    Ok(Ty::Bool)
                } else {
                    Err(fail())
                }
            }
            ("int", [a]) => match a {
                Ty::Int | Ty::Uint | Ty::Double | Ty::String | Ty::Timestamp | Ty::Dyn => {
                    Ok(Ty::Int)
                }
                _ => Err(fail()),
            },
            ("uint", [a]) => match a {
                Ty::Int | Ty::Uint | Ty::Double | Ty::String | Ty::Dyn => Ok(Ty::Uint),
                _ => Err(fail()),
            },
            ("double", [a]) => match a {
                Ty::Int | Ty::Uint | Ty::Double | Ty::String | Ty::Dyn => Ok(Ty::Double),
                _ => Err(fail()),
            },
            ("string", [a]) => match a {
                Ty::Int
                | Ty::Uint
                | Ty::Double
                | Ty::String
                | Ty::Bool
                | Ty::Bytes
                | Ty::Timestamp
                | Ty::Duration
                | Ty::Dyn => Ok(Ty::String),
                _ => Err(fail()),
            },
            ("bool", [a]) => match a {
                Ty::Bool | Ty::String | Ty::Dyn => Ok(Ty::Bool),
                _ => Err(fail()),
            },
            ("duration", [a]) => match a {
                Ty::String | Ty::Duration | Ty::Dyn => Ok(Ty::Duration),
                _ => Err(fail()),
            },
            ("timestamp", [a]) => match a {
                Ty::String | Ty::Timestamp | Ty::Int | Ty::Dyn => Ok(Ty::Timestamp),
                _ => Err(fail()),
            },
            ("dyn", [_]) => Ok(Ty::Dyn),
            ("type", [_]) => Ok(Ty::Type),
            (
                "size" | "matches" | "int" | "uint" | "double" | "string" | "bool" | "duration"
                | "timestamp" | "dyn" | "type",
                _,
            ) => Err(fail()),
            _ if name.starts_with('_') || name.starts_with('@') || name.starts_with('!') => {
                Err(fail())
            }
            _ => Err(format!(
                "undeclared reference to '{name}' (in container '')"
            )),
        }
    }

    fn check_member(
        &mut self,
        name: &str,
        target: &Ty,
        args: &[Ty],
        call: &CallExpr,
    ) -> Result<Ty, String> {
        let fail = || no_overload(name, Some(target), args);
        let string_target = fits(target, &Ty::String);
        match (name, args) {
            ("size", []) => match target {
                Ty::String | Ty::Bytes | Ty::List(_) | Ty::Map(_, _) | Ty::Dyn => Ok(Ty::Int),
                _ => Err(fail()),
            },
            ("contains" | "startsWith" | "endsWith", [a]) => {
                if string_target && fits(a, &Ty::String) {
                    Ok(Ty::Bool)
                } else {
                    Err(fail())
                }
            }
            ("matches", [a]) => {
                if string_target && fits(a, &Ty::String) {
                    check_regex_literal(call.args.first())?;
                    Ok(Ty::Bool)
                } else {
                    Err(fail())
                }
            }
            // Kubernetes strings library (cel-go ext.Strings).
            ("substring", [a]) => {
                if string_target && fits(a, &Ty::Int) {
                    Ok(Ty::String)
                } else {
                    Err(fail())
                }
            }
            ("substring", [a, b]) => {
                if string_target && fits(a, &Ty::Int) && fits(b, &Ty::Int) {
                    Ok(Ty::String)
                } else {
                    Err(fail())
                }
            }
            ("split", [a]) => {
                if string_target && fits(a, &Ty::String) {
                    Ok(Ty::List(Box::new(Ty::String)))
                } else {
                    Err(fail())
                }
            }
            ("split", [a, b]) => {
                if string_target && fits(a, &Ty::String) && fits(b, &Ty::Int) {
                    Ok(Ty::List(Box::new(Ty::String)))
                } else {
                    Err(fail())
                }
            }
            (
                "size" | "contains" | "startsWith" | "endsWith" | "matches" | "substring" | "split",
                _,
            ) => Err(fail()),
            _ => Err(format!(
                "undeclared reference to '{name}' (in container '')"
            )),
        }
    }
}

fn select_field(t: &Ty, field: &str) -> Result<Ty, String> {
    match t {
        Ty::Object(fields) => fields
            .get(field)
            .cloned()
            .ok_or_else(|| format!("undefined field '{field}'")),
        Ty::Map(k, v) if fits(k, &Ty::String) => Ok((**v).clone()),
        Ty::Dyn => Ok(Ty::Dyn),
        other => Err(format!("type '{other}' does not support field selection")),
    }
}

/// A constant regular expression must compile (cel-go compiles constant
/// `matches` patterns when the program is built).
fn check_regex_literal(arg: Option<&IdedExpr>) -> Result<(), String> {
    if let Some(IdedExpr {
        expr: Expr::Literal(LiteralValue::String(p)),
        ..
    }) = arg
    {
        let p: &str = p;
        regex::Regex::new(p).map_err(|e| format!("invalid regular expression {p:?}: {e}"))?;
    }
    Ok(())
}
