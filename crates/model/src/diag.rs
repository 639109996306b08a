//! Diagnostics: every bad input the rules mention is reported, never ignored.
//!
//! A diagnostic carries a stable code (the SPEC rule id it enforces), a
//! severity, the cluster and object it is about, and a message that names the
//! field, the value and what is allowed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The rule a diagnostic enforces. SPEC rule ids, plus `F1`/`F2` for file-mode
/// input (a manifest that does not parse, a bad `cluster.yaml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rule {
    C1,
    C2,
    C3,
    C4,
    C5,
    C6,
    G1,
    G2,
    G3,
    G4,
    G5,
    G6,
    G7,
    G8,
    G9,
    G10,
    G11,
    G12,
    S1,
    S2,
    S3,
    S4,
    S5,
    S6,
    S7,
    T1,
    T7,
    K1,
    K2,
    K3,
    K4,
    /// A user-written ServiceEntry the data plane cannot use as written.
    D4,
    P1,
    P2,
    P3,
    P4,
    P5,
    P6,
    P7,
    P8,
    B1,
    B2,
    L1,
    L2,
    L3,
    L4,
    L5,
    L6,
    L7,
    L8,
    /// A manifest document that cannot be read.
    F1,
    /// A cluster config (`cluster.yaml`) problem.
    F2,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::C1 => "C1",
            Rule::C2 => "C2",
            Rule::C3 => "C3",
            Rule::C4 => "C4",
            Rule::C5 => "C5",
            Rule::C6 => "C6",
            Rule::G1 => "G1",
            Rule::G2 => "G2",
            Rule::G3 => "G3",
            Rule::G4 => "G4",
            Rule::G5 => "G5",
            Rule::G6 => "G6",
            Rule::G7 => "G7",
            Rule::G8 => "G8",
            Rule::G9 => "G9",
            Rule::G10 => "G10",
            Rule::G11 => "G11",
            Rule::G12 => "G12",
            Rule::S1 => "S1",
            Rule::S2 => "S2",
            Rule::S3 => "S3",
            Rule::S4 => "S4",
            Rule::S5 => "S5",
            Rule::S6 => "S6",
            Rule::S7 => "S7",
            Rule::T1 => "T1",
            Rule::T7 => "T7",
            Rule::K1 => "K1",
            Rule::K2 => "K2",
            Rule::K3 => "K3",
            Rule::K4 => "K4",
            Rule::D4 => "D4",
            Rule::P1 => "P1",
            Rule::P2 => "P2",
            Rule::P3 => "P3",
            Rule::P4 => "P4",
            Rule::P5 => "P5",
            Rule::P6 => "P6",
            Rule::P7 => "P7",
            Rule::P8 => "P8",
            Rule::B1 => "B1",
            Rule::B2 => "B2",
            Rule::L1 => "L1",
            Rule::L2 => "L2",
            Rule::L3 => "L3",
            Rule::L4 => "L4",
            Rule::L5 => "L5",
            Rule::L6 => "L6",
            Rule::L7 => "L7",
            Rule::L8 => "L8",
            Rule::F1 => "F1",
            Rule::F2 => "F2",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The input cannot be used as written; something the user asked for does
    /// not happen.
    Error,
    /// The input is used, but not the way it was probably meant.
    Warning,
    /// Worth knowing; nothing is wrong.
    Info,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

/// The object a diagnostic is about, e.g. `service httpbin/in-ambient`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Lower-case kind: `service`, `namespace`, `segment`, `gateway`, `cluster`, `file` ...
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: &str, namespace: Option<&str>, name: &str) -> Self {
        ObjectRef {
            kind: kind.to_owned(),
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }
    }
    pub fn namespaced(kind: &str, namespace: &str, name: &str) -> Self {
        Self::new(kind, Some(namespace), name)
    }
    pub fn cluster(name: &str) -> Self {
        Self::new("cluster", None, name)
    }
    pub fn namespace(name: &str) -> Self {
        Self::new("namespace", None, name)
    }
    pub fn service(namespace: &str, name: &str) -> Self {
        Self::namespaced("service", namespace, name)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One finding about the input.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Diagnostic {
    /// The cluster whose input this is about (or whose view, for catalog findings).
    pub cluster: String,
    pub rule: Rule,
    pub severity: Severity,
    pub object: ObjectRef,
    /// The field at fault, when there is one (`metadata.labels[solo.io/service-scope]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(
        cluster: &str,
        rule: Rule,
        severity: Severity,
        object: ObjectRef,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            cluster: cluster.to_owned(),
            rule,
            severity,
            object,
            field: None,
            message: message.into(),
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

/// `warning[G5] service httpbin/in-ambient (cluster cluster1): label solo.io/service-scope ...`
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}[{}] {} (cluster {}): {}",
            self.severity, self.rule, self.object, self.cluster, self.message
        )
    }
}

/// Sorts and removes duplicates so that diagnostics do not depend on the order
/// of the input.
pub(crate) fn normalize(diags: &mut Vec<Diagnostic>) {
    diags.sort();
    diags.dedup();
}

/// A close, correctly spelled value for a wrong one (`Global` -> `global`),
/// used to make diagnostics actionable.
pub(crate) fn suggest<'a>(value: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let v = value.trim().to_ascii_lowercase();
    if v.is_empty() {
        return None;
    }
    allowed.iter().copied().find(|a| {
        let a = a.to_ascii_lowercase();
        a == v || edit_distance(&a, &v) <= 2
    })
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Formats a value for a message: quoted, with the empty string visible.
pub(crate) fn quoted(value: &str) -> String {
    format!("{value:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_case_and_typos() {
        let allowed = ["global", "segment", "cluster"];
        assert_eq!(suggest("Global", &allowed), Some("global"));
        assert_eq!(suggest("globall", &allowed), Some("global"));
        assert_eq!(suggest("segmnt", &allowed), Some("segment"));
        assert_eq!(suggest("", &allowed), None);
        assert_eq!(suggest("everywhere", &allowed), None);
    }

    #[test]
    fn display_names_severity_rule_object_cluster() {
        let d = Diagnostic::new(
            "cluster1",
            Rule::G5,
            Severity::Warning,
            ObjectRef::service("httpbin", "in-ambient"),
            "bad",
        );
        assert_eq!(
            d.to_string(),
            "warning[G5] service httpbin/in-ambient (cluster cluster1): bad"
        );
    }
}
