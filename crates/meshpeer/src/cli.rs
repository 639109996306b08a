//! Command-line interface: every flag of every role, parsed into typed values.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use meshpeer_dataplane::endpoint_policy::parse_cidr;
use meshpeer_model::Cidr;
use meshpeer_peering::Limits;

#[derive(Debug, Parser)]
#[command(
    name = "meshpeer",
    version,
    about = "Links Kubernetes clusters into one mesh of global services",
    long_about = "Links Kubernetes clusters into one multicluster mesh and makes chosen services \
reachable from every linked cluster under a global hostname \
(<name>.<namespace>.mesh.internal, or a segment domain)."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print the global services one cluster would hold, from cluster folders.
    ///
    /// Each DIR is one cluster in file mode: Kubernetes YAML files plus a
    /// cluster.yaml (name, network, region, zone, trustDomain). The clusters
    /// are treated as running and linked as their remote-peer Gateways say.
    /// Diagnostics go to stderr, one per line.
    Render(RenderArgs),
    /// Print a cluster's east-west gateway (SPEC C2), or write it into its folder.
    Expose(ExposeArgs),
    /// Link clusters: remote-peer Gateways, both ways between every pair of
    /// DIRs, or one way with --from/--to (SPEC C3, C4).
    Link(LinkArgs),
    /// Remove the remote-peer Gateways `link` created.
    Unlink(LinkArgs),
    /// Run a cluster's controller: read the cluster, peer with the clusters
    /// its remote-peer Gateways name, keep the global catalog, publish it.
    Controller(Box<ControllerArgs>),
    /// Run a cluster's proxy: DNS for the global names and one listener per
    /// VIP:port, following the controller's catalog (SPEC D1, D2).
    Proxy(Box<ProxyArgs>),
    /// Run a cluster's east-west gateway: HBONE tunnels from linked clusters
    /// to local endpoints, following the controller's catalog (SPEC D3).
    Gateway(Box<GatewayArgs>),
    /// Show a running controller's peers (connected since, last sync,
    /// versions, staleness) and who it serves.
    Status(StatusArgs),
    /// Make the shared root CA, per-cluster intermediates (cacerts layout)
    /// and tokens for proxies and gateways.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Check one or more clusters: configuration, certificates, controller,
    /// data plane, gateways, peers, networks, segments, diagnostics (SPEC O4).
    /// Exits 1 when a check fails (a warning alone exits 0).
    Check(Box<CheckArgs>),
    /// Why HOST resolves (or not) in a cluster, and where a connection to
    /// it goes: the labels and links behind it, the first rule that keeps
    /// a cluster's part out, the VIP, the traffic distribution and the
    /// endpoint tiers in the order the proxy tries them.
    Explain(Box<ExplainArgs>),
    /// Run several clusters on this machine from an example scenario
    /// (controllers, gateways, proxies, sample backends), or act on a
    /// running demo (`curl`, `scale`).
    Demo(DemoArgs),
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct DemoArgs {
    #[command(subcommand)]
    pub(crate) command: Option<DemoCommand>,
    /// The scenario: `httpbin` (seed 004), `bookinfo` (seed 000),
    /// `bookinfo-subsets` (seed 001: reviews-v1 and reviews-v2 in two
    /// clusters, an HTTPRoute between them) or `httpbin-flat` (httpbin with
    /// both clusters on one network, seed 002).
    #[arg(value_name = "SCENARIO", default_value = "httpbin")]
    pub(crate) scenario: String,
    #[command(flatten)]
    pub(crate) state: DemoState,
    /// Start from the example again (drops edits to the cluster folders;
    /// keeps the certificates).
    #[arg(long)]
    pub(crate) reset: bool,
    /// Start, wait until ready, print the summary and exit (for scripts).
    #[arg(long, hide = true)]
    pub(crate) check_only: bool,
    /// Unpack the scenario and make the certificates, then exit.
    #[arg(long)]
    pub(crate) prepare_only: bool,
    /// Run only this cluster of the scenario (one process per cluster, e.g.
    /// each in its own network namespace).
    #[arg(long, value_name = "CLUSTER")]
    pub(crate) only: Option<String>,
    /// Where the Global services page of every cluster is served.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:15000")]
    pub(crate) web_listen: std::net::SocketAddr,
    /// Do not serve the Global services page.
    #[arg(long, conflicts_with = "web_listen")]
    pub(crate) no_web: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DemoState {
    /// Folder holding each scenario's cluster folders and certificates.
    #[arg(
        long = "state",
        value_name = "DIR",
        env = "MESHPEER_DEMO_STATE",
        default_value = "meshpeer-demo",
        global = true
    )]
    pub(crate) dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DemoCommand {
    /// GET a URL as a pod of a cluster would: the name is resolved through
    /// that cluster's DNS and the connection goes through its proxy.
    Curl {
        #[arg(long, value_name = "NAME")]
        cluster: String,
        #[arg(value_name = "URL")]
        url: String,
        /// Print the status line and headers too.
        #[arg(short = 'i', long)]
        include: bool,
        /// An extra request header, `NAME: VALUE` (repeatable), as curl's.
        #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// The request method, as curl's.
        #[arg(
            short = 'X',
            long = "request",
            value_name = "METHOD",
            default_value = "GET"
        )]
        method: String,
        /// Give up after this long.
        #[arg(long, default_value = "10s", value_parser = duration)]
        timeout: Duration,
    },
    /// Scale a Deployment of a cluster folder, as `kubectl scale` would:
    /// its Pods leave (or come back to) the folder.
    Scale {
        #[arg(long, value_name = "NAME")]
        cluster: String,
        #[arg(short = 'n', long, value_name = "NAMESPACE", default_value = "default")]
        namespace: String,
        /// `deployment/NAME` (or `NAME`).
        #[arg(value_name = "deployment/NAME")]
        target: String,
        #[arg(long)]
        replicas: usize,
    },
    /// Label an object of a cluster folder, as `kubectl label` would
    /// (`KEY=VALUE` sets, `KEY-` removes).
    Label {
        #[arg(long, value_name = "NAME")]
        cluster: String,
        #[arg(short = 'n', long, value_name = "NAMESPACE", default_value = "default")]
        namespace: String,
        /// `svc/NAME`, `namespace/NAME`, ... or the type alone, then NAME first in LABELS.
        #[arg(value_name = "TYPE[/NAME]")]
        resource: String,
        /// `[NAME] KEY=VALUE ... KEY- ...`
        #[arg(value_name = "LABELS", required = true)]
        labels: Vec<String>,
        /// Replace a label's existing value.
        #[arg(long)]
        overwrite: bool,
    },
    /// Print a running demo's clusters: folders, DNS, API and gateway addresses.
    Env,
}

