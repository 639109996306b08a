//! `x-kubernetes-validations`: compiling CEL rules against the schema and
//! evaluating them with `self` bound to a value.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, operators};
use cel::common::types::{CelInt, CelList, CelString};
use cel::objects::{Key, Map};
use cel::{Context, Env, ExecutionError, Value};
use serde_json::Value as Json;

use crate::check::{Ty, check_rule, escape_property};
use crate::schema::{RawRule, Schema};

/// A compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) rule: String,
    pub(crate) message: Option<String>,
    pub(crate) field_path: Option<String>,
    /// Uses `oldSelf`: only evaluated on updates, so never here.
    pub(crate) transition: bool,
    /// The parsed rule, macros expanded, operands of `&&`/`||` swapped (see
    /// [`cel_go_error_order`]).
    expr: IdedExpr,
}

/// Why a rule does not compile.
#[derive(Debug)]
pub(crate) struct CompileError {
    pub(crate) rule: String,
    pub(crate) schema_path: String,
    pub(crate) message: String,
}

/// The CEL environment of the API server, as far as these CRDs need it: the
/// standard library plus the Kubernetes library functions they call.
pub(crate) fn k8s_env() -> Result<Env, cel::DeclarationError> {
    let mut env = Env::stdlib();
    // Kubernetes enables cel-go's `ext.Strings`; the rules of the CRDs we
    // validate use `substring` and `split` from it.
    cel::add_member_overload!(env, fn substring_from: (CelString<'_>, CelInt) -> Result<CelString<'_>>,
        name = "substring", id = "string_substring_int")?;
    cel::add_member_overload!(env, fn substring_range: (CelString<'_>, CelInt, CelInt) -> Result<CelString<'_>>,
        name = "substring", id = "string_substring_int_int")?;
    cel::add_member_overload!(env, fn split: (CelString<'_>, CelString<'_>) -> CelList<'_>,
        name = "split", id = "string_split_string")?;
    cel::add_member_overload!(env, fn split_n: (CelString<'_>, CelString<'_>, CelInt) -> CelList<'_>,
        name = "split", id = "string_split_string_int")?;
    Ok(env)
}

fn out_of_range(idx: i64) -> ExecutionError {
    ExecutionError::function_error("substring", format!("index out of range: {idx}"))
}

/// `s.substring(start)`: code points from `start` to the end.
fn substring_from(
    this: &CelString<'_>,
    start: &CelInt,
) -> Result<CelString<'static>, ExecutionError> {
    let len = this.chars().count() as i64;
    if *start.inner() < 0 || *start.inner() > len {
        return Err(out_of_range(*start.inner()));
    }
    substring_range(this, start, &CelInt::from(len))
}

/// `s.substring(start, end)`, in code points, with cel-go's errors (checked
/// in cel-go's order).
fn substring_range(
    this: &CelString<'_>,
    start: &CelInt,
    end: &CelInt,
) -> Result<CelString<'static>, ExecutionError> {
    let (start, end) = (*start.inner(), *end.inner());
    let len = this.chars().count() as i64;
    if start > end {
        return Err(ExecutionError::function_error(
            "substring",
            format!("invalid substring range. start: {start}, end: {end}"),
        ));
    }
    if start < 0 || start > len {
        return Err(out_of_range(start));
    }
    if end > len {
        return Err(out_of_range(end));
    }
    let s: String = this
        .chars()
        .skip(start as usize)
        .take((end - start) as usize)
        .collect();
    Ok(s.into())
}

fn to_list(parts: Vec<&str>) -> CelList<'static> {
    parts
        .into_iter()
        .map(|p| Box::new(CelString::from(p.to_owned())) as Box<dyn cel::common::value::Val>)
        .collect::<Vec<_>>()
        .into()
}

/// `s.split(sep)`: Go's `strings.Split` (an empty separator splits into code
/// points).
fn split(this: &CelString<'_>, sep: &CelString<'_>) -> CelList<'static> {
    split_n(this, sep, &CelInt::from(-1))
}

