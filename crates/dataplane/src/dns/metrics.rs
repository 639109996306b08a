//! Counters of the DNS server.

use std::fmt::Write as _;
use std::sync::Arc;

use meshpeer_listener::ListenerMetrics;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// How one query was answered: the `result` label of `dns_queries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum QueryResult {
    /// Addresses from the table.
    Answer,
    /// NOERROR without answers: the name is ours but has nothing of the asked type.
    NoData,
    /// The name is under one of our domains and not visible here.
    NxDomain,
    /// The upstream answered and its answer was relayed (whatever its response code).
    Forwarded,
    /// The upstream did not answer in time, or failed.
    ServFail,
    /// Not ours and no upstream configured.
    Refused,
    /// Not exactly one question.
    FormErr,
    /// An opcode other than QUERY (UPDATE, NOTIFY, ...).
    NotImp,
    /// To forward, but as many forwards as allowed were in flight: answered
    /// SERVFAIL at once (SPEC B5).
    Overloaded,
}

impl QueryResult {
    const ALL: [Self; 9] = [
        Self::Answer,
        Self::NoData,
        Self::NxDomain,
        Self::Forwarded,
        Self::ServFail,
        Self::Refused,
        Self::FormErr,
        Self::NotImp,
        Self::Overloaded,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Answer => "answer",
            Self::NoData => "nodata",
            Self::NxDomain => "nxdomain",
            Self::Forwarded => "forwarded",
            Self::ServFail => "servfail",
            Self::Refused => "refused",
            Self::FormErr => "formerr",
            Self::NotImp => "notimp",
            Self::Overloaded => "overloaded",
        }
    }
}

impl EncodeLabelValue for QueryResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: QueryResult,
}

/// Metrics of the DNS server: `dns_queries_total{result=...}`, and the TCP
/// listener's bounds (`dns_tcp_listener_...`).
#[derive(Debug)]
pub struct DnsMetrics {
    queries: Family<ResultLabels, Counter>,
    /// `queries`' counter of each result (in [`QueryResult::ALL`]'s order),
    /// counted into without the family's lock and hash per query.
    by_result: [Counter; QueryResult::ALL.len()],
    /// DNS over TCP: connections shed (the oldest when too many are open),
    /// idle ones closed.
    pub tcp: Arc<ListenerMetrics>,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        let queries = Family::<ResultLabels, Counter>::default();
        let by_result =
            QueryResult::ALL.map(|result| queries.get_or_create(&ResultLabels { result }).clone());
        DnsMetrics {
            queries,
            by_result,
            tcp: Arc::default(),
        }
    }
}

impl DnsMetrics {
    /// Registers the counters under the prefix `dns`; every `result` starts at 0 so
    /// that rates and alerts work before the first query of a kind.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self::default();
        let dns = registry.sub_registry_with_prefix("dns");
        dns.register(
            "queries",
            "DNS queries handled by the proxy's DNS server, by result",
            metrics.queries.clone(),
        );
        let metrics = DnsMetrics {
            tcp: ListenerMetrics::register(dns.sub_registry_with_prefix("tcp")),
            ..metrics
        };
        Arc::new(metrics)
    }

    pub(crate) fn count(&self, result: QueryResult) {
        self.by_result[result as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    /// `count` finds a result's counter by its discriminant.
    #[test]
    fn results_are_listed_in_declaration_order() {
        for (i, result) in QueryResult::ALL.into_iter().enumerate() {
            assert_eq!(result as usize, i, "{result:?}");
        }
    }

    #[test]
    fn counters_are_named_and_labelled() {
        let mut registry = Registry::default();
        let metrics = DnsMetrics::register(&mut registry);
        metrics.count(QueryResult::NxDomain);
        metrics.count(QueryResult::NxDomain);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("dns_queries_total{result=\"nxdomain\"} 2"),
            "{text}"
        );
        for result in QueryResult::ALL
            .into_iter()
            .filter(|r| *r != QueryResult::NxDomain)
        {
            let line = format!("dns_queries_total{{result=\"{}\"}} 0", result.as_str());
            assert!(text.contains(&line), "{line} missing in {text}");
        }
    }
}