fn duration(s: &str) -> Result<Duration, String> {
    meshpeer::duration::parse(s)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ControllerArgs {
    /// File mode: the cluster folder (manifests and cluster.yaml), watched:
    /// edits apply live.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub(crate) cluster_dir: Option<PathBuf>,
    /// Kubernetes mode: watch the API server of the kube context and write
    /// ServiceEntries and Gateway status with server-side apply.
    #[arg(long)]
    pub(crate) kubernetes: bool,
    /// Kubernetes mode: the kubeconfig context (default: the current one).
    #[arg(long, value_name = "NAME", requires = "kubernetes")]
    pub(crate) context: Option<String>,
    /// Kubernetes mode: this cluster's name.
    #[arg(
        long,
        env = "MESHPEER_CLUSTER_NAME",
        value_name = "NAME",
        required_if_eq("kubernetes", "true")
    )]
    pub(crate) cluster_name: Option<String>,
    /// Kubernetes mode: network (default: the istio-system label, else the name).
    #[arg(long, env = "MESHPEER_NETWORK", requires = "kubernetes")]
    pub(crate) network: Option<String>,
    /// Kubernetes mode: locality of workloads whose node has none.
    #[arg(long, env = "MESHPEER_REGION", requires = "kubernetes")]
    pub(crate) region: Option<String>,
    #[arg(long, env = "MESHPEER_ZONE", requires = "kubernetes")]
    pub(crate) zone: Option<String>,
    /// Kubernetes mode: SPIFFE trust domain (default: the cluster name).
    #[arg(long, env = "MESHPEER_TRUST_DOMAIN", requires = "kubernetes")]
    pub(crate) trust_domain: Option<String>,
    /// The cluster's intermediate CA in the cacerts layout (ca-cert.pem,
    /// ca-key.pem, root-cert.pem, cert-chain.pem), bound to the cluster's
    /// trust domain; see `meshpeer certs`. Only the controller holds the key:
    /// it signs its proxies' and gateways' certificates.
    #[arg(long, value_name = "DIR", env = "MESHPEER_CACERTS")]
    pub(crate) cacerts: PathBuf,
    /// Where peers connect. Default in file mode: the address of the
    /// cluster's east-west Gateway and its xds-tls port; else 0.0.0.0:15012.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) peering_listen: Option<SocketAddr>,
    /// The local API: status, catalog (and its stream, to loopback callers
    /// only), metrics.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:15014")]
    pub(crate) api_listen: SocketAddr,
    /// The cluster listener (TLS): certificates for proxies and gateways
    /// (Istio's CA API) and the catalog over mutual TLS. Default in file
    /// mode: the east-west Gateway's address, port 15013 (127.0.0.1:15013
    /// without one); in Kubernetes mode: 0.0.0.0:15013.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) cluster_listen: Option<SocketAddr>,
    /// DNS names and IP addresses the cluster listener's certificate also
    /// carries (after its SPIFFE ID), for clients that check the name they
    /// dial, as Istio's CA clients do (ztunnel's `CA_ADDRESS`). Default:
    /// the listen address when it is a specific one; in Kubernetes mode
    /// also `meshpeer-controller.istio-system.svc` and its
    /// `.cluster.local` form.
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    pub(crate) cluster_listener_names: Vec<String>,
    /// A static tokens file for the signing endpoint, one
    /// `token,namespace,serviceaccount` per line (`meshpeer certs token`
    /// adds one); re-read when it changes. Kubernetes mode checks
    /// ServiceAccount tokens with a TokenReview, and this file as well if given.
    #[arg(long, value_name = "FILE", env = "MESHPEER_TOKENS")]
    pub(crate) tokens: Option<PathBuf>,
    /// Kubernetes mode: the audience ServiceAccount tokens must be for.
    #[arg(long, value_name = "AUDIENCE", default_value = "istio-ca")]
    pub(crate) token_audience: String,
    /// Longest lifetime of the certificates signed for proxies and gateways.
    #[arg(long, default_value = "24h", value_parser = duration)]
    pub(crate) max_cert_lifetime: Duration,
    /// Who may follow the catalog (and report flow counts) over mutual TLS,
    /// as NAMESPACE/SERVICEACCOUNT of this cluster's trust domain (repeat,
    /// or separate with commas).
    #[arg(
        long,
        value_name = "NS/SA",
        value_delimiter = ',',
        value_parser = ns_sa,
        default_value = "istio-system/meshpeer-proxy,istio-eastwest/istio-eastwest"
    )]
    pub(crate) feed_identities: Vec<(String, String)>,
    /// Serve the Global services page and its JSON API (`/api/v1/...`) here,
    /// e.g. 127.0.0.1:15000. Off unless given.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) web_listen: Option<SocketAddr>,
    /// File mode: where generated ServiceEntries and peer status go
    /// (default: DIR/.meshpeer/out).
    #[arg(long, value_name = "DIR")]
    pub(crate) output_dir: Option<PathBuf>,
    /// How long a lost peer's last export is kept (marked stale).
    #[arg(long, default_value = "2m", value_parser = duration)]
    pub(crate) grace: Duration,
    /// Heartbeat interval of peering streams (silent for 3: dropped).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub(crate) heartbeat: Duration,
    /// Lifetime of the controller's own certificate (renewed at 2/3).
    #[arg(long, default_value = "24h", value_parser = duration)]
    pub(crate) cert_lifetime: Duration,
    /// Range global-service VIPs are allocated from.
    #[arg(long, value_name = "CIDR", default_value = "240.241.0.0/16")]
    pub(crate) vip_cidr: Cidr,
    /// Which Istio reads the output: `upstream` (default), ServiceEntries
    /// selecting WorkloadEntries as upstream istiod and ztunnel route them,
    /// or `solo`, the seeds' inline-endpoint ServiceEntries
    /// (ARCHITECTURE.md, "Istio flavors").
    #[arg(long, value_enum, default_value_t = IstioFlavor::Upstream)]
    pub(crate) istio_flavor: IstioFlavor,
    /// Only controllers of these trust domains may peer with this cluster
    /// (comma-separated or repeated). Default: any other trust domain under
    /// the shared root, as clusters that link here one way need (SPEC C4).
    #[arg(
        long,
        value_name = "TD,...",
        value_delimiter = ',',
        env = "MESHPEER_ALLOWED_PEERS"
    )]
    pub(crate) allowed_peers: Vec<String>,
    /// Bounds of the TLS listeners (SPEC B5).
    #[command(flatten)]
    pub(crate) listener: ListenerArgs,
    /// Connections the cluster listener and the peering listener each
    /// serve at once (after their TLS handshake); one more is refused.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub(crate) max_connections: usize,
    /// File mode: a manifest rewritten in place (not renamed into place)
    /// that would lose objects or readability is used once it has not
    /// changed for this long; a slow writer's truncate-then-write no
    /// longer withdraws its services for a moment.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub(crate) write_settle: Duration,
    /// Services one peer may make this cluster hold; those beyond are
    /// refused, counted and shown on the peer's Gateway (SPEC B2).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_services)]
    pub(crate) max_peer_services: usize,
    /// Endpoints a peer's service may have; a service with more is refused.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_endpoints_per_service)]
    pub(crate) max_endpoints_per_service: usize,
    /// Ports a peer's service (and each of its endpoints) may have; a
    /// service with more is refused.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_ports_per_service)]
    pub(crate) max_ports_per_service: usize,
    /// Endpoints of one peer, all its services together; a service that
    /// would go beyond is refused.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_endpoints)]
    pub(crate) max_peer_endpoints: usize,
    /// Take peers' endpoints in this CIDR (or at this address) although
    /// such addresses are refused by default: loopback, link-local,
    /// multicast, unspecified, broadcast (SPEC B1, P5). Repeat for more.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub(crate) allow_endpoints: Vec<Cidr>,
    /// Log format (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

