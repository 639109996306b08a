//! `meshpeer certs`: the shared root CA and per-cluster intermediates (SPEC O1, C6).

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use meshpeer_identity::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE, ROOT_KEY_FILE, RootCa,
};

use crate::cli::CertsCommand;

pub(crate) fn run(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    let now = SystemTime::now();
    match cmd {
        CertsCommand::RootCa { out, validity } => {
            let root = RootCa::generate("meshpeer root CA", validity, now)?;
            root.write(&out)
                .with_context(|| format!("cannot write the root CA to {}", out.display()))?;
            println!(
                "Root CA written to {} ({ROOT_CERT_FILE}, {ROOT_KEY_FILE}); SHA-256 {}",
                out.display(),
                root.sha256_fingerprint()
            );
            println!("Keep {ROOT_KEY_FILE} safe: it signs every cluster's intermediate.");
        }
        CertsCommand::Cluster {
            name,
            root,
            out,
            validity,
        } => {
            let ca = RootCa::load(&root, now)
                .with_context(|| format!("cannot load the root CA from {}", root.display()))?;
            let cluster = ca.issue_intermediate(&name, validity, now)?;
            cluster.write(&out).with_context(|| {
                format!("cannot write cluster {name}'s CA to {}", out.display())
            })?;
            println!(
                "Intermediate CA of cluster {name:?} written to {} ({CA_CERT_FILE}, {CA_KEY_FILE}, {ROOT_CERT_FILE}, {CERT_CHAIN_FILE}); root SHA-256 {}",
                out.display(),
                ca.sha256_fingerprint()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
