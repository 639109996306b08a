//! Which rule of a [`RouteTable`] a request takes (L3), with the table's
//! patterns compiled once. The proxy routes with it; `explain` answers
//! with it, so both agree.

use std::sync::Arc;

use regex::Regex;

use super::{PathMatch, RouteRule, RouteTable};

/// What matching needs of a request.
pub trait Request {
    fn method(&self) -> &str;
    /// The path, without the query.
    fn path(&self) -> &str;
    /// The query, without `?` (empty: none).
    fn query(&self) -> &str;
    /// Whether some value of header `name` (lower-case) satisfies `pred`.
    fn any_header(&self, name: &str, pred: &mut dyn FnMut(&str) -> bool) -> bool;
}

/// A request given as parts, as `explain` takes it: header names compared
/// without case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestParts {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl Request for RequestParts {
    fn method(&self) -> &str {
        &self.method
    }

    fn path(&self) -> &str {
        &self.path
    }

    fn query(&self) -> &str {
        &self.query
    }

    fn any_header(&self, name: &str, pred: &mut dyn FnMut(&str) -> bool) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .any(|(_, v)| pred(v))
    }
}

/// A route table with its patterns compiled.
#[derive(Debug)]
pub struct CompiledTable {
    table: Arc<RouteTable>,
    rules: Vec<CompiledRule>,
}

#[derive(Debug)]
struct CompiledRule {
    path: Option<Regex>,
    headers: Vec<(String, Matcher)>,
    query: Vec<(String, Matcher)>,
}

#[derive(Debug)]
enum Matcher {
    Exact(String),
    Regex(Regex),
}

impl Matcher {
    fn new(value: &str, regex: bool) -> Matcher {
        if regex {
            Matcher::Regex(anchored(value))
        } else {
            Matcher::Exact(value.to_owned())
        }
    }

    fn is_match(&self, v: &str) -> bool {
        match self {
            Matcher::Exact(e) => e == v,
            Matcher::Regex(r) => r.is_match(v),
        }
    }
}

/// The whole value must match, as the Gateway API means it. Patterns that
/// do not compile were refused when the route was compiled; one that fails
/// here anyway matches nothing.
fn anchored(pattern: &str) -> Regex {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
        .unwrap_or_else(|_| never_matches())
}

fn never_matches() -> Regex {
    #[allow(clippy::unwrap_used)] // a constant pattern that compiles
    Regex::new("[^\\s\\S]").unwrap()
}

impl CompiledTable {
    pub fn new(table: Arc<RouteTable>) -> CompiledTable {
        let rules = table
            .rules
            .iter()
            .map(|r| CompiledRule {
                path: match &r.matches.path {
                    PathMatch::RegularExpression(p) => Some(anchored(p)),
                    _ => None,
                },
                headers: r
                    .matches
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), Matcher::new(&h.value, h.regex)))
                    .collect(),
                query: r
                    .matches
                    .query_params
                    .iter()
                    .map(|q| (q.name.clone(), Matcher::new(&q.value, q.regex)))
                    .collect(),
            })
            .collect();
        CompiledTable { table, rules }
    }

    pub fn table(&self) -> &Arc<RouteTable> {
        &self.table
    }

    /// The first rule whose match holds for the request (L3); none: 404.
    pub fn find(&self, req: &dyn Request) -> Option<&RouteRule> {
        self.table
            .rules
            .iter()
            .zip(&self.rules)
            .find(|(rule, c)| matches(rule, c, req))
            .map(|(rule, _)| rule)
    }
}

fn matches(rule: &RouteRule, c: &CompiledRule, req: &dyn Request) -> bool {
    let m = &rule.matches;
    let path = req.path();
    let path_ok = match &m.path {
        PathMatch::Exact(p) => path == p,
        PathMatch::PathPrefix(p) => prefix_matches(p, path),
        PathMatch::RegularExpression(_) => c.path.as_ref().is_some_and(|r| r.is_match(path)),
    };
    if !path_ok {
        return false;
    }
    if let Some(method) = &m.method
        && req.method() != method
    {
        return false;
    }
    for (name, want) in &c.headers {
        if !req.any_header(name, &mut |v| want.is_match(v)) {
            return false;
        }
    }
    let query = req.query();
    for (name, want) in &c.query {
        // Only the first parameter of a name counts (Gateway API).
        let first = query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        });
        if !first.is_some_and(|v| want.is_match(v)) {
            return false;
        }
    }
    true
}

/// Element-wise prefix (`/foo` matches `/foo` and `/foo/bar`, not
/// `/foobar`); prefixes were compiled without a trailing slash.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l3_path_prefixes_match_whole_segments() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/foo", "/foo"));
        assert!(prefix_matches("/foo", "/foo/bar"));
        assert!(!prefix_matches("/foo", "/foobar"));
        assert!(!prefix_matches("/foo", "/fo"));
    }
}