/// What a TLS listener holds before and after authentication (SPEC B5).
#[derive(Debug, clap::Args)]
pub(crate) struct ListenerArgs {
    /// Connections accepted and not yet through their TLS handshake, held
    /// at once per listener; one more closes the oldest of them (counted
    /// as shed), so a flood cannot keep a legitimate caller out.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub(crate) max_pending_connections: usize,
    /// How long a connection may take to complete its TLS handshake.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub(crate) handshake_timeout: Duration,
    /// An authenticated connection with nothing in flight for this long is
    /// closed.
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub(crate) idle_timeout: Duration,
}

impl ListenerArgs {
    /// The limits of a listener serving at most `max_connections`.
    pub(crate) fn limits(&self, max_connections: usize) -> meshpeer_listener::Limits {
        meshpeer_listener::Limits {
            max_pending: self.max_pending_connections,
            handshake_timeout: Some(self.handshake_timeout),
            max_connections,
            idle_timeout: self.idle_timeout,
        }
    }
}

impl ControllerArgs {
    /// What one peer may make this cluster hold (SPEC B1, B2).
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_services: self.max_peer_services,
            max_endpoints_per_service: self.max_endpoints_per_service,
            max_ports_per_service: self.max_ports_per_service,
            max_endpoints: self.max_peer_endpoints,
            allow_endpoints: self.allow_endpoints.clone(),
        }
    }
}