/// `s.split(sep, n)`: Go's `strings.SplitN`.
fn split_n(this: &CelString<'_>, sep: &CelString<'_>, n: &CelInt) -> CelList<'static> {
    let s: &str = this;
    let sep: &str = sep;
    let n = *n.inner();
    if n == 0 {
        return to_list(Vec::new());
    }
    let parts: Vec<&str> = if sep.is_empty() {
        let chars: Vec<&str> = s
            .char_indices()
            .map(|(i, c)| &s[i..i + c.len_utf8()])
            .collect();
        match usize::try_from(n) {
            Ok(n) if n < chars.len() => {
                let mut parts = chars[..n - 1].to_vec();
                let consumed: usize = parts.iter().map(|p| p.len()).sum();
                parts.push(&s[consumed..]);
                parts
            }
            _ => chars,
        }
    } else {
        match usize::try_from(n) {
            Ok(n) => s.splitn(n, sep).collect(),
            Err(_) => s.split(sep).collect(),
        }
    };
    to_list(parts)
}

/// Compiles the rules of `s` (its `raw_rules`), type-checked against the
/// CEL type of `s`, and of every node below it.
pub(crate) fn compile_tree(env: &Env, s: &mut Schema, root: bool) -> Result<(), CompileError> {
    if !s.raw_rules.is_empty() {
        let self_ty = crate::check::decl_type(s, root);
        let mut rules = Vec::with_capacity(s.raw_rules.len());
        for raw in &s.raw_rules {
            rules.push(compile_rule(env, raw, &self_ty)?);
        }
        s.rules = rules;
    }
    for prop in s.properties.values_mut() {
        let embedded = prop.embedded;
        compile_tree(env, prop, embedded)?;
    }
    if let Some(crate::schema::Additional::Schema(ap)) = &mut s.additional {
        let embedded = ap.embedded;
        compile_tree(env, ap, embedded)?;
    }
    if let Some(items) = &mut s.items {
        let embedded = items.embedded;
        compile_tree(env, items, embedded)?;
    }
    Ok(())
}

fn compile_rule(env: &Env, raw: &RawRule, self_ty: &Ty) -> Result<Rule, CompileError> {
    let fail = |message: String| CompileError {
        rule: raw.rule.clone(),
        schema_path: raw.schema_path.clone(),
        message,
    };
    let program = env
        .compile(&raw.rule)
        .map_err(|e| fail(format!("syntax error: {e}")))?;
    check_rule(program.expression(), self_ty).map_err(fail)?;
    let transition = program.references().has_variable("oldSelf");
    let mut expr = program.expression().clone();
    cel_go_error_order(&mut expr);
    Ok(Rule {
        rule: raw.rule.clone(),
        message: raw.message.clone(),
        field_path: raw.field_path.clone(),
        transition,
        expr,
    })
}

