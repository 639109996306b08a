//! Reading Kubernetes objects from multi-document YAML (or JSON) text.
//!
//! Each document is parsed on its own, so one bad document does not hide the
//! others. Kinds meshpeer does not read are skipped; a document that cannot be
//! read is reported with the source name, its index in the stream, its line,
//! and (for a wrong field) the field path.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::objects::{Kind, Object};

/// A document that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// File name (or other source label) the text came from.
    pub source: String,
    /// 1-based index of the document in the stream (non-empty documents only).
    pub document: usize,
    /// 1-based line in the source, when known.
    pub line: Option<usize>,
    /// `Service httpbin/in-ambient`, when the document got that far.
    pub object: Option<String>,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.source, self.document)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        if let Some(obj) = &self.object {
            write!(f, ", {obj}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Everything read from one source.
#[derive(Clone, Debug, Default)]
pub struct Parsed {
    pub objects: Vec<Object>,
    pub errors: Vec<ParseError>,
    /// `apiVersion kind` of documents that were skipped because meshpeer does
    /// not read that kind.
    pub skipped: Vec<String>,
}

/// Parses every document of a YAML or JSON stream.
pub fn parse_documents(source: &str, text: &str) -> Parsed {
    let mut out = Parsed::default();
    for (index, doc) in split_documents(text).into_iter().enumerate() {
        let document = index + 1;
        let mut cx = DocContext {
            source,
            document,
            start_line: doc.start_line,
            text: &doc.text,
            out: &mut out,
        };
        cx.parse();
    }
    out
}

struct RawDocument {
    /// 1-based line of the document's first line in the source.
    start_line: usize,
    /// The document text; lines in parser errors are counted from
    /// `start_line` (no padding: a stream of many small documents would
    /// cost its length times its line count).
    text: String,
}

/// Splits a stream at `---` / `...` markers, dropping documents with nothing
/// but blank lines and comments.
///
/// Also at a second top-level `apiVersion:` line within one document:
/// `kubectl label --local -f FILE -o yaml` (and `annotate`, `set`) print
/// several objects one after the other with no `---` between them. Such a
/// document would otherwise be a duplicate-key error, so splitting cannot
/// change the meaning of a valid stream.
fn split_documents(text: &str) -> Vec<RawDocument> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start_line = 1;
    let mut has_content = false;
    let mut has_api_version = false;
    let flush =
        |current: &mut String, start_line: usize, has_content: &mut bool, docs: &mut Vec<_>| {
            if *has_content {
                docs.push(RawDocument {
                    start_line,
                    text: current.clone(),
                });
            }
            current.clear();
            *has_content = false;
        };
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let is_start = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        let is_end = line == "..." || line.starts_with("... ");
        let is_api_version = line.starts_with("apiVersion:");
        if is_api_version && has_api_version {
            // The next object of a concatenated stream starts here.
            flush(&mut current, start_line, &mut has_content, &mut docs);
            start_line = line_no;
            has_api_version = false;
        }
        if is_start || is_end {
            flush(&mut current, start_line, &mut has_content, &mut docs);
            has_api_version = false;
            start_line = line_no + 1;
            if is_start {
                // Content after the marker on the same line (`--- {a: 1}`).
                let rest = line[3..].trim();
                if !rest.is_empty() && !rest.starts_with('#') {
                    start_line = line_no;
                    current.push_str(&line[3..]);
                    current.push('\n');
                    has_content = true;
                }
            }
            continue;
        }
        if !has_content {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with('%') {
                // Leading blank lines, comments and directives: skip, but keep
                // line numbers right by moving the start.
                if current.is_empty() {
                    start_line = line_no + 1;
                    continue;
                }
            } else {
                has_content = true;
            }
        }
        has_api_version |= is_api_version;
        current.push_str(line);
        current.push('\n');
    }
    flush(&mut current, start_line, &mut has_content, &mut docs);
    docs
}

struct DocContext<'a> {
    source: &'a str,
    document: usize,
    start_line: usize,
    text: &'a str,
    out: &'a mut Parsed,
}