/// `NAMESPACE/SERVICEACCOUNT`.
fn ns_sa(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
            Ok((ns.to_owned(), sa.to_owned()))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/SERVICEACCOUNT")),
    }
}

/// How a proxy or gateway reaches its controller and obtains its
/// certificate (SPEC P7): the shared root and a token, never the CA key.
#[derive(Debug, clap::Args)]
pub(crate) struct ControllerConnArgs {
    /// The controller's cluster listener (its --cluster-listen): the
    /// certificate-signing endpoint and the catalog, over TLS.
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "MESHPEER_CONTROLLER",
        default_value = "127.0.0.1:15013",
        value_parser = host_port
    )]
    pub(crate) controller: String,
    /// The shared root certificate (a cluster's root-cert.pem).
    #[arg(long, value_name = "FILE", env = "MESHPEER_ROOT_CERT")]
    pub(crate) root_cert: PathBuf,
    /// The token presented to the controller for a certificate, re-read
    /// each time: in Kubernetes a projected ServiceAccount token with
    /// audience istio-ca; in file mode one made by `meshpeer certs token`.
    #[arg(long, value_name = "FILE", env = "MESHPEER_TOKEN_FILE")]
    pub(crate) token_file: PathBuf,
    /// This cluster's SPIFFE trust domain (default: --cluster-name). The
    /// controller must be spiffe://<trust domain>/ns/istio-system/sa/meshpeer.
    #[arg(
        long,
        value_name = "TD",
        env = "MESHPEER_TRUST_DOMAIN",
        required_unless_present = "cluster_name"
    )]
    pub(crate) trust_domain: Option<String>,
    /// This cluster's name: the default trust domain.
    #[arg(long, value_name = "NAME", env = "MESHPEER_CLUSTER_NAME")]
    pub(crate) cluster_name: Option<String>,
    /// The namespace of this process's identity (its ServiceAccount's).
    #[arg(long, value_name = "NS")]
    pub(crate) namespace: Option<String>,
    /// The service account of this process's identity.
    #[arg(long, value_name = "SA")]
    pub(crate) service_account: Option<String>,
    /// How often the flow counts (connections, failures, bytes per source
    /// cluster, destination cluster and global service) are sent to the
    /// controller, over the same mutual TLS as the catalog; once more on
    /// shutdown. `0s`: never.
    #[arg(long, default_value = "5s", value_parser = duration, value_name = "DURATION")]
    pub(crate) report_interval: Duration,
}

