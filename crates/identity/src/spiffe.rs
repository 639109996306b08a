//! SPIFFE IDs of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

/// Longest SPIFFE ID accepted, in bytes (SPIFFE ID spec, section 2.3).
const MAX_LEN: usize = 2048;
/// Longest trust domain accepted, in bytes (SPIFFE ID spec, section 2.1).
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const SCHEME: &str = "spiffe://";

/// The identity of one workload: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
///
/// Always valid: the trust domain is non-empty and made of lowercase ASCII
/// letters, digits, `.`, `-` and `_`; namespace and service account are
/// non-empty, made of ASCII letters, digits, `.`, `-` and `_`, and are
/// neither `.` nor `..`. The whole ID is at most 2048 bytes. Display renders
/// the URI form, which [`FromStr`] parses back exactly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string or parts are not a [`SpiffeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input does not start with `spiffe://`.
    #[error("{input:?} is not a SPIFFE ID: it must start with \"spiffe://\" (lowercase)")]
    Scheme {
        /// The rejected input.
        input: String,
    },
    /// The trust domain is empty, too long or has a character outside `[a-z0-9._-]`.
    #[error(
        "{input:?} is not a SPIFFE ID: trust domain {trust_domain:?} {problem} \
         (allowed: 1-255 of lowercase letters, digits, '.', '-', '_')"
    )]
    TrustDomain {
        /// The rejected input.
        input: String,
        /// The trust domain as given.
        trust_domain: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The path is not `/ns/<namespace>/sa/<service-account>`.
    #[error(
        "{input:?} is not a meshpeer SPIFFE ID: the path must be \
         /ns/<namespace>/sa/<service-account>, got {path:?}"
    )]
    Path {
        /// The rejected input.
        input: String,
        /// The path as given (everything after the trust domain).
        path: String,
    },
    /// The namespace or service account is empty, `.`/`..` or has a character
    /// outside `[A-Za-z0-9._-]`.
    #[error(
        "{input:?} is not a SPIFFE ID: {part} {value:?} {problem} \
         (allowed: letters, digits, '.', '-', '_'; not '.' or '..')"
    )]
    Segment {
        /// The rejected input.
        input: String,
        /// `"namespace"` or `"service account"`.
        part: &'static str,
        /// The segment as given.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The ID is longer than 2048 bytes.
    #[error("SPIFFE ID is {len} bytes long; at most 2048 are allowed")]
    TooLong {
        /// Length of the rejected ID in bytes.
        len: usize,
    },
}

impl SpiffeId {
    /// Builds `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`,
    /// checking every part as [`FromStr`] does.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, SpiffeIdError> {
        let id = SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        let input = || id.to_string();
        if let Some(problem) = trust_domain_problem(&id.trust_domain) {
            return Err(SpiffeIdError::TrustDomain {
                input: input(),
                trust_domain: id.trust_domain.clone(),
                problem,
            });
        }
        for (part, value) in [
            ("namespace", &id.namespace),
            ("service account", &id.service_account),
        ] {
            if let Some(problem) = segment_problem(value) {
                return Err(SpiffeIdError::Segment {
                    input: input(),
                    part,
                    value: value.clone(),
                    problem,
                });
            }
        }
        let len = SCHEME.len()
            + id.trust_domain.len()
            + "/ns/".len()
            + id.namespace.len()
            + "/sa/".len()
            + id.service_account.len();
        if len > MAX_LEN {
            return Err(SpiffeIdError::TooLong { len });
        }
        Ok(id)
    }

    /// Checks that `trust_domain` is usable in a SPIFFE ID (and as the
    /// `spiffe://<trust-domain>` binding of an intermediate CA, SPEC P6):
    /// 1-255 bytes of lowercase letters, digits, `.`, `-`, `_`.
    pub fn check_trust_domain(trust_domain: &str) -> Result<(), SpiffeIdError> {
        match trust_domain_problem(trust_domain) {
            None => Ok(()),
            Some(problem) => Err(SpiffeIdError::TrustDomain {
                input: format!("{SCHEME}{trust_domain}"),
                trust_domain: trust_domain.to_owned(),
                problem,
            }),
        }
    }

    /// Checks that `cluster` can name a cluster in the cluster binding of an
    /// intermediate CA (`spiffe://<td>/meshpeer/cluster/<cluster>`): one
    /// SPIFFE path segment of ASCII letters, digits, `.`, `-`, `_`, at most
    /// 64 bytes. Err: what is wrong with it.
    pub fn check_cluster_name(cluster: &str) -> Result<(), &'static str> {
        if cluster.len() > 64 {
            return Err("is longer than 64 bytes");
        }
        match segment_problem(cluster) {
            None => Ok(()),
            Some(problem) => Err(problem),
        }
    }

    /// The trust domain, e.g. `cluster1` in `spiffe://cluster1/ns/x/sa/y`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace, e.g. `x` in `spiffe://cluster1/ns/x/sa/y`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account, e.g. `y` in `spiffe://cluster1/ns/x/sa/y`.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    /// Parses exactly `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`:
    /// no port, user info, query, fragment, percent-encoding or trailing slash.
    fn from_str(input: &str) -> Result<Self, SpiffeIdError> {
        if input.len() > MAX_LEN {
            return Err(SpiffeIdError::TooLong { len: input.len() });
        }
        let Some(rest) = input.strip_prefix(SCHEME) else {
            return Err(SpiffeIdError::Scheme {
                input: input.to_owned(),
            });
        };
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        if let Some(problem) = trust_domain_problem(trust_domain) {
            return Err(SpiffeIdError::TrustDomain {
                input: input.to_owned(),
                trust_domain: trust_domain.to_owned(),
                problem,
            });
        }
        let segments: Vec<&str> = path.split('/').collect();
        let [ns_key, namespace, sa_key, service_account] = segments.as_slice() else {
            return Err(path_error(input, path));
        };
        if *ns_key != "ns" || *sa_key != "sa" {
            return Err(path_error(input, path));
        }
        SpiffeId::new(trust_domain, *namespace, *service_account).map_err(|err| match err {
            // Report the caller's input, not our re-rendering of it.
            SpiffeIdError::Segment {
                part,
                value,
                problem,
                ..
            } => SpiffeIdError::Segment {
                input: input.to_owned(),
                part,
                value,
                problem,
            },
            other => other,
        })
    }
}

