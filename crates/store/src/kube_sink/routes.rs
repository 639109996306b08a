//! HTTPRoute status (SPEC L7): meshpeer's entries of `status.parents`.
//!
//! Decisions:
//! - `status.parents` is `x-kubernetes-list-type: atomic` in the Gateway
//!   API CRD, so a server-side apply replaces it whole: applying only meshpeer's parents would erase those another
//!   controller (Istio, a gateway implementation) wrote. The route is read
//!   first; the other controllers' parents are applied back as the server
//!   holds them, meshpeer's replace its own earlier ones. The apply carries
//!   the resourceVersion read, so a write by someone else in between fails
//!   it (409) instead of being lost; the controller's retry reads again.
//! - The read also gives the transition times: a condition whose status is
//!   unchanged on the server keeps its time, as on Gateways.
//! - A route that is gone (404 on read or write) is skipped, not an error.
//!   Unchanged statuses are not rewritten: not when the last call wrote
//!   them, nor when the server already holds them (a restart rewrites
//!   nothing).
//! - A route this sink wrote that leaves the list while it still exists
//!   (its mesh parentRefs were removed) has meshpeer's parents taken out.
//!   What a run before a restart wrote is not known: such a route keeps
//!   them until it is listed again.

use std::collections::BTreeSet;

use k8s_openapi::Resource;
use kube::Api;
use kube::api::Patch;
use meshpeer_model::NsName;
use meshpeer_model::objects::{HttpRoute, RouteParentStatus};
use meshpeer_model::routes::{CONTROLLER_NAME, RouteStatus};
use tracing::debug;

use super::KubeSink;
use crate::conditions::{check_conditions, route_parents};
use crate::sink::SinkError;

/// `status.parents` holds at most this many (HTTPRoute CRD).
const MAX_PARENTS: usize = 32;

impl KubeSink {
    pub(super) async fn write_all_route_status(
        &mut self,
        routes: &[RouteStatus],
    ) -> Result<(), SinkError> {
        // `routes` is the full set: a route left out loses meshpeer's
        // parents and is forgotten, so if it comes back it is written again.
        let listed: BTreeSet<NsName> = routes
            .iter()
            .map(|r| NsName::new(&r.namespace, &r.name))
            .collect();
        let mut failed = Vec::new();
        let gone: Vec<NsName> = self
            .routes
            .keys()
            .filter(|key| !listed.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            match self.clear_route(&key).await {
                Ok(()) => {
                    self.routes.remove(&key);
                }
                // Kept: tried again next call.
                Err(e) => failed.push(e),
            }
        }
        for route in routes {
            let key = NsName::new(&route.namespace, &route.name);
            if self.routes.get(&key) == Some(&route.parents) {
                continue;
            }
            match self.write_one_route(&key, route).await {
                Ok(true) => {
                    self.routes.insert(key, route.parents.clone());
                }
                Ok(false) => {}
                Err(e) => {
                    self.routes.remove(&key);
                    failed.push(e);
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Other(failed.join("; ")))
        }
    }

    /// The route as the server holds it; `None`: it does not exist.
    async fn read_route(&self, key: &NsName) -> Result<Option<HttpRoute>, String> {
        let api: Api<HttpRoute> = Api::namespaced(self.client.clone(), &key.namespace);
        match api.get(&key.name).await {
            Ok(current) => Ok(Some(current)),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                debug!(route = %key, "HTTPRoute not found; status not written");
                Ok(None)
            }
            Err(e) => Err(format!("reading HTTPRoute {key} to write its status: {e}")),
        }
    }

    /// Ok(false): the route does not exist (any more).
    async fn write_one_route(&self, key: &NsName, route: &RouteStatus) -> Result<bool, String> {
        let what = || format!("status of HTTPRoute {key}");
        for p in &route.parents {
            check_conditions(&p.conditions, "a route parent")
                .map_err(|e| format!("{}: {e}", what()))?;
        }
        let Some(current) = self.read_route(key).await? else {
            return Ok(false);
        };
        let on_server = parents_of(&current);
        let mut parents = others(on_server);
        let now = (self.clock)();
        parents.extend(route_parents(
            route,
            on_server,
            current.metadata.generation,
            &now,
        ));
        if parents == on_server {
            debug!(route = %key, "status already on the server");
            return Ok(true);
        }
        self.apply_parents(key, &current, parents).await
    }

    /// Takes meshpeer's parents out of a route no longer listed.
    async fn clear_route(&self, key: &NsName) -> Result<(), String> {
        let Some(current) = self.read_route(key).await? else {
            return Ok(());
        };
        let on_server = parents_of(&current);
        let parents = others(on_server);
        if parents.len() == on_server.len() {
            return Ok(());
        }
        self.apply_parents(key, &current, parents).await.map(|_| ())
    }

    /// Server-side applies `parents` as the route's `status.parents`, with
    /// the resourceVersion `current` was read at. Ok(false): the route
    /// does not exist (any more).
    async fn apply_parents(
        &self,
        key: &NsName,
        current: &HttpRoute,
        parents: Vec<RouteParentStatus>,
    ) -> Result<bool, String> {
        let what = || format!("status of HTTPRoute {key}");
        if parents.len() > MAX_PARENTS {
            return Err(format!(
                "{}: {} parents with those of other controllers; a route holds at most {MAX_PARENTS}",
                what(),
                parents.len()
            ));
        }

        let mut metadata = serde_json::json!({ "name": key.name, "namespace": key.namespace });
        if let Some(rv) = &current.metadata.resource_version {
            metadata["resourceVersion"] = rv.clone().into();
        }
        let api: Api<HttpRoute> = Api::namespaced(self.client.clone(), &key.namespace);
        let body = serde_json::json!({
            "apiVersion": HttpRoute::API_VERSION,
            "kind": HttpRoute::KIND,
            "metadata": metadata,
            "status": { "parents": parents },
        });
        match api
            .patch_status(&key.name, &self.apply_params(), &Patch::Apply(&body))
            .await
        {
            Ok(_) => {
                debug!(route = %key, "status written");
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                debug!(route = %key, "HTTPRoute not found; status not written");
                Ok(false)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Err(format!(
                "{}: the route changed while it was being written (another controller?); written again on retry",
                what()
            )),
            Err(e) => Err(format!("server-side apply of {}: {e}", what())),
        }
    }
}

/// `status.parents` of a route as the server holds it.
fn parents_of(route: &HttpRoute) -> &[RouteParentStatus] {
    route
        .status
        .as_ref()
        .map(|s| s.parents.as_slice())
        .unwrap_or_default()
}

/// The parents other controllers wrote, as they are.
fn others(parents: &[RouteParentStatus]) -> Vec<RouteParentStatus> {
    parents
        .iter()
        .filter(|p| p.controller_name != CONTROLLER_NAME)
        .cloned()
        .collect()
}
