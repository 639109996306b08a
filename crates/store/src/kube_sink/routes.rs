//! HTTPRoute status (SPEC L7): meshpeer's entries of `status.parents`.
//!
//! Decisions:
//! - `status.parents` is an atomic list in the Gateway API CRD (it has no
//!   `x-kubernetes-list-type: map`), so a server-side apply replaces it
//!   whole: applying only meshpeer's parents would erase those another
//!   controller (Istio, a gateway implementation) wrote. The route is read
//!   first; the other controllers' parents are applied back as the server
//!   holds them, meshpeer's replace its own earlier ones. The apply carries
//!   the resourceVersion read, so a write by someone else in between fails
//!   it (409) instead of being lost; the controller's retry reads again.
//! - The read also gives the transition times: a condition whose status is
//!   unchanged on the server keeps its time, as on Gateways.
//! - A route that is gone (404 on read or write) is skipped, not an error.
//!   Unchanged statuses are not rewritten.

use std::collections::BTreeSet;

use k8s_openapi::Resource;
use kube::Api;
use kube::api::Patch;
use meshpeer_model::NsName;
use meshpeer_model::objects::HttpRoute;
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
        // `routes` is the full set: a route left out is forgotten, so if it
        // comes back it is written again.
        let listed: BTreeSet<NsName> = routes
            .iter()
            .map(|r| NsName::new(&r.namespace, &r.name))
            .collect();
        self.routes.retain(|key, _| listed.contains(key));
        let mut failed = Vec::new();
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

    /// Ok(false): the route does not exist (any more).
    async fn write_one_route(&self, key: &NsName, route: &RouteStatus) -> Result<bool, String> {
        let what = || format!("status of HTTPRoute {key}");
        for p in &route.parents {
            check_conditions(&p.conditions, "a route parent")
                .map_err(|e| format!("{}: {e}", what()))?;
        }
        let api: Api<HttpRoute> = Api::namespaced(self.client.clone(), &key.namespace);
        let current = match api.get(&key.name).await {
            Ok(current) => current,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                debug!(route = %key, "HTTPRoute not found; status not written");
                return Ok(false);
            }
            Err(e) => return Err(format!("reading HTTPRoute {key} to write its status: {e}")),
        };
        let on_server = current
            .status
            .as_ref()
            .map(|s| s.parents.as_slice())
            .unwrap_or_default();
        let mut parents: Vec<_> = on_server
            .iter()
            .filter(|p| p.controller_name != CONTROLLER_NAME)
            .cloned()
            .collect();
        let now = (self.clock)();
        parents.extend(route_parents(
            route,
            on_server,
            current.metadata.generation,
            &now,
        ));
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