/// `HOST:PORT`, as `--controller` takes it.
fn host_port(s: &str) -> Result<String, String> {
    match s.parse::<http::uri::Authority>() {
        Ok(a) if a.port_u16().is_some() && !a.host().is_empty() && !s.contains('@') => {
            Ok(s.to_owned())
        }
        _ => Err(format!("{s:?} is not HOST:PORT")),
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct ProxyArgs {
    // Its identity: spiffe://<trust domain>/ns/istio-system/sa/meshpeer-proxy
    // unless --namespace/--service-account say otherwise.
    #[command(flatten)]
    pub(crate) conn: ControllerConnArgs,
    /// Where the DNS server answers (UDP and TCP).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:15053")]
    pub(crate) dns_listen: SocketAddr,
    /// Where other names are forwarded (default: none, they are refused);
    /// repeat for more: the next is asked when one does not answer within
    /// its timeout, and the last to answer is asked first.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) dns_upstream: Vec<SocketAddr>,
    /// Queries forwarded upstream at once (each a task and a socket); one
    /// more is answered SERVFAIL at once and counted (SPEC B5).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub(crate) dns_max_forwards: usize,
    /// DNS-over-TCP connections open at once; one more closes the oldest.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub(crate) dns_max_tcp_connections: usize,
    /// How long resolving a host name may take (a peer's gateway given as
    /// a name, a manual entry's endpoint); then that attempt fails.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub(crate) resolve_timeout: Duration,
    /// How long a client of a routed (L7) port has to send a whole request
    /// head, on a new connection or between requests on a kept-alive one;
    /// then it is closed (SPEC B5). HTTP/2 clients are pinged at this
    /// interval.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub(crate) header_timeout: Duration,
    /// How long a client of a routed (L7) port may pause while sending a
    /// request body; then the request is answered 408 and the connection
    /// closed (SPEC B5).
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub(crate) body_timeout: Duration,
    /// Event loops (threads) serving the connections of routed (L7) ports,
    /// each with its own pool of backend connections (default: one per
    /// core); 0 serves them on the shared runtime with the L4 ports.
    #[arg(long, value_name = "N")]
    pub(crate) l7_workers: Option<usize>,
    /// How routed (L7) ports serve HTTP/1.1 requests without a body or
    /// with a small one of declared length: `direct`, with the proxy's own
    /// exchange, a connection handed to hyper at its first request that
    /// does not fit (a chunked body, an upgrade, HTTP/1.0, a redirect,
    /// ...); `hyper`, every connection with hyper.
    #[arg(long, value_name = "HOW", default_value = "direct", value_parser = ["direct", "hyper"])]
    pub(crate) l7_http1: String,
    /// Also capture the ClusterIP:port of taken-over Services (SPEC K1).
    #[arg(long)]
    pub(crate) capture_cluster_ips: bool,
    /// Locality of the workloads this proxy serves (default: the cluster's).
    #[arg(long, value_name = "REGION", requires = "zone")]
    pub(crate) region: Option<String>,
    /// Zone of the workloads this proxy serves (with --region).
    #[arg(long, value_name = "ZONE", requires = "region")]
    pub(crate) zone: Option<String>,
    /// Dial endpoints in this CIDR (or at this address) although they are
    /// refused by default: loopback, link-local (cloud metadata),
    /// multicast, unspecified, broadcast and this node's addresses (SPEC
    /// P5). Repeat for more. The VIP range stays refused.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub(crate) allow_endpoints: Vec<Cidr>,
    /// This node's address, never dialled as an endpoint, like the
    /// addresses of the local interfaces (read from /proc/net, every 30 s).
    /// Repeat or comma-separate; in Kubernetes, the downward API's
    /// status.hostIP.
    #[arg(
        long,
        value_name = "IP",
        env = "MESHPEER_NODE_IP",
        value_delimiter = ','
    )]
    pub(crate) node_ip: Vec<IpAddr>,
    /// Serve Prometheus metrics (GET /metrics) and GET /healthz here.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) metrics: Option<SocketAddr>,
    /// Lifetime of the proxy's certificate (renewed at 2/3).
    #[arg(long, default_value = "24h", value_parser = duration)]
    pub(crate) cert_lifetime: Duration,
    /// Log format (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GatewayArgs {
    // Its identity: spiffe://<trust domain>/ns/istio-eastwest/sa/istio-eastwest
    // unless --namespace/--service-account say otherwise.
    #[command(flatten)]
    pub(crate) conn: ControllerConnArgs,
    /// Where HBONE tunnels arrive (the east-west Gateway's cross-network port).
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:15008")]
    pub(crate) listen: SocketAddr,
    /// Bounds of the HBONE listener (SPEC B5).
    #[command(flatten)]
    pub(crate) listener: ListenerArgs,
    /// Callers' connections served at once (after their TLS handshake; a
    /// proxy pools one or a few); one more is refused.
    #[arg(long, default_value_t = 16_384, value_name = "N")]
    pub(crate) max_connections: usize,
    /// Where an ambient Pod's ztunnel takes HBONE: the inner stream of
    /// Istio's double HBONE (a ztunnel caller's tunnel) is forwarded, as
    /// it is, to this port of an ambient endpoint. meshpeer's own proxies
    /// mark their tunnels and keep going to the target port.
    #[arg(long, default_value_t = 15008, value_name = "PORT")]
    pub(crate) ambient_inbound_port: u16,
    /// Dial endpoints in this CIDR (or at this address) although they are
    /// refused by default: loopback, link-local (cloud metadata),
    /// multicast, unspecified, broadcast and this node's addresses (SPEC
    /// P5). Repeat for more. The VIP range stays refused.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub(crate) allow_endpoints: Vec<Cidr>,
    /// This node's address, never dialled as an endpoint, like the
    /// addresses of the local interfaces (read from /proc/net, every 30 s).
    /// Repeat or comma-separate; in Kubernetes, the downward API's
    /// status.hostIP.
    #[arg(
        long,
        value_name = "IP",
        env = "MESHPEER_NODE_IP",
        value_delimiter = ','
    )]
    pub(crate) node_ip: Vec<IpAddr>,
    /// Serve Prometheus metrics (GET /metrics) and GET /healthz here.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) metrics: Option<SocketAddr>,
    /// Lifetime of the gateway's certificate (renewed at 2/3).
    #[arg(long, default_value = "24h", value_parser = duration)]
    pub(crate) cert_lifetime: Duration,
    /// Log format (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("clusters").required(true).multiple(true).args(["cluster", "context"])
))]
pub(crate) struct CheckArgs {
    /// File mode: a cluster folder; repeat for each cluster.
    #[arg(long, value_name = "DIR", conflicts_with = "context")]
    pub(crate) cluster: Vec<PathBuf>,
    /// Kubernetes mode: a kubeconfig context; repeat (or separate with
    /// commas) for each cluster.
    #[arg(
        long,
        visible_alias = "contexts",
        value_name = "CTX",
        value_delimiter = ','
    )]
    pub(crate) context: Vec<String>,
    /// A cluster's cacerts folder, once per cluster in the order of the
    /// clusters (`-`: none). Default in file mode: DIR/../certs/<cluster name>;
    /// in Kubernetes mode: the Secret istio-system/cacerts of the context.
    #[arg(long, value_name = "DIR")]
    pub(crate) cacerts: Vec<PathBuf>,
    /// A cluster's controller API (its --api-listen), once per cluster in
    /// order (`-`: default). Default in file mode: from DIR/.meshpeer/controller.json.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) controller: Vec<String>,
    /// Kubernetes mode: the clusters' names, once per --context in order
    /// (default: the context's name).
    #[arg(long, value_name = "NAME", requires = "context")]
    pub(crate) cluster_name: Vec<String>,
    /// Only the checks that make sense before linking (configuration,
    /// certificates, gateways, networks, trust domains, segments, diagnostics).
    #[arg(long)]
    pub(crate) precheck: bool,
    /// Print each check's details and every line.
    #[arg(short, long)]
    pub(crate) verbose: bool,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = CheckOutput::Text)]
    pub(crate) output: CheckOutput,
    /// How long each controller or health endpoint may take to answer.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub(crate) timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExplainArgs {
    /// A global hostname (or a taken-over cluster-local one), with an
    /// optional port: `in-ambient.httpbin.mesh.internal:8000`.
    #[arg(value_name = "HOST[:PORT]")]
    pub(crate) target: String,
    /// The cluster the request starts from (default: the first cluster).
    #[arg(long, value_name = "CLUSTER")]
    pub(crate) from: Option<String>,
    /// L7: a request header to match the routes with, `NAME: VALUE`
    /// (repeatable), as curl's.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub(crate) headers: Vec<String>,
    /// L7: the request method to match the routes with.
    #[arg(
        short = 'X',
        long = "request",
        value_name = "METHOD",
        default_value = "GET"
    )]
    pub(crate) method: String,
    /// L7: the request path (and query) to match the routes with.
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub(crate) path: String,
    /// File mode: a cluster folder; repeat for each cluster.
    #[arg(long, value_name = "DIR", conflicts_with = "context")]
    pub(crate) cluster: Vec<PathBuf>,
    /// Kubernetes mode: a kubeconfig context; repeat (or separate with
    /// commas) for each cluster.
    #[arg(
        long,
        visible_alias = "contexts",
        value_name = "CTX",
        value_delimiter = ','
    )]
    pub(crate) context: Vec<String>,
    /// A cluster's controller API, once per cluster in order (`-`: default).
    /// When the --from cluster's controller answers, its live catalog and
    /// peer states are used. Default in file mode: from
    /// DIR/.meshpeer/controller.json.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) controller: Vec<String>,
    /// Kubernetes mode: the clusters' names, once per --context in order
    /// (default: the context's name).
    #[arg(long, value_name = "NAME", requires = "context")]
    pub(crate) cluster_name: Vec<String>,
    /// The --from cluster's proxy, its `--metrics` address: the tiers show
    /// what its passive health checking has ejected now (live).
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) proxy: Option<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = CheckOutput::Text)]
    pub(crate) output: CheckOutput,
    /// How long each controller may take to answer.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub(crate) timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum CheckOutput {
    /// ✅/⚠/❌ lines, as `istioctl multicluster check`.
    Text,
    /// The report as JSON.
    Json,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// The controller's API address.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:15014")]
    pub(crate) controller: String,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = StatusOutput::Table)]
    pub(crate) output: StatusOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum StatusOutput {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Make the root CA every linked cluster shares.
    RootCa {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, default_value = "10y", value_parser = duration)]
        validity: Duration,
    },
    /// Make a cluster's intermediate CA, signed by the root, in the cacerts
    /// layout, bound to the cluster's trust domain (SPEC P6).
    Cluster {
        /// Cluster name.
        name: String,
        /// The trust domain the intermediate may issue for (default: the
        /// cluster name, as the cluster's trust domain defaults to it).
        #[arg(long, value_name = "TD")]
        trust_domain: Option<String>,
        /// Folder of the root CA (from `certs root-ca`).
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, default_value = "1y", value_parser = duration)]
        validity: Duration,
    },
    /// Make a token for the controller's signing endpoint (file mode): adds
    /// `token,namespace,serviceaccount` to the controller's --tokens file and
    /// writes the token alone to --out, for the proxy's or gateway's
    /// --token-file (both mode 0600).
    Token {
        /// The controller's tokens file (created if missing).
        #[arg(long, value_name = "FILE")]
        tokens: PathBuf,
        /// The namespace of the identity the token stands for.
        #[arg(long, value_name = "NS")]
        namespace: String,
        /// The service account of the identity the token stands for.
        #[arg(long, value_name = "SA")]
        service_account: String,
        /// Where to write the token (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExposeArgs {
    /// Cluster folder.
    #[arg(value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// Address peers reach the gateway at (file mode; in Kubernetes the load
    /// balancer assigns it). An IP address or a hostname.
    #[arg(long, value_name = "ADDR")]
    pub(crate) address: Option<String>,
    /// Write the Gateway into DIR/istio-eastwest.yaml instead of printing it.
    #[arg(long)]
    pub(crate) write: bool,
    #[arg(long, default_value_t = 15008, value_name = "PORT")]
    pub(crate) hbone_port: u16,
    #[arg(long, default_value_t = 15012, value_name = "PORT")]
    pub(crate) xds_port: u16,
}

