//! `meshpeer check`: is the mesh set up right, and is it working (SPEC O4)?

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use meshpeer::check::{ClusterInput, Options, Origin, evaluate, gather};

use crate::cli::{CheckArgs, CheckOutput};

pub(crate) fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let inputs = inputs(args)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let facts = rt.block_on(gather(&inputs, args.precheck, args.timeout))?;
    let report = evaluate(
        &facts,
        Options {
            precheck: args.precheck,
        },
    );
    match args.output {
        CheckOutput::Text => print!("{}", report.render(args.verbose)),
        CheckOutput::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Per-cluster flags are given once per cluster, in order; `-` leaves one out.
pub(crate) fn per_cluster<T: Clone>(
    values: &[T],
    n: usize,
    flag: &str,
    is_none: impl Fn(&T) -> bool,
) -> anyhow::Result<Vec<Option<T>>> {
    if values.is_empty() {
        return Ok(vec![None; n]);
    }
    if values.len() != n {
        bail!(
            "{flag} is given {} times for {n} clusters: give it once per cluster, in the same order (`-` for none)",
            values.len()
        );
    }
    Ok(values
        .iter()
        .map(|v| (!is_none(v)).then(|| v.clone()))
        .collect())
}

fn inputs(args: &CheckArgs) -> anyhow::Result<Vec<ClusterInput>> {
    cluster_inputs(
        &args.cluster,
        &args.context,
        &args.cacerts,
        &args.controller,
        &args.cluster_name,
    )
}

/// The clusters `check` and `explain` read: folders (`--cluster`) or
/// contexts, each with its per-cluster flags (given once per cluster, in
/// order, `-` for none; absent: none for all).
pub(crate) fn cluster_inputs(
    cluster: &[PathBuf],
    context: &[String],
    cacerts: &[PathBuf],
    controller: &[String],
    cluster_name: &[String],
) -> anyhow::Result<Vec<ClusterInput>> {
    let origins: Vec<Origin> = if cluster.is_empty() {
        context.iter().cloned().map(Origin::Context).collect()
    } else {
        cluster.iter().cloned().map(Origin::Folder).collect()
    };
    let n = origins.len();
    let cacerts = per_cluster(cacerts, n, "--cacerts", |p: &PathBuf| {
        p.as_path() == Path::new("-")
    })?;
    let controllers = per_cluster(controller, n, "--controller", |c: &String| c == "-")?;
    let names = per_cluster(cluster_name, n, "--cluster-name", |c: &String| c == "-")?;
    Ok(origins
        .into_iter()
        .zip(cacerts)
        .zip(controllers)
        .zip(names)
        .map(|(((origin, cacerts), controller), name)| ClusterInput {
            origin,
            cacerts,
            controller,
            name,
        })
        .collect())
}
