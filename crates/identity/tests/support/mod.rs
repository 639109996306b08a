//! Shared fixtures: a mesh of CAs, identities, and a handshake driver that
//! runs both sides of a TLS 1.3 connection and one request/response.
#![allow(dead_code)]

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshpeer_identity::{ClusterCa, Identity, RootCa, SpiffeId};
use rustls::{ClientConfig, ProtocolVersion, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub(crate) const HOUR: Duration = Duration::from_secs(3600);
pub(crate) const DAY: Duration = Duration::from_secs(24 * 3600);
pub(crate) const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// A root valid from a day ago for ten years.
pub(crate) fn root(common_name: &str) -> RootCa {
    RootCa::generate(common_name, 10 * YEAR, SystemTime::now() - DAY).unwrap()
}

/// An intermediate for `cluster`, valid from a day ago for a year.
pub(crate) fn cluster(root: &RootCa, cluster: &str) -> ClusterCa {
    root.issue_intermediate(cluster, cluster, YEAR, SystemTime::now() - DAY)
        .unwrap()
}

pub(crate) fn spiffe(trust_domain: &str) -> SpiffeId {
    SpiffeId::new(trust_domain, "meshpeer-system", "meshpeer").unwrap()
}

/// An identity in trust domain `cluster` with its own intermediate from
/// `root`, holding a leaf valid for an hour from now.
pub(crate) fn identity(root: &RootCa, cluster_name: &str) -> Arc<Identity> {
    identity_at(root, cluster_name, SystemTime::now(), HOUR)
}

/// Like [`identity`] but with a leaf issued at `now` for `validity`.
pub(crate) fn identity_at(
    root: &RootCa,
    cluster_name: &str,
    now: SystemTime,
    validity: Duration,
) -> Arc<Identity> {
    let ca = root
        .issue_intermediate(cluster_name, cluster_name, YEAR, now - DAY)
        .unwrap();
    Arc::new(Identity::new(ca, spiffe(cluster_name), validity, now).unwrap())
}

/// What one side saw of a successful exchange.
#[derive(Debug)]
pub(crate) struct Side {
    pub(crate) peer_certs: Vec<CertificateDer<'static>>,
    pub(crate) alpn: Option<Vec<u8>>,
    pub(crate) version: Option<ProtocolVersion>,
}

#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) server: io::Result<Side>,
    pub(crate) client: io::Result<Side>,
}

/// Runs a handshake over an in-memory duplex pipe, then the client sends
/// "ping" and the server answers "pong" (in TLS 1.3 a client only learns
/// that the server refused its certificate when it next reads).
pub(crate) async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    handshake_over(server, client, server_io, client_io).await
}

pub(crate) async fn handshake_over<S, C>(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    server_io: S,
    client_io: C,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: AsyncRead + AsyncWrite + Unpin,
{
    let server_side = async move {
        let mut tls = TlsAcceptor::from(server).accept(server_io).await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await?;
        tls.flush().await?;
        let (_, conn) = tls.get_ref();
        let side = Side {
            peer_certs: conn
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            version: conn.protocol_version(),
        };
        tls.shutdown().await?;
        Ok(side)
    };
    let client_side = async move {
        let name = ServerName::try_from("meshpeer.invalid").unwrap();
        let mut tls = TlsConnector::from(client).connect(name, client_io).await?;
        tls.write_all(b"ping").await?;
        tls.flush().await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        let (_, conn) = tls.get_ref();
        Ok(Side {
            peer_certs: conn
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            version: conn.protocol_version(),
        })
    };
    let (server, client) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(server_side, client_side)
    })
    .await
    .expect("handshake did not finish within 20 s");
    Outcome { server, client }
}

/// A certificate chain and its key.
pub(crate) type Chain = (
    Vec<CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
);

/// Both ends of a TCP connection on loopback (port 0): (client, server).
pub(crate) async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    (client.unwrap(), accepted.unwrap().0)
}

/// Leaves that our `ClusterCa` would never issue, signed by a cluster's
/// intermediate read back from its cacerts directory.
pub(crate) fn custom_leaf(ca: &ClusterCa, sans: Vec<rcgen::SanType>) -> Chain {
    let dir = tempfile::tempdir().unwrap();
    ca.write(dir.path()).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.path().join("ca-key.pem")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(ca.cert_der(), ca_key).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans;
    params.not_before = (SystemTime::now() - HOUR).into();
    params.not_after = (SystemTime::now() + HOUR).into();
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (
        vec![cert.der().clone(), ca.cert_der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server presenting `chain` that does not ask for a client certificate.
pub(crate) fn plain_server(
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A client presenting `cert` (chain and key), or no certificate, that
/// accepts any server.
pub(crate) fn plain_client(
    cert: Option<(
        Vec<CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    )>,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer));
    let mut config = match cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
