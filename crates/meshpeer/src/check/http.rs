//! The few HTTP GETs `check` makes: a controller's API, health endpoints
//! (through [`crate::api::get`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;

/// GETs `http://<addr><path>` (`addr` as [`reachable`] makes it); the body
/// of a 2xx answer, else why not, in words (`connection refused`,
/// `answered 503: ...`, `no answer within 5s`).
pub(super) async fn get(addr: &str, path: &str, within: Duration) -> Result<Bytes, String> {
    crate::api::get(&reachable(addr), path, within)
        .await
        .map_err(|e| e.to_string())
}

/// A listen address as something to connect to: `0.0.0.0:N` is reached at
/// `127.0.0.1:N`, `[::]:N` at `[::1]:N`.
pub(super) fn reachable(addr: &str) -> String {
    match addr.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let ip = match a.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            SocketAddr::new(ip, a.port()).to_string()
        }
        _ => addr.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_are_reached_on_loopback() {
        assert_eq!(reachable("0.0.0.0:15014"), "127.0.0.1:15014");
        assert_eq!(reachable("[::]:15014"), "[::1]:15014");
        assert_eq!(reachable("10.0.0.1:15014"), "10.0.0.1:15014");
        assert_eq!(reachable("controller:15014"), "controller:15014");
    }
}
