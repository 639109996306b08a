//! Reading the labels and annotations that make a service global: scope
//! (G1-G5), takeover (K1, K2) and traffic distribution (T1, T7).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Who may see a global service (G1, S6, S7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every linked cluster, whatever its segment.
    Global,
    /// Only clusters in the exporting cluster's segment.
    Segment,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Global => "global",
            Scope::Segment => "segment",
        })
    }
}

/// Allowed values of `solo.io/service-scope`.
pub const SCOPE_VALUES: [&str; 3] = ["global", "segment", "cluster"];

/// A `solo.io/service-scope` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScopeLabel {
    Exported(Scope),
    /// `cluster`: cluster-local only (G3).
    Cluster,
    /// Anything else (G5).
    Invalid(String),
}

impl ScopeLabel {
    pub(crate) fn parse(value: &str) -> ScopeLabel {
        match value {
            "global" => ScopeLabel::Exported(Scope::Global),
            "segment" => ScopeLabel::Exported(Scope::Segment),
            "cluster" => ScopeLabel::Cluster,
            other => ScopeLabel::Invalid(other.to_owned()),
        }
    }
}

/// A `solo.io/service-takeover` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TakeoverLabel {
    On,
    Off,
    Invalid(String),
}

pub const TAKEOVER_VALUES: [&str; 2] = ["true", "false"];

impl TakeoverLabel {
    pub(crate) fn parse(value: &str) -> TakeoverLabel {
        match value {
            "true" => TakeoverLabel::On,
            "false" => TakeoverLabel::Off,
            other => TakeoverLabel::Invalid(other.to_owned()),
        }
    }
}

/// How a client's connections are spread over a global service's endpoints
/// (section 4).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum TrafficDistribution {
    /// Client's network first, other networks when none there is healthy (T2).
    #[default]
    PreferNetwork,
    /// Network, then region, then zone (T3).
    PreferClose,
    /// Network, then region (T4).
    PreferRegion,
    /// Every healthy endpoint equally (T5).
    Any,
}

pub const DISTRIBUTION_VALUES: [&str; 4] = ["PreferNetwork", "PreferClose", "PreferRegion", "Any"];

impl TrafficDistribution {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficDistribution::PreferNetwork => "PreferNetwork",
            TrafficDistribution::PreferClose => "PreferClose",
            TrafficDistribution::PreferRegion => "PreferRegion",
            TrafficDistribution::Any => "Any",
        }
    }
}

impl fmt::Display for TrafficDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TrafficDistribution {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "PreferNetwork" => TrafficDistribution::PreferNetwork,
            "PreferClose" => TrafficDistribution::PreferClose,
            "PreferRegion" => TrafficDistribution::PreferRegion,
            "Any" => TrafficDistribution::Any,
            _ => return Err(()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g1_scope_values() {
        assert_eq!(
            ScopeLabel::parse("global"),
            ScopeLabel::Exported(Scope::Global)
        );
        assert_eq!(
            ScopeLabel::parse("segment"),
            ScopeLabel::Exported(Scope::Segment)
        );
        assert_eq!(ScopeLabel::parse("cluster"), ScopeLabel::Cluster);
        assert_eq!(
            ScopeLabel::parse("Global"),
            ScopeLabel::Invalid("Global".into())
        );
        assert_eq!(ScopeLabel::parse(""), ScopeLabel::Invalid(String::new()));
    }

    #[test]
    fn t7_distribution_values_are_exact() {
        for v in DISTRIBUTION_VALUES {
            assert_eq!(v.parse::<TrafficDistribution>().unwrap().as_str(), v);
        }
        assert!("preferclose".parse::<TrafficDistribution>().is_err());
    }
}