fn path_error(input: &str, path: &str) -> SpiffeIdError {
    SpiffeIdError::Path {
        input: input.to_owned(),
        path: format!("/{path}"),
    }
}

fn trust_domain_problem(td: &str) -> Option<&'static str> {
    if td.is_empty() {
        Some("is empty")
    } else if td.len() > MAX_TRUST_DOMAIN_LEN {
        Some("is longer than 255 bytes")
    } else if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        Some("has a character that is not allowed")
    } else {
        None
    }
}

fn segment_problem(segment: &str) -> Option<&'static str> {
    if segment.is_empty() {
        Some("is empty")
    } else if segment == "." || segment == ".." {
        Some("is a relative path segment")
    } else if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        Some("has a character that is not allowed")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c6_spiffe_id_round_trips() {
        let id: SpiffeId = "spiffe://cluster1/ns/meshpeer-system/sa/meshpeer"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "cluster1");
        assert_eq!(id.namespace(), "meshpeer-system");
        assert_eq!(id.service_account(), "meshpeer");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster1/ns/meshpeer-system/sa/meshpeer"
        );
        assert_eq!(
            SpiffeId::new("cluster1", "meshpeer-system", "meshpeer").unwrap(),
            id
        );
    }

    #[test]
    fn c6_malformed_spiffe_ids_are_rejected_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("http://cluster1/ns/a/sa/b", "must start with \"spiffe://\""),
            (
                "SPIFFE://cluster1/ns/a/sa/b",
                "must start with \"spiffe://\"",
            ),
            ("spiffe:///ns/a/sa/b", "trust domain \"\" is empty"),
            ("spiffe://Cluster1/ns/a/sa/b", "has a character"),
            ("spiffe://cluster1:443/ns/a/sa/b", "has a character"),
            ("spiffe://user@cluster1/ns/a/sa/b", "has a character"),
            ("spiffe://cluster1", "the path must be"),
            ("spiffe://cluster1/", "the path must be"),
            ("spiffe://cluster1/ns/a/sa/b/", "the path must be"),
            ("spiffe://cluster1/ns/a/sb/b", "the path must be"),
            ("spiffe://cluster1/ns/a", "the path must be"),
            ("spiffe://cluster1/ns//sa/b", "namespace \"\" is empty"),
            ("spiffe://cluster1/ns/../sa/b", "relative path segment"),
            (
                "spiffe://cluster1/ns/a/sa/b?x=1",
                "service account \"b?x=1\"",
            ),
            ("spiffe://cluster1/ns/a/sa/b#f", "service account \"b#f\""),
            ("spiffe://cluster1/ns/a%20/sa/b", "namespace \"a%20\""),
        ];
        for (input, needle) in cases {
            let err = input.parse::<SpiffeId>().unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
            assert!(err.contains(input), "{input}: {err}");
        }
        let long = format!("spiffe://td/ns/{}/sa/b", "a".repeat(2048));
        assert!(matches!(
            long.parse::<SpiffeId>(),
            Err(SpiffeIdError::TooLong { .. })
        ));
        assert!(matches!(
            SpiffeId::new("td", "a".repeat(2048), "b"),
            Err(SpiffeIdError::TooLong { .. })
        ));
        assert!(matches!(
            SpiffeId::new("td", "a/b", "c"),
            Err(SpiffeIdError::Segment {
                part: "namespace",
                ..
            })
        ));
    }
}
