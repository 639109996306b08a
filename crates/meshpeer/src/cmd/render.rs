//! `meshpeer render`: what one cluster would hold, from cluster folders.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use meshpeer_model::render::{render, render_upstream, table, to_json_list, to_yaml};
use meshpeer_model::{
    CatalogConfig, Diagnostic, ObjectRef, Rule, Severity, catalog_with, exports, labels,
};
use meshpeer_store::load_cluster_dir;

use crate::cli::{IstioFlavor, Output, RenderArgs};

fn json<T: serde::Serialize>(object: &T) -> serde_json::Value {
    serde_json::to_value(object).unwrap_or_default()
}

pub(crate) fn run(args: &RenderArgs) -> anyhow::Result<ExitCode> {
    let mut snapshots = Vec::new();
    for dir in &args.dirs {
        let snap = load_cluster_dir(dir).with_context(|| "cannot load cluster folder")?;
        if let Some(prev) =
            snapshots
                .iter()
                .position(|(_, s): &(_, meshpeer_model::ClusterSnapshot)| {
                    s.config.name == snap.config.name
                })
        {
            bail!(
                "{} and {} both hold cluster {:?}; cluster names must be unique",
                snapshots[prev].0,
                dir.display(),
                snap.config.name
            );
        }
        snapshots.push((dir.display().to_string(), snap));
    }
    let view = match &args.view {
        Some(name) => snapshots
            .iter()
            .position(|(_, s)| &s.config.name == name)
            .with_context(|| {
                let names: Vec<&str> = snapshots
                    .iter()
                    .map(|(_, s)| s.config.name.as_str())
                    .collect();
                format!(
                    "--view {name}: no such cluster among the folders given (clusters: {})",
                    names.join(", ")
                )
            })?,
        None => 0,
    };

    let all_exports: Vec<_> = snapshots.iter().map(|(_, s)| exports(s)).collect();
    let own = &snapshots[view].1;
    let peers = all_exports
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != view)
        .map(|(_, e)| e);
    let config = CatalogConfig {
        vip_range: args.vip_cidr,
        ..Default::default()
    };
    let cat = catalog_with(own, &all_exports[view], peers, &config);

    // Diagnostics: the viewed cluster's (input and view), then the other
    // clusters' own input problems, which shape what the view holds.
    let mut diags: BTreeSet<Diagnostic> = cat.diagnostics.iter().cloned().collect();
    for (i, e) in all_exports.iter().enumerate() {
        if i != view {
            diags.extend(e.diagnostics.iter().cloned());
        }
    }
    let given: BTreeSet<&str> = snapshots
        .iter()
        .map(|(_, s)| s.config.name.as_str())
        .collect();
    for link in &cat.links {
        if !given.contains(link.cluster.as_str()) {
            diags.insert(Diagnostic::new(
                &own.config.name,
                Rule::C4,
                Severity::Info,
                ObjectRef::namespaced("gateway", &link.gateway.namespace, &link.gateway.name),
                format!(
                    "links to cluster {}, but no folder for it was given; its services are not shown",
                    link.cluster
                ),
            ));
        }
    }
    if args.istio_flavor == IstioFlavor::Upstream {
        diags.extend(meshpeer_model::render::upstream::identity_gaps(&cat));
    }
    let mut stderr = std::io::stderr().lock();
    for d in &diags {
        writeln!(stderr, "{d}")?;
    }

    let (entries, objects): (Vec<_>, Vec<serde_json::Value>) = match args.istio_flavor {
        IstioFlavor::Solo => {
            let entries = render(&cat);
            let objects = entries.iter().map(json).collect();
            (entries, objects)
        }
        IstioFlavor::Upstream => {
            let mut entries = Vec::new();
            let mut objects = Vec::new();
            for u in render_upstream(&cat) {
                objects.push(json(&u.service_entry));
                objects.extend(u.workload_entries.iter().map(json));
                entries.push(u.service_entry);
            }
            (entries, objects)
        }
    };
    let out = match args.output {
        Output::Table => table(&entries, None),
        Output::Yaml => to_yaml(&objects),
        Output::Json => format!("{}\n", to_json_list(&objects)),
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    if entries.is_empty() && args.output == Output::Table {
        writeln!(
            stderr,
            "No global services in cluster {} (label a Service or Namespace {}=global)",
            own.config.name,
            labels::SERVICE_SCOPE
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
