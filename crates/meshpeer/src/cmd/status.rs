//! `meshpeer status`: what a controller serves and to whom (SPEC O5).

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use meshpeer::api::{GetError, age};
use meshpeer::controller::view::Status;

use crate::cli::{StatusArgs, StatusOutput};

/// GETs a path of a controller's API.
pub(crate) async fn get(addr: &str, path: &str) -> anyhow::Result<Bytes> {
    let within = std::time::Duration::from_secs(10);
    meshpeer::api::get(addr, path, within).await.map_err(|e| match e {
        GetError::BadAddress { .. } => anyhow::anyhow!("{addr} is not an ADDR:PORT"),
        GetError::Timeout(_) => {
            anyhow::anyhow!("no answer from the controller at {addr} within 10s")
        }
        GetError::Unreachable(why) => anyhow::anyhow!(
            "cannot reach the controller at {addr} (is `meshpeer controller` running, with --api-listen {addr}?): {why}"
        ),
        GetError::Status { status, body } => {
            anyhow::anyhow!("the controller at {addr} answered {status}: {body}")
        }
    })
}

pub(crate) fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body = rt.block_on(get(&args.controller, "/v1/status"))?;
    match args.output {
        StatusOutput::Json => {
            print!("{}", String::from_utf8_lossy(&body));
            println!();
        }
        StatusOutput::Table => {
            let status: Status = serde_json::from_slice(&body)
                .context("the controller's status is not what this meshpeer expects")?;
            print!("{}", format_status(&status));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn table(rows: &[Vec<String>]) -> String {
    let mut widths = vec![0usize; rows.first().map_or(0, Vec::len)];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] + 3 - cell.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

/// The human view of a status.
pub(crate) fn format_status(s: &Status) -> String {
    let mut out = String::new();
    let segment = s.cluster.segment.as_ref().map_or_else(
        || "(default)".to_owned(),
        |seg| format!("{} ({})", seg.name, seg.domain),
    );
    let _ = writeln!(
        out,
        "Cluster {}: network {}, segment {segment}, trust domain {}, peering on {}",
        s.cluster.name, s.cluster.network, s.cluster.trust_domain, s.peering_address
    );
    let _ = writeln!(
        out,
        "Exports {} services (version {}); sees {} global services, {} with endpoints from peers",
        s.exported_services, s.export_version, s.global_services, s.imported_services
    );
    let r = &s.recompute;
    let _ = writeln!(
        out,
        "Last change: {} service(s) exported again, {} global service(s) merged again, {} hostname(s) changed{}, in {:.2} ms",
        r.exported,
        r.merged,
        r.hostnames,
        if r.full { " (recomputed in full)" } else { "" },
        r.seconds * 1000.0
    );
    if let Some(e) = &s.output_error {
        let _ = writeln!(out, "Output: FAILING: {e}");
    }
    out.push('\n');
    if s.peers.is_empty() {
        out.push_str("No linked peers (no remote-peer Gateway in this cluster).\n");
    } else {
        let mut rows = vec![
            [
                "PEER",
                "STATE",
                "ADDRESS",
                "CONNECTED",
                "LAST SYNC",
                "VERSION",
                "STALE",
                "SERVICES",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>(),
        ];
        for p in &s.peers {
            rows.push(vec![
                p.cluster.clone(),
                p.state.as_str().to_owned(),
                p.remote.clone().unwrap_or_else(|| p.addresses.join(",")),
                or_dash(p.connected_since.map(age)),
                or_dash(p.last_sync.map(|t| format!("{} ago", age(t)))),
                or_dash(p.version.map(|v| v.to_string())),
                if p.stale {
                    format!(
                        "yes (until {})",
                        p.stale_until.map(crate_rfc3339).unwrap_or_default()
                    )
                } else {
                    "no".into()
                },
                p.services.to_string(),
            ]);
        }
        out.push_str(&table(&rows));
        for p in &s.peers {
            if let Some(e) = &p.last_error
                && p.state != meshpeer::controller::LinkState::Synced
            {
                let _ = writeln!(out, "  {}: {e}", p.cluster);
            }
        }
    }
    out.push('\n');
    if s.served.is_empty() {
        out.push_str("Serving no peer (no cluster links to this one right now).\n");
    } else {
        let mut rows = vec![
            [
                "SERVED",
                "REMOTE",
                "SINCE",
                "ACKED VERSION",
                "RESOURCES",
                "LINKED",
                "IDENTITY",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>(),
        ];
        for p in &s.served {
            rows.push(vec![
                p.cluster.clone(),
                p.remote.clone(),
                or_dash(p.connected_since.map(age)),
                or_dash(p.acked_version.map(|v| v.to_string())),
                p.resources.to_string(),
                if p.linked { "yes" } else { "no (one-way)" }.to_owned(),
                p.spiffe_id.clone(),
            ]);
        }
        out.push_str(&table(&rows));
        let unlinked: Vec<&str> = s
            .served
            .iter()
            .filter(|p| !p.linked)
            .map(|p| p.cluster.as_str())
            .collect();
        if !unlinked.is_empty() {
            let _ = writeln!(
                out,
                "Not linked from this cluster: {} (they learn this cluster's services; it imports none of theirs; --allowed-peers limits who may)",
                unlinked.join(", ")
            );
        }
    }
    for r in &s.refused {
        let _ = writeln!(out, "Refused {} ({}): {}", r.remote, r.reason, r.message);
    }
    let problems = s
        .diagnostics
        .iter()
        .filter(|d| d.severity != meshpeer_model::Severity::Info)
        .count();
    if problems > 0 {
        let _ = writeln!(out, "\n{problems} problems in this cluster's input:");
        for d in s
            .diagnostics
            .iter()
            .filter(|d| d.severity != meshpeer_model::Severity::Info)
        {
            let _ = writeln!(out, "  {d}");
        }
    }
    out
}

fn crate_rfc3339(t: std::time::SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t)
        .map(|ts| ts.strftime("%H:%M:%S").to_string())
        .unwrap_or_default()
}
