//! Status conditions as the Gateway API CRDs define them (Gateway
//! `status.conditions`, HTTPRoute `status.parents[].conditions`): the checks
//! a server would make, and the transition times both sinks fill in.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use meshpeer_model::objects::{Condition, RouteParentStatus};
use meshpeer_model::routes::RouteStatus;

/// A condition list holds at most this many (both CRDs).
pub(crate) const MAX_CONDITIONS: usize = 8;

/// The checks of the CRDs' condition schema that the caller can get wrong
/// (time and generation are filled in by the sinks). `holder` names what
/// holds the list, for the message (`a Gateway`, `a route parent`).
pub(crate) fn check_conditions(conditions: &[Condition], holder: &str) -> Result<(), String> {
    if conditions.len() > MAX_CONDITIONS {
        return Err(format!(
            "{} conditions; {holder} holds at most {MAX_CONDITIONS}",
            conditions.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for c in conditions {
        let t = &c.type_;
        if !valid_condition_type(t) {
            return Err(format!(
                "condition type {t:?} is not CamelCase or domain/CamelCase"
            ));
        }
        if !seen.insert(t) {
            return Err(format!("condition type {t} is given twice"));
        }
        if !matches!(c.status.as_str(), "True" | "False" | "Unknown") {
            return Err(format!(
                "condition {t}: status {:?} is not True, False or Unknown",
                c.status
            ));
        }
        let reason = c.reason.as_deref().unwrap_or_default();
        if !valid_reason(reason) {
            return Err(format!(
                "condition {t}: reason {reason:?} must be a CamelCase word (letters, digits, _ , :), 1-1024 characters"
            ));
        }
        if c.message.as_ref().is_some_and(|m| m.len() > 32768) {
            return Err(format!("condition {t}: message longer than 32768 bytes"));
        }
    }
    Ok(())
}

/// `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`, at most 1024 characters.
pub(crate) fn valid_reason(r: &str) -> bool {
    let b = r.as_bytes();
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b',' | b':');
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            b.len() <= 1024
                && first.is_ascii_alphabetic()
                && (b.len() == 1 || last.is_ascii_alphanumeric() || *last == b'_')
                && b.iter().all(inner)
        }
        _ => false,
    }
}

/// `^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$`,
/// at most 316 characters.
pub(crate) fn valid_condition_type(t: &str) -> bool {
    let (prefix, name) = match t.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, t),
    };
    let dns_label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    let nb = name.as_bytes();
    t.len() <= 316
        && prefix.is_none_or(|p| p.split('.').all(dns_label))
        && !nb.is_empty()
        && nb[0].is_ascii_alphanumeric()
        && nb[nb.len() - 1].is_ascii_alphanumeric()
        && nb
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Completes conditions from the ones written before (`previous`: as the
/// server or the last file holds them): a missing `observedGeneration`
/// becomes `generation`; a missing `lastTransitionTime` is the previous
/// one when the condition's status did not change (as apimachinery's
/// `SetStatusCondition` keeps it), else `now`. A missing `message` becomes
/// empty (the CRDs require the field).
pub(crate) fn fill_conditions(
    conditions: &mut [Condition],
    previous: &[Condition],
    generation: Option<i64>,
    now: &str,
) {
    for c in conditions {
        c.message.get_or_insert_with(String::new);
        if c.observed_generation.is_none() {
            c.observed_generation = generation;
        }
        if c.last_transition_time.is_none() {
            let same = previous
                .iter()
                .find(|s| s.type_ == c.type_ && s.status == c.status)
                .and_then(|s| s.last_transition_time.clone());
            c.last_transition_time = Some(same.unwrap_or_else(|| now.to_owned()));
        }
    }
}

/// meshpeer's parents of one route, complete: each parent's conditions
/// filled ([`fill_conditions`]) from the same parent as written before
/// (same controller and parentRef, in `written`). `generation` stands in
/// where the route's own is unknown.
pub(crate) fn route_parents(
    route: &RouteStatus,
    written: &[RouteParentStatus],
    generation: Option<i64>,
    now: &str,
) -> Vec<RouteParentStatus> {
    let generation = route.generation.or(generation);
    route
        .parents
        .iter()
        .map(|p| {
            let mut p = p.clone();
            let previous = written
                .iter()
                .find(|w| w.controller_name == p.controller_name && w.parent_ref == p.parent_ref)
                .map(|w| w.conditions.as_slice())
                .unwrap_or_default();
            fill_conditions(&mut p.conditions, previous, generation, now);
            p
        })
        .collect()
}

/// Now, as Kubernetes writes times: RFC 3339, UTC, whole seconds.
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let secs = i64::try_from(secs).unwrap_or_default();
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_fields_follow_the_gateway_crd_patterns() {
        for ok in ["Accepted", "gloo.solo.io/PeerConnected", "a", "A-b_c.d"] {
            assert!(valid_condition_type(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Gloo.io/X", "x/", "/X", "a b"] {
            assert!(!valid_condition_type(bad), "{bad}");
        }
        for ok in ["Programmed", "A", "No_Peer", "a,b:c"] {
            assert!(valid_reason(ok), "{ok}");
        }
        for bad in ["", "1a", "a,", "a:", "a b", "a-b"] {
            assert!(!valid_reason(bad), "{bad}");
        }
    }

    #[test]
    fn now_is_rfc3339_in_whole_seconds() {
        let now = now_rfc3339();
        assert_eq!(now.len(), "2026-01-01T00:00:00Z".len(), "{now}");
        assert!(now.ends_with('Z'), "{now}");
    }

    fn cond(status: &str, reason: &str, time: Option<&str>) -> Condition {
        Condition {
            type_: "Accepted".into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: None,
            last_transition_time: time.map(str::to_owned),
            observed_generation: None,
        }
    }

    #[test]
    fn l7_transition_time_is_kept_while_the_status_stays() {
        let before = [cond("True", "Accepted", Some("2026-01-01T00:00:00Z"))];
        let now = "2026-02-02T00:00:00Z";
        let mut same = [cond("True", "Accepted", None)];
        fill_conditions(&mut same, &before, Some(4), now);
        assert_eq!(
            same[0].last_transition_time.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(same[0].observed_generation, Some(4));
        assert_eq!(same[0].message.as_deref(), Some(""));
        let mut flipped = [cond("False", "NoMatchingParent", None)];
        fill_conditions(&mut flipped, &before, Some(4), now);
        assert_eq!(flipped[0].last_transition_time.as_deref(), Some(now));
        // A time the caller gives is kept.
        let mut given = [cond(
            "False",
            "NoMatchingParent",
            Some("2025-05-05T00:00:00Z"),
        )];
        fill_conditions(&mut given, &before, None, now);
        assert_eq!(
            given[0].last_transition_time.as_deref(),
            Some("2025-05-05T00:00:00Z")
        );
    }
}
