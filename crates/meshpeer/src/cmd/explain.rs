//! `meshpeer explain`: why a name resolves (or not), and where it goes.

use std::process::ExitCode;

use anyhow::{Context, bail};
use meshpeer::check::gather;
use meshpeer::explain::{Ejected, Query, explain};

use super::check::cluster_inputs;
use crate::cli::{CheckOutput, ExplainArgs};

pub(crate) fn run(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    if args.cluster.is_empty() && args.context.is_empty() {
        bail!(
            "name the clusters to read: --cluster DIR (file mode) or --context CTX (Kubernetes), once per cluster"
        );
    }
    let inputs = cluster_inputs(
        &args.cluster,
        &args.context,
        &[],
        &args.controller,
        &args.cluster_name,
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let facts = rt.block_on(gather(&inputs, false, args.timeout))?;
    let from = match &args.from {
        Some(f) => f.clone(),
        None => facts.first().map(|f| f.name.clone()).unwrap_or_default(),
    };
    let query = Query::parse(&args.target, &from)
        .and_then(|q| q.with_request(&args.method, &args.path, &args.headers))
        .map_err(anyhow::Error::msg)?;
    let mut account = explain(&facts, &query).map_err(anyhow::Error::msg)?;
    if let Some(proxy) = &args.proxy {
        let body = rt
            .block_on(meshpeer::api::get(proxy, "/v1/ejections", args.timeout))
            .map_err(|e| anyhow::anyhow!("--proxy {proxy}: GET /v1/ejections: {e}"))?;
        let ejected: Vec<Ejected> = serde_json::from_slice(&body).with_context(|| {
            format!("--proxy {proxy}: /v1/ejections is not a list of ejections")
        })?;
        account = account.with_ejections(proxy, &ejected);
    }
    match args.output {
        CheckOutput::Text => print!("{}", account.render()),
        CheckOutput::Json => println!("{}", serde_json::to_string_pretty(&account)?),
    }
    Ok(if account.resolves {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
