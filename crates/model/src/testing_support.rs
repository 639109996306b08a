//! Small object builders for this crate's unit tests.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::objects::Object;

pub(crate) fn ns(name: &str) -> Object {
    Object::Namespace(Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    })
}
