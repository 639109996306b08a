//! `meshpeer expose`, `link` and `unlink` on cluster folders (SPEC O2, O3).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use meshpeer_model::gateways::{LinkTarget, eastwest_gateway, remote_peer_gateway};
use meshpeer_model::objects::{Gateway, GatewayAddress};
use meshpeer_model::render::to_yaml;
use meshpeer_model::{ClusterSnapshot, Kind, Object, exports, labels, parse_documents};
use meshpeer_store::file::manifest_files;
use meshpeer_store::load_cluster_dir;

use crate::cli::{ExposeArgs, LinkArgs};

fn load(dir: &Path) -> anyhow::Result<ClusterSnapshot> {
    load_cluster_dir(dir).with_context(|| "cannot load cluster folder")
}

/// The manifest file of `dir` that defines a Gateway `namespace/name`.
fn defining_file(dir: &Path, namespace: &str, name: &str) -> anyhow::Result<Option<PathBuf>> {
    for file in manifest_files(dir)? {
        let text =
            fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let found = parse_documents(&file.display().to_string(), &text)
            .objects
            .iter()
            .any(|o| {
                let k = o.key();
                k.kind == Kind::Gateway && k.namespace == namespace && k.name == name
            });
        if found {
            return Ok(Some(file));
        }
    }
    Ok(None)
}

/// Writes a file atomically (temp file, then rename).
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn parse_address(a: &str) -> GatewayAddress {
    if a.parse::<std::net::IpAddr>().is_ok() {
        GatewayAddress::ip(a)
    } else {
        GatewayAddress::hostname(a)
    }
}

