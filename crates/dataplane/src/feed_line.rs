//! The lines of the catalog stream (`GET /v1/catalog/watch`, NDJSON): the
//! whole feed first, then what changed since the line before (SPEC I1), so
//! that a change to one global service costs its followers one service,
//! not the catalog.
//!
//! ```text
//! {"version":7,"catalog":{...},"callers":[...]}                 whole
//! {"version":8,"delta":{"services":[{...}],"removed":["a.b.mesh.internal"]},"callers":[...]}
//! {"version":9,"delta":{"rest":{...catalog without services...}},"callers":[...]}
//! ```
//!
//! A whole line has the shape of `GET /v1/catalog`. A delta carries the
//! global services added or changed, the hostnames removed, and the rest of
//! the catalog (cluster, links, Segments, manual entries, L7 routes, findings) only
//! when some of it changed. A follower that gets a delta without holding
//! the version before it cannot apply it and reconnects for a whole line.

use std::sync::Arc;

use imbl::ordmap::DiffItem;
use meshpeer_model::{GlobalCatalog, GlobalService};
use serde::{Deserialize, Serialize};

use crate::feed::{Caller, CatalogFeed};

/// What changed in a catalog since the version a follower holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogDelta {
    /// The version this delta applies to.
    pub since: u64,
    /// Global services added or changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Arc<GlobalService>>,
    /// Hostnames of global services removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Everything but the services, when some of it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<Arc<GlobalCatalog>>,
}

/// One line of the stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Line {
    version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    catalog: Option<Arc<GlobalCatalog>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delta: Option<CatalogDelta>,
    #[serde(default)]
    callers: Vec<Caller>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    callers_pending: bool,
}

/// Whether two catalogs differ in anything but their services.
fn rest_differs(a: &GlobalCatalog, b: &GlobalCatalog) -> bool {
    a.cluster != b.cluster
        || a.links != b.links
        || a.segments != b.segments
        || a.manual != b.manual
        || a.refused_peers != b.refused_peers
        || a.diagnostics != b.diagnostics
        || a.vip_range != b.vip_range
        || a.routes != b.routes
        || a.route_status != b.route_status
}

/// The catalog without its services.
fn rest_of(c: &GlobalCatalog) -> GlobalCatalog {
    GlobalCatalog {
        services: Default::default(),
        ..c.clone()
    }
}

/// The line (with its newline) that brings a follower holding `prev` (none:
/// nothing yet) to `next`.
pub fn encode(prev: Option<&CatalogFeed>, next: &CatalogFeed) -> Vec<u8> {
    let line = match prev {
        None => Line {
            version: next.version,
            catalog: Some(Arc::clone(&next.catalog)),
            delta: None,
            callers: next.callers.clone(),
            callers_pending: next.callers_pending,
        },
        Some(prev) => {
            let mut delta = CatalogDelta {
                since: prev.version,
                ..CatalogDelta::default()
            };
            if !Arc::ptr_eq(&prev.catalog, &next.catalog) {
                for item in prev.catalog.services.diff(&next.catalog.services) {
                    match item {
                        DiffItem::Add(_, s) | DiffItem::Update { new: (_, s), .. } => {
                            delta.services.push(Arc::clone(s))
                        }
                        DiffItem::Remove(host, _) => delta.removed.push(host.clone()),
                    }
                }
                if rest_differs(&prev.catalog, &next.catalog) {
                    delta.rest = Some(Arc::new(rest_of(&next.catalog)));
                }
            }
            Line {
                version: next.version,
                catalog: None,
                delta: Some(delta),
                callers: next.callers.clone(),
                callers_pending: next.callers_pending,
            }
        }
    };
    let mut out = serde_json::to_vec(&line).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Why a line cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("unreadable catalog line: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "a catalog delta since version {since} arrived while holding {held:?}; reconnecting for the whole catalog"
    )]
    OutOfStep { since: u64, held: Option<u64> },
    #[error("a catalog line with neither a catalog nor a delta")]
    Empty,
    #[error(
        "a catalog line longer than {max} bytes; reconnecting (a catalog this large is beyond what a follower holds)"
    )]
    TooLong { max: usize },
}

/// The longest line a follower reads by default: a whole catalog far
/// beyond the peering caps' common sizes (10,000 services x 10 endpoints
/// is ~10 MB), still a bound on what a broken or hostile stream can make
/// it hold.
pub const MAX_LINE: usize = 256 << 20;

/// Splits the stream into lines as chunks arrive. Each byte is scanned
/// once (a long line in many chunks costs its length, not its length
/// squared), and at most `max` bytes of an unfinished line are held.
#[derive(Debug)]
pub struct LineReader {
    buf: Vec<u8>,
    /// Where the next line starts in `buf`.
    start: usize,
    /// Bytes of `buf` (from `start`) known to hold no newline.
    scanned: usize,
    max: usize,
}

impl LineReader {
    pub fn new(max: usize) -> Self {
        LineReader {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max,
        }
    }

