//! Command-line interface: every flag of every role, parsed into typed values.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use meshpeer_model::Cidr;

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
    #[arg(long, value_name = "CIDR", default_value = "240.240.0.0/16")]
    pub(crate) vip_cidr: Cidr,
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
