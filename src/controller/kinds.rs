//! What differs between the two kinds: where they read sources from, which
//! namespaces they write to, and how their API is addressed.

use std::collections::BTreeSet;
use std::fmt::Debug;

use kube::api::Api;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Settings;
use super::index::Index;
use super::mint::MintError;
use crate::admission;
use crate::api::{ClusterRegistryCredential, CredentialSpec, CredentialStatus, RegistryCredential};
use crate::targets::{NamespaceInfo, cluster_target_set, cluster_targets};

/// A RegistryCredential or a ClusterRegistryCredential.
pub trait CredentialKind:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize + Send + Sync + 'static
{
    /// The shared spec.
    fn credential(&self) -> &CredentialSpec;
    /// The current status.
    fn status(&self) -> Option<&CredentialStatus>;
    /// An API addressing this object (namespaced or cluster-wide).
    fn api(&self, client: Client) -> Api<Self>;
    /// The only namespace source Secrets and ServiceAccounts are read from.
    fn source_namespace(&self, settings: &Settings) -> Result<String, MintError>;
    /// The namespaces that should hold the pull Secret now.
    fn target_namespaces(&self, index: &Index) -> BTreeSet<String>;
    /// Whether `namespace` is a target now.
    fn targets_namespace(&self, index: &Index, namespace: &str) -> bool;
    /// Whether the provider may use the operator's own cloud identity.
    fn allows_ambient(&self, settings: &Settings) -> bool;
    /// The chart's MutatingAdmissionPolicy for this kind.
    fn policy_name() -> &'static str;
    /// The ClusterRegistryCredential, which alone can write to other
    /// clusters of a fleet.
    fn as_cluster(&self) -> Option<&ClusterRegistryCredential> {
        None
    }

    /// The value of the owner annotation on written Secrets.
    fn owner_key(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{}/{}/{}", Self::kind(&()), ns, self.name_any()),
            None => format!("{}/{}", Self::kind(&()), self.name_any()),
        }
    }
}

impl CredentialKind for RegistryCredential {
    fn credential(&self) -> &CredentialSpec {
        &self.spec.credential
    }

    fn status(&self) -> Option<&CredentialStatus> {
        self.status.as_ref()
    }

    fn api(&self, client: Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }

    fn source_namespace(&self, _: &Settings) -> Result<String, MintError> {
        Ok(self.namespace().unwrap_or_default())
    }

    /// Only in the cluster regcred runs in.
    fn target_namespaces(&self, index: &Index) -> BTreeSet<String> {
        let ns = self.namespace().unwrap_or_default();
        if index.is_local() && index.live_namespace_labels(&ns).is_some() {
            BTreeSet::from([ns])
        } else {
            BTreeSet::new()
        }
    }

    fn targets_namespace(&self, index: &Index, namespace: &str) -> bool {
        index.is_local()
            && self.namespace().as_deref() == Some(namespace)
            && index.live_namespace_labels(namespace).is_some()
    }

    /// A tenant gets its own ServiceAccount's cloud permissions, never the
    /// operator's, unless the operator was started with the opt-in flag.
    fn allows_ambient(&self, settings: &Settings) -> bool {
        settings.allow_namespaced_ambient_identity
    }

    fn policy_name() -> &'static str {
        admission::REGISTRY_CREDENTIAL_POLICY
    }
}

impl CredentialKind for ClusterRegistryCredential {
    fn credential(&self) -> &CredentialSpec {
        &self.spec.credential
    }

    fn status(&self) -> Option<&CredentialStatus> {
        self.status.as_ref()
    }

    fn api(&self, client: Client) -> Api<Self> {
        Api::all(client)
    }

    fn source_namespace(&self, settings: &Settings) -> Result<String, MintError> {
        settings.cluster_resource_namespace.clone().ok_or(MintError::NoClusterResourceNamespace)
    }

    fn target_namespaces(&self, index: &Index) -> BTreeSet<String> {
        if !index.selected_by(self.spec.clusters.as_ref()) {
            return BTreeSet::new();
        }
        index.namespaces.with_all(|all| {
            cluster_target_set(
                &self.spec,
                all.map(|(_, name, ns)| NamespaceInfo { name, labels: &ns.labels, terminating: ns.terminating }),
            )
        })
    }

    fn targets_namespace(&self, index: &Index, namespace: &str) -> bool {
        if !index.selected_by(self.spec.clusters.as_ref()) {
            return false;
        }
        match index.live_namespace_labels(namespace) {
            Some(labels) => {
                cluster_targets(&self.spec, &NamespaceInfo { name: namespace, labels: &labels, terminating: false })
            }
            None => false,
        }
    }

    fn allows_ambient(&self, _: &Settings) -> bool {
        true
    }

    fn as_cluster(&self) -> Option<&ClusterRegistryCredential> {
        Some(self)
    }

    fn policy_name() -> &'static str {
        admission::CLUSTER_REGISTRY_CREDENTIAL_POLICY
    }
}