/// Swaps the operands of every `&&` and `||` written in the rule.
///
/// Both libraries give these operators the commutative semantics of CEL
/// (`error || true` is `true`, `error && false` is `false`), but when both
/// operands fail cel-go reports the error of the left one and cel-rust that
/// of the right one. Swapping makes cel-rust report what the API server
/// reports (e.g. `no such key: certificateRefs` for
/// `size(self.certificateRefs) > 0 || size(self.options) > 0`) and changes
/// nothing else. The `accu && x` / `accu || x` steps of `all()`/`exists()`
/// keep their order: cel-rust recognizes them to fold errors as cel-go does.
fn cel_go_error_order(e: &mut IdedExpr) {
    match &mut e.expr {
        Expr::Call(call) => {
            if let Some(t) = &mut call.target {
                cel_go_error_order(t);
            }
            for a in &mut call.args {
                cel_go_error_order(a);
            }
            let logical =
                call.func_name == operators::LOGICAL_AND || call.func_name == operators::LOGICAL_OR;
            if logical && call.target.is_none() && call.args.len() == 2 {
                call.args.swap(0, 1);
            }
        }
        Expr::Comprehension(c) => {
            cel_go_error_order(&mut c.iter_range);
            cel_go_error_order(&mut c.accu_init);
            cel_go_error_order(&mut c.loop_cond);
            cel_go_error_order(&mut c.result);
            let accu = c.accu_var.clone();
            match &mut c.loop_step.expr {
                Expr::Call(call)
                    if call.target.is_none()
                        && matches!(
                            call.args.first().map(|a| &a.expr),
                            Some(Expr::Ident(name)) if *name == accu
                        ) =>
                {
                    for a in &mut call.args {
                        cel_go_error_order(a);
                    }
                }
                _ => cel_go_error_order(&mut c.loop_step),
            }
        }
        Expr::Select(sel) => cel_go_error_order(&mut sel.operand),
        Expr::List(list) => {
            for el in &mut list.elements {
                cel_go_error_order(el);
            }
        }
        Expr::Map(map) => {
            for entry in &mut map.entries {
                match &mut entry.expr {
                    EntryExpr::MapEntry(me) => {
                        cel_go_error_order(&mut me.key);
                        cel_go_error_order(&mut me.value);
                    }
                    EntryExpr::StructField(f) => cel_go_error_order(&mut f.value),
                }
            }
        }
        Expr::Struct(st) => {
            for entry in &mut st.entries {
                if let EntryExpr::StructField(f) = &mut entry.expr {
                    cel_go_error_order(&mut f.value);
                }
            }
        }
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => {}
    }
}

/// What evaluating a rule gave, when it did not pass.
pub(crate) enum Failure {
    /// The rule evaluated to false.
    False,
    /// Evaluation failed; the text is the error as the API server words it.
    Error(String),
}

impl Rule {
    /// Evaluates the rule with `self` bound to `value` (of schema `s`).
    pub(crate) fn eval(
        &self,
        env: &Arc<Env>,
        value: &Json,
        s: &Schema,
        root: bool,
    ) -> Result<(), Failure> {
        if let Some(e) = invalid_data(value, s) {
            return Err(Failure::Error(e));
        }
        let mut ctx = Context::with_env(Arc::clone(env));
        ctx.add_variable_from_value("self", to_cel(env, value, Some(s), root));
        match Value::resolve(&self.expr, &ctx) {
            Ok(Value::Bool(true)) => Ok(()),
            Ok(Value::Bool(false)) => Err(Failure::False),
            Ok(other) => Err(Failure::Error(format!(
                "expected a bool, got {:?}",
                other.type_of().to_string()
            ))),
            Err(e) => Err(Failure::Error(runtime_error(&e))),
        }
    }

    /// The rule's message, or the rule itself when it has none
    /// (`ruleErrorString` in the API server).
    pub(crate) fn error_string(&self) -> &str {
        self.message.as_deref().unwrap_or(&self.rule).trim()
    }
}

/// Go's `%T` of a decoded JSON value.
fn go_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "<nil>",
        Json::Bool(_) => "bool",
        Json::Number(n) if n.is_i64() => "int64",
        Json::Number(_) => "float64",
        Json::String(_) => "string",
        Json::Array(_) => "[]interface {}",
        Json::Object(_) => "map[string]interface {}",
    }
}

/// When `self` does not have the schema's type, the API server binds an
/// error value (`UnstructuredToVal`), so the rule fails with this error.
fn invalid_data(v: &Json, s: &Schema) -> Option<String> {
    if s.int_or_string {
        return match v {
            Json::String(_) => None,
            Json::Number(n) if n.is_i64() || n.is_u64() => None,
            _ => Some(
                "invalid data, expected XIntOrString value to be either a string or integer"
                    .to_owned(),
            ),
        };
    }
    let got = go_type(v);
    match s.ty.as_deref()? {
        "object" if !v.is_object() => {
            Some("invalid data, expected a map for the provided schema with type=object".to_owned())
        }
        "array" if !v.is_array() => Some(
            "invalid data, expected an array for the provided schema with type=array".to_owned(),
        ),
        "string" if !v.is_string() => Some(format!("invalid data, expected string, got {got}")),
        "number" if !v.is_number() => Some(format!("invalid data, expected float, got {got}")),
        "integer" => {
            let integral = match v {
                Json::Number(n) => {
                    n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
                }
                _ => false,
            };
            (!integral).then(|| format!("invalid data, expected int, got {got}"))
        }
        "boolean" if !v.is_boolean() => Some(format!("invalid data, expected bool, got {got}")),
        _ => None,
    }
}