impl DocContext<'_> {
    /// A line of the document as a line of the source.
    fn source_line(&self, line: usize) -> usize {
        line.max(1) + self.start_line - 1
    }

    fn error(&mut self, line: Option<usize>, object: Option<String>, message: String) {
        self.out.errors.push(ParseError {
            source: self.source.to_owned(),
            document: self.document,
            line: line.or(Some(self.start_line)),
            object,
            message,
        });
    }

    fn parse(&mut self) {
        let value: serde_json::Value = match from_yaml(self.text) {
            Ok(v) => v,
            Err((line, msg)) => {
                // The parser counts lines from the document's start.
                let (line, msg) = match line {
                    Some(rel) => {
                        let abs = self.source_line(rel);
                        (Some(abs), relabel_line(&msg, rel, abs))
                    }
                    None => (None, msg),
                };
                self.error(line, None, format!("not valid YAML: {msg}"));
                return;
            }
        };
        if value.is_null() {
            return;
        }
        self.object(value, None);
    }

    /// Reads one object (or each item of a `List`).
    fn object(&mut self, value: serde_json::Value, item: Option<usize>) {
        let at = |msg: String| match item {
            Some(i) => format!("items[{i}]: {msg}"),
            None => msg,
        };
        let Some(map) = value.as_object() else {
            self.error(
                None,
                None,
                at("not a Kubernetes object (expected a mapping with apiVersion and kind)".into()),
            );
            return;
        };
        let api_version = map
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let kind = map.get("kind").and_then(|v| v.as_str()).map(str::to_owned);
        let (Some(api_version), Some(kind)) = (api_version.as_deref(), kind.as_deref()) else {
            self.error(
                None,
                None,
                at("missing apiVersion or kind: every Kubernetes object needs both".into()),
            );
            return;
        };
        if api_version == "v1" && kind == "List" {
            if item.is_some() {
                self.error(None, None, at("a List inside a List is not allowed".into()));
                return;
            }
            let items = match value.get("items") {
                Some(serde_json::Value::Array(items)) => items.clone(),
                None | Some(serde_json::Value::Null) => Vec::new(),
                Some(_) => {
                    self.error(None, None, "List: items must be a sequence".into());
                    return;
                }
            };
            for (i, it) in items.into_iter().enumerate() {
                self.object(it, Some(i));
            }
            return;
        }
        let (group, version) = match api_version.rsplit_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let Some(known) = Kind::from_group_kind(group, kind) else {
            self.out.skipped.push(format!("{api_version} {kind}"));
            return;
        };
        let meta = value.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_owned();
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .map(str::to_owned);
        let label = match (&namespace, known.is_namespaced()) {
            (Some(ns), true) => format!("{kind} {ns}/{name}"),
            (None, true) => format!("{kind} default/{name}"),
            _ => format!("{kind} {name}"),
        };
        if !known.versions().contains(&version) {
            self.error(
                None,
                Some(label),
                at(format!(
                    "apiVersion {api_version} is not supported for {kind}; supported: {}",
                    known
                        .versions()
                        .iter()
                        .map(|v| if group.is_empty() {
                            (*v).to_owned()
                        } else {
                            format!("{group}/{v}")
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            );
            return;
        }
        if name.is_empty() {
            self.error(None, Some(label), at("metadata.name is required".into()));
            return;
        }
        // Typed objects are normalised to the version we model, so that the
        // k8s-openapi deserializers (which check apiVersion) accept them.
        let mut value = value;
        if let Some(m) = value.as_object_mut() {
            let canonical = if group.is_empty() {
                known.versions()[0].to_owned()
            } else {
                format!("{group}/{}", known.versions()[0])
            };
            m.insert("apiVersion".into(), serde_json::Value::String(canonical));
        }
        let parsed = match known {
            Kind::Namespace => self.typed(&value, &label, item).map(Object::Namespace),
            Kind::Node => self.typed(&value, &label, item).map(Object::Node),
            Kind::Service => self.typed(&value, &label, item).map(Object::Service),
            Kind::Pod => self.typed(&value, &label, item).map(Object::Pod),
            Kind::EndpointSlice => self.typed(&value, &label, item).map(Object::EndpointSlice),
            Kind::Segment => self.typed(&value, &label, item).map(Object::Segment),
            Kind::Gateway => self.typed(&value, &label, item).map(Object::Gateway),
            Kind::ServiceEntry => self.typed(&value, &label, item).map(Object::ServiceEntry),
            Kind::WorkloadEntry => self.typed(&value, &label, item).map(Object::WorkloadEntry),
            Kind::HttpRoute => self.typed(&value, &label, item).map(Object::HttpRoute),
        };
        let Some(mut obj) = parsed else { return };
        if known.is_namespaced() && obj.metadata().namespace.is_none() {
            // What `kubectl apply -f` does without a namespace.
            obj.metadata_mut().namespace = Some("default".into());
        }
        if !known.is_namespaced() {
            obj.metadata_mut().namespace = None;
        }
        self.out.objects.push(obj);
    }

    /// `value` as a `T`; an error naming the failing field otherwise.
    /// `item`: the index of `value` in a `List`.
    fn typed<T: DeserializeOwned>(
        &mut self,
        value: &serde_json::Value,
        label: &str,
        item: Option<usize>,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let path = e.path().to_string();
                // Find the line: parse the text again straight into the type,
                // which reports where it failed. Not for an item of a List:
                // the text is the whole List (no line of the item would
                // come of it), and a List of many bad items would be read
                // again once per item (SPEC B7).
                let line = match item {
                    Some(_) => None,
                    None => {
                        serde_saphyr::from_str_with_options::<T>(self.text, yaml_options(self.text))
                            .err()
                            .and_then(|e| e.location())
                            .map(|l| l.line() as usize)
                            .or_else(|| locate(self.text, &path))
                            .map(|l| self.source_line(l))
                    }
                };
                let msg = e.into_inner().to_string();
                let msg = if path.is_empty() || path == "." {
                    msg
                } else {
                    format!("{path}: {msg}")
                };
                let msg = match item {
                    Some(i) => format!("items[{i}]: {msg}"),
                    None => msg,
                };
                self.error(line, Some(label.to_owned()), msg);
                None
            }
        }
    }
}

/// `msg` with its first "line `rel`" (the parser's, counted in the
/// document) read "line `abs`" (counted in the source).
fn relabel_line(msg: &str, rel: usize, abs: usize) -> String {
    let needle = format!("line {rel}");
    let mut from = 0;
    while let Some(i) = msg[from..].find(&needle) {
        let at = from + i;
        let after = at + needle.len();
        if !msg[after..].starts_with(|c: char| c.is_ascii_digit()) {
            return format!("{}line {abs}{}", &msg[..at], &msg[after..]);
        }
        from = after;
    }
    msg.to_owned()
}

/// Best-effort line of a field path (`metadata.labels.team`,
/// `spec.ports[0].port`) in a document: each key is looked for after the
/// previous one. `None` when a key is not found.
fn locate(text: &str, path: &str) -> Option<usize> {
    let keys: Vec<&str> = path
        .split('.')
        .map(|k| k.split('[').next().unwrap_or(k))
        .filter(|k| !k.is_empty())
        .collect();
    if keys.is_empty() {
        return None;
    }
    let mut from = 0;
    let mut found = None;
    let lines: Vec<&str> = text.lines().collect();
    for key in keys {
        let i = (from..lines.len()).find(|&i| {
            let t = lines[i].trim_start().trim_start_matches("- ");
            t.strip_prefix(key)
                .is_some_and(|rest| rest.starts_with(':'))
                || t.strip_prefix(&format!("{key:?}"))
                    .is_some_and(|rest| rest.starts_with(':'))
        })?;
        found = Some(i + 1);
        from = i + 1;
    }
    found
}

/// Options for reading `text`: aliases may replay a quarter as many events
/// as the text has bytes (plus a little), not the parser's default million: a
/// "billion laughs" of a few hundred bytes would otherwise build ~100 MB of
/// values before being refused (SPEC B7). Real manifests rarely use
/// aliases at all.
pub(crate) fn yaml_options(text: &str) -> serde_saphyr::Options {
    let mut opts = serde_saphyr::Options::default();
    opts.with_snippet = false;
    opts.alias_limits.max_total_replayed_events = text.len() / 4 + 64;
    // Deeper than the parser's depth limit (64) is refused anyway; each
    // open `[`/`{` costs the scanner ~1 KiB before that.
    if let Some(budget) = opts.budget.as_mut() {
        budget.flow_nesting_limit = budget.max_depth;
    }
    opts
}

/// Parses one YAML document into JSON; on error, the line and a one-line message.
fn from_yaml(text: &str) -> Result<serde_json::Value, (Option<usize>, String)> {
    serde_saphyr::from_str_with_options::<serde_json::Value>(text, yaml_options(text)).map_err(
        |e| {
            let line = e.location().map(|l| l.line() as usize);
            let msg = e.without_snippet().to_string();
            // The message names the line and column ("... at line L, column
            // C"); the line is also reported separately.
            (line, msg)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_keeps_line_numbers() {
        let text = "# header\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].start_line, 3);
        assert_eq!(docs[1].start_line, 10);
        let parsed = parse_documents("ns.yaml", text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.objects.len(), 2);
    }

    #[test]
    fn f1_kubectl_local_output_without_separators_is_read_object_by_object() {
        // What `kubectl label --local -f FILE -o yaml` prints for a file of
        // three objects: no `---` between them.
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  labels:\n    admin.solo.io/segment: dev-segment\n  name: istio-system\napiVersion: admin.solo.io/v1alpha1\nkind: Segment\nmetadata:\n  name: dev-segment\n  namespace: istio-system\nspec:\n  domain: cluster.dev\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  ports:\n  - port: abc\n";
        let parsed = parse_documents("f.yaml", text);
        let names: Vec<&str> = parsed
            .objects
            .iter()
            .map(|o| o.metadata().name.as_deref().unwrap_or_default())
            .collect();
        assert_eq!(names, ["istio-system", "dev-segment"]);
        // Errors keep the line numbers of the whole stream.
        assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
        assert_eq!(parsed.errors[0].document, 3);
        assert_eq!(parsed.errors[0].line, Some(21));
        // A literal block whose lines start with `apiVersion:` stays whole
        // (it is indented), and one object per document still reads.
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  x: |\n    apiVersion: v1\n";
        assert_eq!(split_documents(text).len(), 1);
    }

    #[test]
    fn f1_bad_field_names_document_line_and_path() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  ports:\n  - port: abc\n";
        let parsed = parse_documents("svc.yaml", text);
        assert_eq!(parsed.objects.len(), 1, "the good document is kept");
        assert_eq!(parsed.errors.len(), 1);
        let e = &parsed.errors[0];
        assert_eq!(e.document, 2);
        assert_eq!(e.line, Some(13));
        assert_eq!(e.object.as_deref(), Some("Service shop/web"));
        assert!(e.message.contains("spec.ports[0].port"), "{}", e.message);
        let shown = e.to_string();
        assert!(
            shown.starts_with("svc.yaml document 2 (line 13), Service shop/web: "),
            "{shown}"
        );
    }

    #[test]
    fn f1_a_wrongly_typed_label_is_reported_at_its_line() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    app: web\n    team: true\n";
        let parsed = parse_documents("ns.yaml", text);
        assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.objects);
        let e = &parsed.errors[0];
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.message.contains("metadata.labels.team"), "{e}");
    }

    #[test]
    fn f1_a_syntax_error_in_a_later_document_names_the_source_line() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n   bad: [\n";
        let parsed = parse_documents("x.yaml", text);
        assert_eq!(parsed.objects.len(), 1);
        let e = &parsed.errors[0];
        assert_eq!(e.line, Some(10), "{e}");
        assert!(e.message.contains("at line 10,"), "{e}");
    }

    #[test]
    fn b7_many_small_documents_cost_their_length_not_its_square() {
        // 50,000 one-line documents: with each document padded to its
        // source line this held ~10^9 bytes at once.
        let text = "---\nfoo: 1\n".repeat(50_000);
        let docs = split_documents(&text);
        assert_eq!(docs.len(), 50_000);
        let held: usize = docs.iter().map(|d| d.text.len()).sum();
        assert!(
            held <= text.len(),
            "{held} bytes held for {} of text",
            text.len()
        );
        assert_eq!(docs[49_999].start_line, 100_000);
    }

    #[test]
    fn f1_yaml_syntax_error_is_reported_with_line() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n   bad: [\n";
        let parsed = parse_documents("x.yaml", text);
        assert!(parsed.objects.is_empty());
        assert_eq!(parsed.errors.len(), 1);
        assert_eq!(parsed.errors[0].line, Some(5));
        assert!(parsed.errors[0].message.starts_with("not valid YAML"));
    }

    #[test]
    fn unknown_kinds_are_skipped_and_lists_are_read() {
        let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a}
  spec: {ports: [{port: 80}]}
