//! Persistent maps of shared values: the exports and catalogs of this crate
//! keep their services in [`imbl::OrdMap`]s, so that a new version that
//! changes one service costs O(log n) and shares everything else with the
//! previous one, and a reader can list what changed between two versions
//! without visiting what they share ([`imbl::OrdMap::diff`]).
//!
//! On the wire (JSON, YAML) such a map is the list of its values in key
//! order, as the `Vec`s it replaced were.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeSeq, Serializer};

/// A map from a value's key to the shared value.
pub type ArcMap<K, V> = imbl::OrdMap<K, Arc<V>>;

/// A value that knows its key in an [`ArcMap`].
pub trait Keyed {
    type Key: Ord + Clone;
    fn key(&self) -> Self::Key;
}

/// Builds a map from values, keyed by [`Keyed::key`]; a later value with
/// the same key replaces an earlier one.
pub fn from_values<V: Keyed>(values: impl IntoIterator<Item = Arc<V>>) -> ArcMap<V::Key, V> {
    let mut map = ArcMap::new();
    for v in values {
        map.insert(v.key(), v);
    }
    map
}

/// `#[serde(with = "crate::pmap::as_seq")]`: the map as the list of its values.
pub mod as_seq {
    use super::*;

    pub fn serialize<S, V>(map: &ArcMap<V::Key, V>, s: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        V: Keyed + Serialize,
    {
        let mut seq = s.serialize_seq(Some(map.len()))?;
        for v in map.values() {
            seq.serialize_element(&**v)?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D, V>(d: D) -> Result<ArcMap<V::Key, V>, D::Error>
    where
        D: Deserializer<'de>,
        V: Keyed + Deserialize<'de>,
    {
        struct Seq<V>(PhantomData<V>);
        impl<'de, V: Keyed + Deserialize<'de>> Visitor<'de> for Seq<V> {
            type Value = ArcMap<V::Key, V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut map = ArcMap::new();
                while let Some(v) = seq.next_element::<V>()? {
                    map.insert(v.key(), Arc::new(v));
                }
                Ok(map)
            }
        }
        d.deserialize_seq(Seq(PhantomData))
    }
}
