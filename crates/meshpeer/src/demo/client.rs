//! `meshpeer demo curl`: what a pod of a cluster sees. The host name is
//! resolved through that cluster's DNS (the proxy's), and the connection
//! goes to the address it answers, which that cluster's proxy listens on.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Why a lookup gave no address.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("{name} does not exist for this cluster (NXDOMAIN from {dns})")]
    NxDomain { name: String, dns: SocketAddr },
    #[error("{name}: {dns} answered {code}")]
    Code {
        name: String,
        dns: SocketAddr,
        code: String,
    },
    #[error("{name}: {dns} has no IPv4 address for it")]
    NoData { name: String, dns: SocketAddr },
    #[error("{name}: asking {dns}: {message}")]
    Io {
        name: String,
        dns: SocketAddr,
        message: String,
    },
}

/// An A-record lookup of `name` at `dns` (UDP, 3 s).
pub async fn lookup(dns: SocketAddr, name: &str) -> Result<IpAddr, LookupError> {
    let io = |message: String| LookupError::Io {
        name: name.to_owned(),
        dns,
        message,
    };
    let qname = Name::from_ascii(name).map_err(|e| io(format!("not a DNS name: {e}")))?;
    let id = fastrand_id();
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(qname, RecordType::A));
    let bytes = msg.to_vec().map_err(|e| io(e.to_string()))?;
    let socket = UdpSocket::bind(if dns.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
        .await
        .map_err(|e| io(e.to_string()))?;
    socket
        .send_to(&bytes, dns)
        .await
        .map_err(|e| io(e.to_string()))?;
    let mut buf = vec![0u8; 4096];
    let answer = loop {
        let n = tokio::time::timeout(Duration::from_secs(3), socket.recv(&mut buf))
            .await
            .map_err(|_| io("no answer within 3 s (is the demo running?)".to_owned()))?
            .map_err(|e| io(e.to_string()))?;
        let m = Message::from_vec(&buf[..n]).map_err(|e| io(e.to_string()))?;
        if m.metadata.id == id {
            break m;
        }
    };
    match answer.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => {
            return Err(LookupError::NxDomain {
                name: name.to_owned(),
                dns,
            });
        }
        other => {
            return Err(LookupError::Code {
                name: name.to_owned(),
                dns,
                code: other.to_string(),
            });
        }
    }
    answer
        .answers
        .iter()
        .find_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .ok_or(LookupError::NoData {
            name: name.to_owned(),
            dns,
        })
}

fn fastrand_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16)) as u16
}

/// A URL `demo curl` understands: `http://host[:port][/path]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl std::str::FromStr for Url {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Url> {
        let rest = s.strip_prefix("http://").unwrap_or(s);
        if rest.contains("://") {
            bail!("{s}: only http:// URLs (the mesh encrypts between clusters itself)");
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .with_context(|| format!("{s}: bad port {p:?}"))?,
            ),
            None => (authority, 80),
        };
        if host.is_empty() {
            bail!("{s}: no host");
        }
        Ok(Url {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// An HTTP response, whole.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    pub body: String,
    /// Where the connection went.
    pub address: SocketAddr,
}

/// The method and extra headers of a request (`demo curl -X`, `-H`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub headers: Vec<(String, String)>,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            method: "GET".into(),
            headers: Vec::new(),
        }
    }
}

impl Request {
    /// From curl's `-X METHOD` and `-H 'Name: value'` arguments (`demo
    /// curl`, `explain`); a header the client sets itself (Host,
    /// User-Agent, Accept) replaces it.
    pub fn new(method: &str, headers: &[String]) -> anyhow::Result<Request> {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            bail!("-X {method:?}: a method is letters only (GET, POST, ...)");
        }
        let mut out = Vec::new();
        for h in headers {
            let Some((name, value)) = h.split_once(':') else {
                bail!("-H {h:?}: a header is 'Name: value'");
            };
            let name = name.trim();
            if !meshpeer_model::routes::is_header_name(name) || value.contains(['\r', '\n']) {
                bail!("-H {h:?}: not a valid header name or value");
            }
            out.push((name.to_owned(), value.trim().to_owned()));
        }
        Ok(Request {
            method: method.to_ascii_uppercase(),
            headers: out,
        })
    }

    /// The request head, with the client's default headers unless given.
    fn head(&self, url: &Url) -> String {
        let given = |n: &str| self.headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n));
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, url.path);
        for (name, value) in [
            ("Host", format!("{}:{}", url.host, url.port)),
            ("User-Agent", "meshpeer-demo-curl".to_owned()),
            ("Accept", "*/*".to_owned()),
        ] {
            if !given(name) {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        head
    }
}

/// `GET url` as a pod of the cluster whose DNS is `dns` would.
pub async fn get(dns: SocketAddr, url: &Url, timeout: Duration) -> anyhow::Result<Response> {
    send(dns, url, &Request::default(), timeout).await
}

/// `url` with `request`'s method and headers, as a pod of the cluster
/// whose DNS is `dns` would send it.
pub async fn send(
    dns: SocketAddr,
    url: &Url,
    request: &Request,
    timeout: Duration,
) -> anyhow::Result<Response> {
    let ip = match url.host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => lookup(dns, &url.host).await?,
    };
    let address = SocketAddr::new(ip, url.port);
    let exchange = async {
        let mut conn = TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot connect to {} ({address})", url.host))?;
        let req = request.head(url);
        conn.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw)
            .await
            .with_context(|| format!("reading from {} ({address})", url.host))?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("{}: no complete answer within {timeout:?}", url.host))??;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!(
            "{} ({address}) closed the connection without an HTTP response",
            url.host
        );
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("bad status line from {address}: {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Response {
        status,
        head: head.to_owned(),
        body,
        address,
    })
}

/// The payload of a chunked body.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u: Url = "http://in-ambient.httpbin.mesh.internal:8000/hostname"
            .parse()
            .unwrap();
        assert_eq!(
            u,
            Url {
                host: "in-ambient.httpbin.mesh.internal".into(),
                port: 8000,
                path: "/hostname".into()
            }
        );
        let u: Url = "productpage.bookinfo.mesh.internal:9080".parse().unwrap();
        assert_eq!((u.port, u.path.as_str()), (9080, "/"));
        assert!("https://x".parse::<Url>().is_err());
        assert!("http://x:http/".parse::<Url>().is_err());
    }

    #[test]
    fn l1_curl_headers_and_methods_go_on_the_request_line_and_head() {
        let url: Url = "http://reviews.bookinfo.mesh.internal:9080/x"
            .parse()
            .unwrap();
        let r = Request::new(
            "post",
            &["end-user: jason".into(), "Accept: text/html".into()],
        )
        .unwrap();
        assert_eq!(
            r.head(&url),
            "POST /x HTTP/1.1\r\nHost: reviews.bookinfo.mesh.internal:9080\r\nUser-Agent: meshpeer-demo-curl\r\nend-user: jason\r\nAccept: text/html\r\nConnection: close\r\n\r\n"
        );
        assert!(Request::new("GET", &["no colon".into()]).is_err());
        assert!(Request::new("GET", &["bad name: x".into()]).is_err());
        assert!(Request::new("GET", &["x: a\r\nInjected: y".into()]).is_err());
        assert!(Request::new("G E T", &[]).is_err());
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
