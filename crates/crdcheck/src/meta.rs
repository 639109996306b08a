//! ObjectMeta checks of a create (`ValidateObjectMetaAccessor` with
//! `NameIsDNSSubdomain`), with the apimachinery validation messages.

use serde_json::{Map, Value as Json};

use crate::Violation;
use crate::structural::child;

fn push(out: &mut Vec<Violation>, path: &str, message: impl Into<String>) {
    out.push(Violation {
        path: path.to_owned(),
        message: message.into(),
    });
}

fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut out = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{e}', "));
    }
    out.push_str(&format!("regex used for validation is '{fmt}')"));
    out
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => edge(f) && edge(l) && b.iter().all(|c| edge(c) || *c == b'-'),
        _ => false,
    }
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// apimachinery `IsDNS1123Label`.
pub(crate) fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !is_label(s) {
        errs.push(regex_error(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
             '-', and must start and end with an alphanumeric character",
            DNS1123_LABEL_FMT,
            &["my-name", "123-abc"],
        ));
    }
    errs
}

/// apimachinery `IsDNS1123Subdomain`.
pub(crate) fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(max_len_error(253));
    }
    if s.is_empty() || !s.split('.').all(is_label) {
        errs.push(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character",
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// apimachinery `IsQualifiedName`: an optional DNS subdomain prefix and '/',
/// then a name of at most 63 characters.
pub(crate) fn qualified_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                errs.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. \
                 'example.com/MyName')",
                regex_error(
                    QUALIFIED_NAME_MSG,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_error(63)));
    }
    if !is_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// apimachinery `IsValidLabelValue`.
