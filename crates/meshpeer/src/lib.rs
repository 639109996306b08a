//! meshpeer's roles as a library, so that tests run them in-process; the
//! `meshpeer` binary is the CLI over them.

pub mod api;
pub mod check;
pub mod cluster_api;
pub mod controller;
pub mod dataplane;
pub mod demo;
pub mod duration;
pub mod explain;
pub mod feed_access;
pub mod web;