pub(crate) fn expose(args: &ExposeArgs) -> anyhow::Result<ExitCode> {
    let snap = load(&args.dir)?;
    let cluster = exports(&snap).cluster;
    let gw = eastwest_gateway(
        &cluster,
        args.address.as_deref().map(parse_address),
        args.hbone_port,
        args.xds_port,
    );
    let yaml = to_yaml(std::slice::from_ref(&gw));
    if !args.write {
        print!("{yaml}");
        return Ok(ExitCode::SUCCESS);
    }
    let ours = args.dir.join("istio-eastwest.yaml");
    if let Some((key, _)) = snap
        .gateways
        .iter()
        .find(|(_, g)| g.spec.gateway_class_name == labels::EASTWEST_CLASS)
    {
        let file = defining_file(&args.dir, &key.namespace, &key.name)?;
        if file.as_deref() != Some(ours.as_path()) {
            bail!(
                "cluster {} already has an east-west gateway {key} in {}; edit it there",
                cluster.name,
                file.map_or_else(|| "?".into(), |f| f.display().to_string())
            );
        }
    }
    write_atomic(&ours, &format!("# written by meshpeer expose\n{yaml}"))?;
    println!(
        "Gateway {}/{} applied to cluster {:?} (network {:?}) in {}",
        labels::ISTIO_EASTWEST,
        labels::ISTIO_EASTWEST,
        cluster.name,
        cluster.network,
        ours.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Ordered (from, to) pairs the arguments ask for.
fn pairs(args: &LinkArgs) -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
    match (&args.from, &args.to) {
        (Some(from), Some(to)) => {
            if !args.dirs.is_empty() {
                bail!("give either --from DIR --to DIR, or two or more DIRs to link both ways");
            }
            Ok(vec![(from.clone(), to.clone())])
        }
        (None, None) => {
            if args.dirs.len() < 2 {
                bail!("give two or more cluster folders to link both ways, or --from DIR --to DIR");
            }
            let mut out = Vec::new();
            for a in &args.dirs {
                for b in &args.dirs {
                    if a != b {
                        out.push((a.clone(), b.clone()));
                    }
                }
            }
            Ok(out)
        }
        _ => bail!("--from and --to go together"),
    }
}

pub(crate) fn link(args: &LinkArgs) -> anyhow::Result<ExitCode> {
    let mut planned: Vec<(PathBuf, String, Gateway, String)> = Vec::new();
    for (from, to) in pairs(args)? {
        let src = load(&from)?;
        let dst = load(&to)?;
        if src.config.name == dst.config.name {
            bail!(
                "{} and {} are the same cluster {:?}",
                from.display(),
                to.display(),
                src.config.name
            );
        }
        let target = LinkTarget::from_snapshot(&dst)?;
        let gw = remote_peer_gateway(&target);
        planned.push((
            from,
            src.config.name.clone(),
            gw,
            target.cluster.network.clone(),
        ));
    }
    // Check everything before writing anything.
    for (dir, cluster, gw, _) in &planned {
        let name = gw.metadata.name.as_deref().unwrap_or_default();
        let ours = dir.join(format!("{name}.yaml"));
        if let Some(file) = defining_file(dir, labels::ISTIO_EASTWEST, name)?
            && file != ours
            && !args.dry_run
        {
            bail!(
                "cluster {cluster} already has Gateway {}/{name} in {}; edit or remove it there, or run meshpeer unlink",
                labels::ISTIO_EASTWEST,
                file.display()
            );
        }
    }
    if args.dry_run {
        let gws: Vec<&Gateway> = planned.iter().map(|(_, _, g, _)| g).collect();
        print!("{}", to_yaml(&gws));
        return Ok(ExitCode::SUCCESS);
    }
    for (dir, cluster, gw, network) in &planned {
        let name = gw.metadata.name.as_deref().unwrap_or_default();
        let path = dir.join(format!("{name}.yaml"));
        write_atomic(
            &path,
            &format!(
                "# written by meshpeer link\n{}",
                to_yaml(std::slice::from_ref(gw))
            ),
        )?;
        let peer = name
            .strip_prefix(labels::PEER_GATEWAY_PREFIX)
            .unwrap_or(name);
        println!(
            "Gateway {}/{name} applied to cluster {cluster:?} pointing to cluster {peer:?} (network {network:?})",
            labels::ISTIO_EASTWEST
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn unlink(args: &LinkArgs) -> anyhow::Result<ExitCode> {
    for (from, to) in pairs(args)? {
        let src = load(&from)?;
        let dst = load(&to)?;
        let name = format!("{}{}", labels::PEER_GATEWAY_PREFIX, dst.config.name);
        let key = meshpeer_model::NsName::new(labels::ISTIO_EASTWEST, &name);
        if !src.gateways.contains_key(&key) {
            println!(
                "cluster {:?} has no Gateway {key}; nothing to remove",
                src.config.name
            );
            continue;
        }
        let Some(file) = defining_file(&from, labels::ISTIO_EASTWEST, &name)? else {
            bail!(
                "Gateway {key} of cluster {:?} was not found in any file",
                src.config.name
            );
        };
        // Remove just that object from its file.
        let text = fs::read_to_string(&file)?;
        let parsed = parse_documents(&file.display().to_string(), &text);
        if !parsed.errors.is_empty() {
            bail!(
                "{} has unreadable documents; fix them before unlinking: {}",
                file.display(),
                parsed.errors[0]
            );
        }
        let keep: Vec<serde_json::Value> = parsed
            .objects
            .iter()
            .filter(|o| {
                let k = o.key();
                !(k.kind == Kind::Gateway
                    && k.namespace == labels::ISTIO_EASTWEST
                    && k.name == name)
            })
            .map(Object::to_json)
            .collect();
        if keep.is_empty() && parsed.skipped.is_empty() {
            fs::remove_file(&file)?;
        } else if parsed.skipped.is_empty() {
            write_atomic(&file, &to_yaml(&keep))?;
        } else {
            bail!(
                "{} also holds objects meshpeer does not read ({}); remove Gateway {key} from it by hand",
                file.display(),
                parsed.skipped.join(", ")
            );
        }
        println!(
            "Gateway {key} removed from cluster {:?} (it no longer points to cluster {:?})",
            src.config.name, dst.config.name
        );
    }
    Ok(ExitCode::SUCCESS)
}
