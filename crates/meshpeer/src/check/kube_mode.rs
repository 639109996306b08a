//! Kubernetes mode of `check`: a client per kubeconfig context, the
//! cluster listed once through [`KubeSource`], and its cacerts read from
//! Istio's plug-in CA Secret.

use std::path::Path;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use meshpeer_identity::ClusterCa;
use meshpeer_model::{ClusterConfig, ClusterSnapshot, labels};
use meshpeer_store::ClusterSource;
use meshpeer_store::kube_source::KubeSource;

use super::facts::{CACERTS_KEYS, CACERTS_SECRET, CaFacts, CaPlace, GatherError};

/// The cluster of a context: named `name`, else as the context.
pub(super) fn kube_cluster_config(
    context: &str,
    name: Option<&str>,
) -> Result<ClusterConfig, GatherError> {
    let config = ClusterConfig::new(name.unwrap_or(context));
    config.check().map_err(|e| {
        GatherError::kube(
            context,
            format!(
                "{e}; give the cluster's name with --cluster-name (once per --context, in order)"
            ),
        )
    })?;
    Ok(config)
}

/// A client for a kubeconfig context.
pub(super) async fn kube_client(context: &str) -> Result<kube::Client, GatherError> {
    let kube_config = kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions {
        context: Some(context.to_owned()),
        ..Default::default()
    })
    .await
    .map_err(|e| GatherError::kube(context, format!("cannot load the kubeconfig context: {e}")))?;
    kube::Client::try_from(kube_config)
        .map_err(|e| GatherError::kube(context, format!("cannot build a client: {e}")))
}

/// A cluster read once from a Kubernetes API server: the first (complete)
/// update of a [`KubeSource`].
pub(super) async fn kube_snapshot(
    client: kube::Client,
    context: &str,
    config: ClusterConfig,
    within: Duration,
) -> Result<ClusterSnapshot, GatherError> {
    let err = |message: String| GatherError::kube(context, message);
    let source = Box::new(KubeSource::new(client, config.clone()));
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(source.run(tx));
    // Listing every kind may take longer than one call.
    let first = tokio::time::timeout(within * 6, rx.recv()).await;
    task.abort();
    let update = first
        .map_err(|_| {
            err(format!(
                "the API server did not list every kind within {}s",
                (within * 6).as_secs()
            ))
        })?
        .ok_or_else(|| err("the API server could not be read".to_owned()))?;
    let mut snap = ClusterSnapshot::new(config);
    for change in update.changes {
        snap.apply_change(change);
    }
    Ok(snap)
}

/// The cacerts of a Kubernetes cluster, from Istio's plug-in CA Secret.
/// Every key is needed, the private key too: as for a folder, the check
/// issues a probe leaf with the intermediate to see whether the other
/// clusters accept it.
pub(super) async fn secret_cacerts(
    client: &kube::Client,
    context: &str,
    now: SystemTime,
    within: Duration,
) -> CaFacts {
    let at = CaPlace::Secret {
        context: context.to_owned(),
    };
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), labels::ISTIO_SYSTEM);
    let secret = match tokio::time::timeout(within, api.get_opt(CACERTS_SECRET)).await {
        Ok(Ok(Some(secret))) => secret,
        Ok(Ok(None)) => return CaFacts::Missing { looked: at },
        Ok(Err(e)) => {
            return CaFacts::Unreadable {
                at,
                error: e.to_string(),
            };
        }
        Err(_) => {
            return CaFacts::Unreadable {
                at,
                error: format!("the API server did not answer within {}s", within.as_secs()),
            };
        }
    };
    let data = secret.data.unwrap_or_default();
    let missing: Vec<&str> = CACERTS_KEYS
        .into_iter()
        .filter(|k| !data.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        let error = match missing.as_slice() {
            [one] => format!("it has no key {one}"),
            many => format!("it has no keys {}", many.join(", ")),
        };
        return CaFacts::Broken { at, error };
    }
    let source = Path::new(labels::ISTIO_SYSTEM).join(CACERTS_SECRET);
    match ClusterCa::from_pem(&source, |key| data.get(key).map(|b| b.0.as_slice()), now) {
        Ok(ca) => CaFacts::Loaded {
            at,
            ca: Box::new(ca),
        },
        Err(e) => CaFacts::Broken {
            at,
            error: e.to_string(),
        },
    }
}
