//! The per-name slots of the state: a resource's offered version (bytes and
//! what decoding/compiling them gave) and the version in force, and what is
//! kept of clusters and assignments once committed (their bytes, not their
//! decoded forms).

use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use prost_types::Any;

use crate::dns::Subscription;
use crate::kernel_native::compiler::{dns_subscriptions, eds_service_name};
use crate::kernel_native::resources::{self, Resource, ResourceError};

/// One version of a resource: its bytes and what they gave.
#[derive(Debug)]
pub(super) struct Version<T> {
    pub(super) any: Arc<Any>,
    pub(super) value: Arc<T>,
}

impl<T> Clone for Version<T> {
    fn clone(&self) -> Self {
        Self {
            any: self.any.clone(),
            value: self.value.clone(),
        }
    }
}

/// A resource name: the version offered last, and the version in force.
#[derive(Debug)]
pub(super) struct Slot<T> {
    pub(super) offered: Arc<Any>,
    /// The offered version decoded (and, where a resource compiles on its
    /// own, compiled), or why it was refused.
    pub(super) outcome: Result<Arc<T>, ResourceError>,
    pub(super) accepted: Option<Version<T>>,
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Self {
            offered: self.offered.clone(),
            outcome: self.outcome.clone(),
            accepted: self.accepted.clone(),
        }
    }
}

impl<T> Slot<T> {
    pub(super) fn offered_version(&self) -> Option<Version<T>> {
        let value = self.outcome.as_ref().ok()?;
        Some(Version {
            any: self.offered.clone(),
            value: value.clone(),
        })
    }

    /// Versions to try, newest first: the offered one (if it decoded), then
    /// the one in force when it differs.
    pub(super) fn candidates(&self) -> Vec<Version<T>> {
        let mut out: Vec<Version<T>> = self.offered_version().into_iter().collect();
        if let Some(old) = &self.accepted {
            if !Arc::ptr_eq(&old.any, &self.offered) || out.is_empty() {
                out.push(old.clone());
            }
        }
        out
    }
}

/// What is kept of a cluster: what the indexes need. The decoded cluster
/// (kilobytes each) is kept only while its stage runs; a later recompile
/// (its assignment or DNS answers changed) decodes the bytes again.
#[derive(Debug)]
pub(super) struct ClusterSpec {
    pub(super) service: String,
    pub(super) subscriptions: Vec<Subscription>,
    pub(super) decoded: Option<Arc<Cluster>>,
}

/// What is kept of a ClusterLoadAssignment that checked: nothing but its
/// bytes once staged (see [`ClusterSpec`]).
#[derive(Debug)]
pub(super) struct AssignmentSpec {
    pub(super) decoded: Option<Arc<ClusterLoadAssignment>>,
}

impl ClusterSpec {
    pub(super) fn new(c: Cluster) -> Self {
        Self {
            service: eds_service_name(&c).to_string(),
            subscriptions: dns_subscriptions(&c),
            decoded: Some(Arc::new(c)),
        }
    }

    /// The cluster, decoded again when only its bytes are kept.
    pub(super) fn cluster(&self, any: &Any) -> Option<Arc<Cluster>> {
        self.decoded
            .clone()
            .or_else(|| match resources::decode(any) {
                Ok(Resource::Cluster(c)) => Some(Arc::new(*c)),
                _ => None,
            })
    }
}

impl AssignmentSpec {
    /// The assignment, decoded again when only its bytes are kept.
    pub(super) fn assignment(&self, any: &Any) -> Option<Arc<ClusterLoadAssignment>> {
        self.decoded
            .clone()
            .or_else(|| match resources::decode(any) {
                Ok(Resource::ClusterLoadAssignment(c)) => Some(Arc::new(*c)),
                _ => None,
            })
    }
}

/// Values that can drop their decoded form once committed (see [`ClusterSpec`]).
pub(super) trait Thin: Sized {
    /// The value without its decoded form; `None` when it has none.
    fn thin(&self) -> Option<Self>;
}

impl Thin for ClusterSpec {
    fn thin(&self) -> Option<Self> {
        self.decoded.as_ref()?;
        Some(Self {
            service: self.service.clone(),
            subscriptions: self.subscriptions.clone(),
            decoded: None,
        })
    }
}

impl Thin for AssignmentSpec {
    fn thin(&self) -> Option<Self> {
        self.decoded.as_ref()?;
        Some(Self { decoded: None })
    }
}

impl<T: Thin> Slot<T> {
    /// The slot as kept in the state: offered and accepted values thinned,
    /// still one shared value when they were one.
    pub(super) fn thin(mut self) -> Self {
        let thin = |v: &Arc<T>| v.thin().map(Arc::new);
        let offered = self.outcome.as_ref().ok().map(|v| (v.clone(), thin(v)));
        if let Some(a) = &mut self.accepted {
            match &offered {
                Some((v, Some(t))) if Arc::ptr_eq(&a.value, v) => a.value = t.clone(),
                _ => {
                    if let Some(t) = thin(&a.value) {
                        a.value = t;
                    }
                }
            }
        }
        if let Some((_, Some(t))) = offered {
            self.outcome = Ok(t);
        }
        self
    }
}
