//! Incremental counterparts of [`crate::exports`] and
//! [`crate::catalog_with`] (SPEC I1): state that is updated by what changed
//! and costs work in proportion to what the change touches. The pure
//! functions stay the reference; these engines are tested to always agree
//! with them.

mod catalog;
mod export;

pub use catalog::{CatalogEngine, CatalogStep, OwnChanges};
pub use export::{ExportEngine, ExportStep};