#[derive(Debug, clap::Args)]
pub(crate) struct LinkArgs {
    /// Cluster folders to link both ways.
    #[arg(value_name = "DIR")]
    pub(crate) dirs: Vec<PathBuf>,
    /// Link one way: this cluster learns the other's services and may send to it.
    #[arg(long, value_name = "DIR", requires = "to")]
    pub(crate) from: Option<PathBuf>,
    #[arg(long, value_name = "DIR", requires = "from")]
    pub(crate) to: Option<PathBuf>,
    /// Print the Gateways as YAML instead of writing them.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RenderArgs {
    /// Cluster folders.
    #[arg(required = true, value_name = "DIR")]
    pub(crate) dirs: Vec<PathBuf>,
    /// The cluster whose view to print (default: the first folder's).
    #[arg(long, value_name = "CLUSTER")]
    pub(crate) view: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
    /// Range global-service VIPs are allocated from.
    #[arg(long, value_name = "CIDR", default_value = "240.241.0.0/16")]
    pub(crate) vip_cidr: Cidr,
    /// Which Istio reads the output: `upstream` (default), ServiceEntries
    /// with WorkloadEntries as upstream istiod and ztunnel route them, or
    /// `solo`, the seeds' inline-endpoint ServiceEntries (ARCHITECTURE.md,
    /// "Istio flavors").
    #[arg(long, value_enum, default_value_t = IstioFlavor::Upstream)]
    pub(crate) istio_flavor: IstioFlavor,
}

/// The Istio distribution an output is shaped for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum IstioFlavor {
    /// Upstream istio/istio: WorkloadEntries, mapped traffic distribution,
    /// subjectAltNames, mTLS and ambient markers.
    Upstream,
    /// Solo's distribution, as the seeds show its objects.
    Solo,
}

impl From<IstioFlavor> for meshpeer_model::render::IstioFlavor {
    fn from(f: IstioFlavor) -> Self {
        match f {
            IstioFlavor::Upstream => meshpeer_model::render::IstioFlavor::Upstream,
            IstioFlavor::Solo => meshpeer_model::render::IstioFlavor::Solo,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// `kubectl get serviceentry` columns.
    Table,
    /// Multi-document YAML for `kubectl apply -f -`.
    Yaml,
    /// A v1 List.
    Json,
}
