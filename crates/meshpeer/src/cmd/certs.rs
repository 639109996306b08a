//! `meshpeer certs`: the shared root CA, per-cluster intermediates bound to
//! their trust domains (SPEC O1, C6, P6), and tokens for the signing
//! endpoint (file mode, P7).

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use meshpeer_identity::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE, ROOT_KEY_FILE, RootCa,
};

use meshpeer_ca::{add_token, write_token_file};

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
            trust_domain,
            root,
            out,
            validity,
        } => {
            let ca = RootCa::load(&root, now)
                .with_context(|| format!("cannot load the root CA from {}", root.display()))?;
            let td = trust_domain.as_deref().unwrap_or(&name);
            let cluster = ca.issue_intermediate(&name, td, validity, now)?;
            cluster.write(&out).with_context(|| {
                format!("cannot write cluster {name}'s CA to {}", out.display())
            })?;
            println!(
                "Intermediate CA of cluster {name:?} (trust domain {td}) written to {} ({CA_CERT_FILE}, {CA_KEY_FILE}, {ROOT_CERT_FILE}, {CERT_CHAIN_FILE}); root SHA-256 {}",
                out.display(),
                ca.sha256_fingerprint()
            );
            println!(
                "Only the controller needs {CA_KEY_FILE}; proxies and gateways need {ROOT_CERT_FILE} and a token (meshpeer certs token)."
            );
        }
        CertsCommand::Token {
            tokens,
            namespace,
            service_account,
            out,
        } => {
            if out.exists() {
                anyhow::bail!(
                    "{} already exists; refusing to overwrite a token (move it away first)",
                    out.display()
                );
            }
            let token = add_token(&tokens, &namespace, &service_account)?;
            write_token_file(&out, &token)?;
            println!(
                "Token for {namespace}/{service_account} added to {} and written to {} (give it to the role with --token-file)",
                tokens.display(),
                out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