pub(crate) fn label_value(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !s.is_empty() && !is_qualified_name_part(s) {
        errs.push(regex_error(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', \
             '_' or '.', and must start and end with an alphanumeric character",
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// The ObjectMeta fields, with the JSON shape each must have.
#[derive(Clone, Copy)]
enum Shape {
    Str,
    Int,
    StrMap,
    StrList,
    ObjList,
}

const FIELDS: &[(&str, Shape)] = &[
    ("name", Shape::Str),
    ("generateName", Shape::Str),
    ("namespace", Shape::Str),
    ("selfLink", Shape::Str),
    ("uid", Shape::Str),
    ("resourceVersion", Shape::Str),
    ("generation", Shape::Int),
    ("creationTimestamp", Shape::Str),
    ("deletionTimestamp", Shape::Str),
    ("deletionGracePeriodSeconds", Shape::Int),
    ("labels", Shape::StrMap),
    ("annotations", Shape::StrMap),
    ("ownerReferences", Shape::ObjList),
    ("finalizers", Shape::StrList),
    ("managedFields", Shape::ObjList),
];

fn shape_ok(v: &Json, shape: Shape) -> Result<(), &'static str> {
    if v.is_null() {
        return Ok(());
    }
    let ok = match shape {
        Shape::Str => v.is_string(),
        Shape::Int => v.is_i64() || v.is_u64(),
        Shape::StrMap => v
            .as_object()
            .is_some_and(|m| m.values().all(Json::is_string)),
        Shape::StrList => v.as_array().is_some_and(|a| a.iter().all(Json::is_string)),
        Shape::ObjList => v.as_array().is_some_and(|a| a.iter().all(Json::is_object)),
    };
    if ok {
        Ok(())
    } else {
        Err(match shape {
            Shape::Str => "must be of type string",
            Shape::Int => "must be of type integer",
            Shape::StrMap => "must be a map of string keys to string values",
            Shape::StrList => "must be a list of strings",
            Shape::ObjList => "must be a list of objects",
        })
    }
}

fn str_field<'a>(meta: &'a Map<String, Json>, k: &str) -> &'a str {
    meta.get(k).and_then(Json::as_str).unwrap_or("")
}

/// Checks `metadata` of an object being created.
pub(crate) fn validate(meta: Option<&Json>, namespaced: bool, out: &mut Vec<Violation>) {
    let empty = Map::new();
    let meta = match meta {
        None | Some(Json::Null) => &empty,
        Some(Json::Object(m)) => m,
        Some(_) => {
            push(out, "metadata", "must be of type object");
            return;
        }
    };
    let mut keys: Vec<&String> = meta.keys().collect();
    keys.sort();
    for k in keys {
        let path = child("metadata", k);
        match FIELDS.iter().find(|(name, _)| name == k) {
            None => push(out, &path, format!("unknown field \"{path}\"")),
            Some((_, shape)) => {
                if let Err(msg) = shape_ok(&meta[k.as_str()], *shape) {
                    push(out, &path, msg);
                }
            }
        }
    }

    let name = str_field(meta, "name");
    let generate_name = str_field(meta, "generateName");
    if !generate_name.is_empty() {
        // A prefix: a trailing '-' is fine (`maskTrailingDash`).
        let masked = match generate_name.strip_suffix('-') {
            Some(rest) if !rest.is_empty() => format!("{rest}a"),
            _ => generate_name.to_owned(),
        };
        for msg in dns1123_subdomain(&masked) {
            push(out, "metadata.generateName", msg);
        }
    }
    if name.is_empty() {
        if generate_name.is_empty() {
            push(
                out,
                "metadata.name",
                "Required value: name or generateName is required",
            );
        }
    } else {
        for msg in dns1123_subdomain(name) {
            push(out, "metadata.name", msg);
        }
    }

    let namespace = str_field(meta, "namespace");
    if namespaced {
        if namespace.is_empty() {
            push(out, "metadata.namespace", "Required value");
        } else {
            for msg in dns1123_label(namespace) {
                push(out, "metadata.namespace", msg);
            }
        }
    } else if !namespace.is_empty() {
        push(
            out,
            "metadata.namespace",
            "Forbidden: not allowed on this type",
        );
    }

    if let Some(Json::Object(labels)) = meta.get("labels") {
        for (k, v) in labels {
            for msg in qualified_name(k) {
                push(
                    out,
                    "metadata.labels",
                    format!("Invalid value: {}: {msg}", quoted(k)),
                );
            }
            if let Some(v) = v.as_str() {
                for msg in label_value(v) {
                    push(
                        out,
                        "metadata.labels",
                        format!("Invalid value: {}: {msg}", quoted(v)),
                    );
                }
            }
        }
    }
    if let Some(Json::Object(annotations)) = meta.get("annotations") {
        let mut total = 0usize;
        for (k, v) in annotations {
            total += k.len() + v.as_str().map_or(0, str::len);
            for msg in qualified_name(&k.to_lowercase()) {
                push(
                    out,
                    "metadata.annotations",
                    format!("Invalid value: {}: {msg}", quoted(k)),
                );
            }
        }
        if total > 256 * 1024 {
            push(
                out,
                "metadata.annotations",
                "Too long: may not be more than 262144 bytes",
            );
        }
    }
    if let Some(Json::Array(finalizers)) = meta.get("finalizers") {
        for (i, f) in finalizers.iter().enumerate() {
            if let Some(f) = f.as_str() {
                for msg in qualified_name(f) {
                    push(out, &format!("metadata.finalizers[{i}]"), msg);
                }
            }
        }
    }
    if let Some(Json::Array(owners)) = meta.get("ownerReferences") {
        for (i, o) in owners.iter().enumerate() {
            let path = format!("metadata.ownerReferences[{i}]");
            for field in ["apiVersion", "kind", "name", "uid"] {
                if o.get(field)
                    .and_then(Json::as_str)
                    .is_none_or(str::is_empty)
                {
                    push(out, &child(&path, field), "Required value");
                }
            }
        }
    }
    if !str_field(meta, "resourceVersion").is_empty() {
        push(
            out,
            "metadata.resourceVersion",
            "resourceVersion should not be set on objects to be created",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names() {
        assert!(qualified_name("topology.istio.io/network").is_empty());
        assert!(qualified_name("app").is_empty());
        assert!(!qualified_name("Bad.Prefix/x").is_empty());
        assert!(!qualified_name("a/b/c").is_empty());
        assert!(!qualified_name("x/").is_empty());
        assert!(!qualified_name(&"a".repeat(64)).is_empty());
        assert!(label_value("").is_empty());
        assert!(label_value("us-east-1").is_empty());
        assert!(!label_value("-x").is_empty());
    }

    #[test]
    fn dns_names() {
        assert!(dns1123_subdomain("istio-eastwest.example").is_empty());
        assert!(!dns1123_subdomain("Istio").is_empty());
        assert!(!dns1123_subdomain("a..b").is_empty());
        assert!(dns1123_label("istio-system").is_empty());
        assert!(!dns1123_label("a.b").is_empty());
    }
}