    /// Adds a chunk; then take the complete lines with
    /// [`LineReader::next_line`]. Fails when the unfinished line would grow
    /// past the limit.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), LineError> {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // Only what follows the chunk's last newline stays unfinished.
        let unfinished = match chunk.iter().rposition(|b| *b == b'\n') {
            Some(i) => chunk.len() - i - 1,
            None => self.pending() + chunk.len(),
        };
        if unfinished > self.max {
            return Err(LineError::TooLong { max: self.max });
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// The next complete line, without its newline; an error for a line
    /// longer than the limit.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, LineError>> {
        let from = self.start + self.scanned;
        let rest = self.buf.get(from..)?;
        let Some(i) = rest.iter().position(|b| *b == b'\n') else {
            self.scanned = self.buf.len() - self.start;
            return None;
        };
        let end = from + i;
        if end - self.start > self.max {
            return Some(Err(LineError::TooLong { max: self.max }));
        }
        let line = if self.start == 0 && end + 1 == self.buf.len() {
            // The whole buffer is this line: no copy.
            let mut whole = std::mem::take(&mut self.buf);
            whole.truncate(end);
            whole
        } else {
            let line = self.buf[self.start..end].to_vec();
            self.start = end + 1;
            line
        };
        self.scanned = 0;
        if self.start >= self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Some(Ok(line))
    }

    /// Bytes of an unfinished line held now.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// The feed a follower holding `current` has after `line`.
pub fn decode(current: Option<&CatalogFeed>, line: &[u8]) -> Result<CatalogFeed, LineError> {
    let line: Line = serde_json::from_slice(line)?;
    match (line.catalog, line.delta) {
        (Some(catalog), _) => Ok(CatalogFeed {
            version: line.version,
            catalog,
            callers: line.callers,
            callers_pending: line.callers_pending,
        }),
        (None, Some(delta)) => {
            let held =
                current
                    .filter(|c| c.version == delta.since)
                    .ok_or(LineError::OutOfStep {
                        since: delta.since,
                        held: current.map(|c| c.version),
                    })?;
            let mut catalog = match &delta.rest {
                Some(rest) => GlobalCatalog {
                    services: held.catalog.services.clone(),
                    ..(**rest).clone()
                },
                None => (*held.catalog).clone(),
            };
            for host in &delta.removed {
                catalog.services.remove(host);
            }
            for s in delta.services {
                catalog.services.insert(s.hostname.clone(), s);
            }
            Ok(CatalogFeed {
                version: line.version,
                catalog: Arc::new(catalog),
                callers: line.callers,
                callers_pending: line.callers_pending,
            })
        }
        (None, None) => Err(LineError::Empty),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use meshpeer_model::testing::{ClusterBuilder, svc};
    use meshpeer_model::{CatalogConfig, catalog, exports};

    use super::*;

    fn feed(version: u64, c1: &ClusterBuilder, c2: &ClusterBuilder) -> CatalogFeed {
        let cat = catalog(
            &c1.clone().build(),
            [&exports(&c2.clone().build())],
            &CatalogConfig::default(),
        );
        CatalogFeed {
            version,
            catalog: Arc::new(cat),
            callers: Vec::new(),
            callers_pending: false,
        }
    }

    #[test]
    fn i1_a_follower_rebuilds_every_version_from_the_whole_line_and_deltas() {
        let c1 = ClusterBuilder::new("cluster1").link("cluster2");
        let mut c2 = ClusterBuilder::new("cluster2");
        for i in 0..50 {
            c2 = c2.service(svc("shop", &format!("svc{i}")).global().ready(1));
        }
        let first = feed(1, &c1, &c2);
        let line = encode(None, &first);
        let mut held = decode(None, &line[..line.len() - 1]).unwrap();
        assert_eq!(held, first);

        // One service more: the delta carries it alone.
        let c2b = c2.clone().service(svc("shop", "extra").global().ready(2));
        let second = feed(2, &c1, &c2b);
        let line = encode(Some(&first), &second);
        let parsed: Line = serde_json::from_slice(&line).unwrap();
        let delta = parsed.delta.as_ref().unwrap();
        assert_eq!(delta.services.len(), 1);
        assert!(delta.removed.is_empty());
        assert!(line.len() < 2_000, "{} bytes", line.len());
        held = decode(Some(&held), &line[..line.len() - 1]).unwrap();
        assert_eq!(held, second);

        // Back: a removal; a link changes: the rest comes along.
        let c1b = c1.clone().link("cluster3");
        let third = feed(3, &c1b, &c2);
        let line = encode(Some(&second), &third);
        let parsed: Line = serde_json::from_slice(&line).unwrap();
        let delta = parsed.delta.as_ref().unwrap();
        assert_eq!(delta.removed, ["extra.shop.mesh.internal"]);
        assert!(delta.rest.is_some());
        held = decode(Some(&held), &line[..line.len() - 1]).unwrap();
        assert_eq!(held, third);

        // A delta for another version than the one held is refused.
        let line = encode(Some(&first), &third);
        let err = decode(Some(&held), &line[..line.len() - 1]).unwrap_err();
        assert!(
            matches!(err, LineError::OutOfStep { since: 1, .. }),
            "{err}"
        );
        assert!(decode(None, b"{\"version\":3}").is_err());
    }
}