- apiVersion: admin.solo.io/v1alpha1
  kind: Segment
  metadata: {name: dev, namespace: istio-system}
  spec: {domain: cluster.dev}
"#;
        let parsed = parse_documents("x.yaml", text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.skipped, vec!["apps/v1 Deployment".to_owned()]);
        assert_eq!(parsed.objects.len(), 2);
        assert_eq!(
            parsed.objects[0].metadata().namespace.as_deref(),
            Some("default")
        );
        assert_eq!(parsed.objects[1].kind(), Kind::Segment);
    }

    #[test]
    fn f1_missing_kind_name_and_unsupported_version() {
        let text = "metadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {}\n---\napiVersion: admin.solo.io/v2\nkind: Segment\nmetadata: {name: s}\nspec: {domain: a.b}\n---\n- a\n";
        let parsed = parse_documents("x.yaml", text);
        let msgs: Vec<String> = parsed.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 4, "{msgs:#?}");
        assert!(msgs[0].contains("missing apiVersion or kind"));
        assert!(msgs[1].contains("metadata.name is required"));
        assert!(msgs[2].contains("admin.solo.io/v2 is not supported for Segment"));
        assert!(msgs[2].contains("admin.solo.io/v1alpha1"));
        assert!(msgs[3].contains("not a Kubernetes object"));
    }

    #[test]
    fn json_documents_are_read() {
        let text = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"j"}}"#;
        let parsed = parse_documents("x.json", text);
        assert_eq!(parsed.objects.len(), 1);
    }
}
