//! The few HTTP GETs `check` makes: a controller's API, health endpoints.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// GETs `http://<addr><path>`; the body of a 2xx answer, else why not, in
/// words (`connection refused`, `answered 503: ...`, `no answer within 5s`).
pub(super) async fn get(addr: &str, path: &str, within: Duration) -> Result<Bytes, String> {
    let uri: http::Uri = format!("http://{}{path}", reachable(addr))
        .parse()
        .map_err(|_| format!("{addr:?} is not HOST:PORT"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let answer = async {
        let resp = client.get(uri).await.map_err(|e| causes(&e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ))
        }
    };
    tokio::time::timeout(within, answer)
        .await
        .map_err(|_| format!("no answer within {}s", within.as_secs_f32()))?
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

/// The innermost cause says what happened ("Connection refused (os error 111)").
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
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