/// A runtime error worded as cel-go words it.
fn runtime_error(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(k) => format!("no such key: {k}"),
        ExecutionError::FunctionError { message, .. } => message.clone(),
        ExecutionError::IndexOutOfBounds(v) => match v {
            Value::Int(i) => format!("index out of bounds: {i}"),
            Value::UInt(i) => format!("index out of bounds: {i}"),
            other => format!("index out of bounds: {other:?}"),
        },
        ExecutionError::DivisionByZero(_) => "division by zero".to_owned(),
        ExecutionError::RemainderByZero(_) => "modulus by zero".to_owned(),
        ExecutionError::Overflow(..) => "integer overflow".to_owned(),
        ExecutionError::NoSuchOverload(_)
        | ExecutionError::UnsupportedBinaryOperator(..)
        | ExecutionError::ValuesNotComparable(..)
        | ExecutionError::UnexpectedType { .. }
        | ExecutionError::UnsupportedTargetType { .. }
        | ExecutionError::NotSupportedAsMethod { .. }
        | ExecutionError::UnsupportedIndex(..) => "no such overload".to_owned(),
        other => other.to_string(),
    }
}

/// `s` as the CEL value the API server binds (`UnstructuredToVal`): object
/// fields under their escaped names, `additionalProperties` maps with their
/// keys as they are, `number` fields as doubles, `date-time`/`duration`
/// strings as timestamps/durations.
fn to_cel(env: &Arc<Env>, v: &Json, s: Option<&Schema>, root: bool) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            let double = s.is_some_and(|s| s.ty.as_deref() == Some("number"));
            if !double {
                if let Some(i) = n.as_i64() {
                    return Value::Int(i);
                }
                if let Some(f) = n.as_f64() {
                    let integer = s.is_some_and(|s| s.ty.as_deref() == Some("integer"));
                    if integer && f.fract() == 0.0 && f.abs() < 9.2e18 {
                        return Value::Int(f as i64);
                    }
                }
            }
            Value::Float(n.as_f64().unwrap_or(f64::NAN))
        }
        Json::String(text) => {
            let converter = match s.and_then(|s| s.format.as_deref()) {
                _ if s.is_some_and(|s| s.int_or_string) => None,
                Some("date" | "date-time") => Some("timestamp"),
                Some("duration") => Some("duration"),
                _ => None,
            };
            if let Some(function) = converter
                && let Some(converted) = convert_string(env, function, text)
            {
                return converted;
            }
            Value::String(Arc::new(text.clone()))
        }
        Json::Array(items) => {
            let item_schema = s.and_then(|s| s.items.as_deref());
            let embedded = item_schema.is_some_and(|i| i.embedded);
            Value::List(Arc::new(
                items
                    .iter()
                    .map(|i| to_cel(env, i, item_schema, embedded))
                    .collect(),
            ))
        }
        Json::Object(obj) => {
            let mut map: HashMap<Key, Value> = HashMap::with_capacity(obj.len());
            match s {
                Some(s) if s.additional_schema().is_some() => {
                    let ap = s.additional_schema();
                    let embedded = ap.is_some_and(|a| a.embedded);
                    for (k, val) in obj {
                        map.insert(Key::from(k.as_str()), to_cel(env, val, ap, embedded));
                    }
                }
                Some(s) if !s.properties.is_empty() || root => {
                    for (k, val) in obj {
                        let meta = root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata");
                        let Some(prop) = s.properties.get(k) else {
                            if meta {
                                map.insert(Key::from(k.as_str()), to_cel(env, val, None, false));
                            }
                            continue;
                        };
                        if let Some(name) = escape_property(k) {
                            map.insert(
                                Key::from(name),
                                to_cel(env, val, Some(prop), prop.embedded),
                            );
                        }
                    }
                }
                _ => {
                    for (k, val) in obj {
                        map.insert(Key::from(k.as_str()), to_cel(env, val, None, false));
                    }
                }
            }
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// `timestamp(text)` / `duration(text)`, or `None` when CEL cannot parse it.
fn convert_string(env: &Arc<Env>, function: &str, text: &str) -> Option<Value> {
    let program = env.compile(&format!("{function}(s)")).ok()?;
    let mut ctx = Context::with_env(Arc::clone(env));
    ctx.add_variable_from_value("s", text.to_owned());
    program.execute(&ctx).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(expr: &str) -> Result<Value, String> {
        let env = Arc::new(k8s_env().unwrap());
        let program = env.compile(expr).unwrap();
        let ctx = Context::with_env(Arc::clone(&env));
        program.execute(&ctx).map_err(|e| runtime_error(&e))
    }

    #[test]
    fn substring_as_cel_go() {
        assert_eq!(eval("'abc'.substring(1)"), Ok(Value::from("bc")));
        assert_eq!(eval("'abc'.substring(3)"), Ok(Value::from("")));
        assert_eq!(eval("'héllo'.substring(1, 2)"), Ok(Value::from("é")));
        assert_eq!(
            eval("'abc'.substring(4)"),
            Err("index out of range: 4".to_owned())
        );
        assert_eq!(
            eval("'unix://'.substring(7, 8)"),
            Err("index out of range: 8".to_owned())
        );
        assert_eq!(
            eval("'abc'.substring(2, 1)"),
            Err("invalid substring range. start: 2, end: 1".to_owned())
        );
        assert_eq!(
            eval("'abc'.substring(-1, 1)"),
            Err("index out of range: -1".to_owned())
        );
    }

    #[test]
    fn split_as_go_strings_split() {
        let list =
            |items: &[&str]| Value::List(Arc::new(items.iter().map(|s| Value::from(*s)).collect()));
        assert_eq!(eval("'a/b/c'.split('/')"), Ok(list(&["a", "b", "c"])));
        assert_eq!(eval("'a/b/c'.split('/', 2)"), Ok(list(&["a", "b/c"])));
        assert_eq!(eval("'a/b/c'.split('/', 0)"), Ok(list(&[])));
        assert_eq!(eval("'a/b/c'.split('/', -1)"), Ok(list(&["a", "b", "c"])));
        assert_eq!(eval("''.split('/')"), Ok(list(&[""])));
        assert_eq!(eval("'héj'.split('')"), Ok(list(&["h", "é", "j"])));
        assert_eq!(eval("'héj'.split('', 2)"), Ok(list(&["h", "éj"])));
        assert_eq!(eval("'noslash'.split('/')[0].size()"), Ok(Value::Int(7)));
    }

    #[test]
    fn logical_operators_report_the_left_error_as_cel_go() {
        let env = k8s_env().unwrap();
        let rule = Rule {
            rule: String::new(),
            message: None,
            field_path: None,
            transition: false,
            expr: {
                let mut e = env
                    .compile("size(self.a) > 0 || size(self.b) > 0")
                    .unwrap()
                    .expression()
                    .clone();
                cel_go_error_order(&mut e);
                e
            },
        };
        let env = Arc::new(env);
        let schema = Schema::default();
        let eval = |v: Json| match rule.eval(&env, &v, &schema, false) {
            Ok(()) => "ok".to_owned(),
            Err(Failure::False) => "false".to_owned(),
            Err(Failure::Error(e)) => e,
        };
        assert_eq!(eval(serde_json::json!({})), "no such key: a");
        assert_eq!(eval(serde_json::json!({"b": [1]})), "ok");
        assert_eq!(eval(serde_json::json!({"a": [1]})), "ok");
        assert_eq!(eval(serde_json::json!({"a": [], "b": []})), "false");
        assert_eq!(eval(serde_json::json!({"a": []})), "no such key: b");
    }
}
