//! `meshpeer demo`: several clusters on one machine, from the example
//! folders, with every role running in one process (SPEC R1).
//!
//! - [`scenario`]: the embedded examples, unpacked into a state folder with
//!   certificates under one root.
//! - [`run`]: controllers, gateways, proxies and backends per cluster.
//! - [`app`]: the sample backends (httpbin's `/hostname`, Bookinfo's
//!   `/productpage`).
//! - [`client`]: `demo curl`, resolving through a cluster's DNS.
//! - [`edit`]: `demo scale` and `demo label`, `kubectl scale` and `kubectl label` for a folder.

pub mod app;
pub mod client;
pub mod edit;
pub mod run;
pub mod scenario;
