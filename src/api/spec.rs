//! The two kinds and the spec they share.

// The printcolumn(...) lists repeat keys such as `type_`, which clippy takes
// for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CredentialStatus, Duration, Provider};

/// The spec shared by RegistryCredential and ClusterRegistryCredential.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialSpec {
    /// Where the registry credential comes from. Set exactly one provider.
    pub provider: Provider,
    /// The `kubernetes.io/dockerconfigjson` Secret written in every target
    /// namespace.
    pub secret: SecretTemplate,
    /// ServiceAccounts whose `imagePullSecrets` get the Secret. Entries are
    /// merged, never replaced. Defaults to the `default` ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<ServiceAccountSelector>,
    /// When the credential is refreshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshPolicy>,
    /// Log in to the registry with a new credential before publishing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyPolicy>,
    /// What happens to the written Secrets and imagePullSecrets entries when
    /// the credential is deleted. Defaults to `Delete`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Add the pull Secret to new Pods at admission (Kubernetes 1.36+, or
    /// 1.34-1.35 with the MutatingAdmissionPolicy beta API on). Closes the
    /// two holes the ServiceAccount route leaves: Pods created before the
    /// ServiceAccount was patched, and Pods that list pull Secrets of their
    /// own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection: Option<InjectionPolicy>,
    /// Delete Pods that missed the pull Secret and are stuck pulling from
    /// this credential's registries, so their controller recreates them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryPolicy>,
}

impl CredentialSpec {
    /// Whether admission-time injection is asked for.
    pub fn injection_enabled(&self) -> bool {
        self.injection.as_ref().is_some_and(|i| i.enabled)
    }

    /// Whether recovery of stuck Pods is asked for.
    pub fn recovery_enabled(&self) -> bool {
        self.recovery.as_ref().is_some_and(|r| r.enabled)
    }
}

/// Admission-time injection of the pull Secret into Pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InjectionPolicy {
    /// When true, the chart's MutatingAdmissionPolicy for this kind acts
    /// for this credential: every Pod created in a target namespace that
    /// runs as a ServiceAccount selected by `serviceAccounts.names` (or
    /// `all: true`, or the default `default`) gets `{name: <secret.name>}`
    /// appended to `spec.imagePullSecrets`, unless it already lists it.
    /// Entries the Pod lists are kept. ServiceAccounts selected only by
    /// `serviceAccounts.selector` are not covered at admission (the policy
    /// cannot read a ServiceAccount's labels); they get the Secret through
    /// their `imagePullSecrets` as before. Needs the chart's
    /// MutatingAdmissionPolicies and their bindings; on clusters without
    /// the API the `Injection` condition says so and everything else keeps
    /// working.
    #[serde(default)]
    pub enabled: bool,
}

/// Recovery of Pods that missed the pull Secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryPolicy {
    /// When true, the first time regcred writes the Secret into a namespace
    /// it lists that namespace's Pods once and deletes, rate-limited, each
    /// Pod that runs as a selected ServiceAccount, lacks the Secret, fails
    /// to pull (`ErrImagePull`/`ImagePullBackOff`) an image from one of
    /// this credential's registries, is not running, and is owned by a
    /// ReplicaSet, StatefulSet, Job or DaemonSet, which recreates it with
    /// the Secret (through injection, or through the patched ServiceAccount
    /// when the Pod lists no pull Secret of its own). Pods without such a
    /// controller, and running Pods, are never touched.
    #[serde(default)]
    pub enabled: bool,
}

/// The Secret regcred writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// Name of the Secret in each target namespace (a DNS-1123 subdomain).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Extra labels on the Secret. `app.kubernetes.io/managed-by` is reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64, "x-kubernetes-validations" = [{
        "rule": "!('app.kubernetes.io/managed-by' in self)",
        "message": "the label app.kubernetes.io/managed-by is reserved for regcred"
    }]))]
    pub labels: Option<BTreeMap<String, String>>,
    /// Extra annotations on the Secret. Keys under `regcred.dev/` are reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64, "x-kubernetes-validations" = [{
        "rule": "self.all(k, !k.startsWith('regcred.dev/'))",
        "message": "annotations under regcred.dev/ are reserved for regcred"
    }]))]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Which ServiceAccounts in each target namespace get the Secret in their
/// `imagePullSecrets`. `names` and `selector` add up; `all` takes every
/// ServiceAccount. Set `names: []` to patch none.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.all) && self.all) || (!has(self.names) && !has(self.selector))",
    "message": "all: true cannot be combined with names or selector"
}]))]
pub struct ServiceAccountSelector {
    /// ServiceAccount names. Defaults to `[default]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub names: Option<Vec<String>>,
    /// ServiceAccounts whose labels match this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Every ServiceAccount in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
}

/// Refresh timing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshPolicy {
    /// Refresh this long before the credential expires. Defaults to a third
    /// of the credential's lifetime (renewal at 2/3 of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<Duration>,
    /// Refresh period for credentials that do not expire (static ones).
    /// Defaults to 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

/// Registry login check before a new credential is published.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.repositories) || (has(self.enabled) && self.enabled)",
    "message": "verify.repositories needs verify.enabled: true"
}]))]
pub struct VerifyPolicy {
    /// Log in to the registry (`GET /v2/`, following the Basic or Bearer
    /// challenge) before publishing a new credential; a credential the
    /// registry rejects is not published.
    #[serde(default)]
    pub enabled: bool,
    /// PEM CA certificates trusted for the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub ca_bundle: Option<String>,
    /// Talk plain HTTP to the registry (only for registries without TLS).
    #[serde(default, rename = "plainHTTP", skip_serializing_if = "Option::is_none")]
    pub plain_http: Option<bool>,
    /// Repositories the credential must be allowed to pull, checked after the
    /// login: regcred asks for a token scoped `repository:NAME:pull` where
    /// the registry uses tokens, and reads a manifest (`HEAD
    /// /v2/NAME/manifests/latest`). A present or missing manifest (200 or
    /// 404) passes; a refusal (401 or 403) fails verification with the
    /// registry's reason and the credential is not published. Write
    /// `NAME` (for example `team/app`, or `PROJECT/REPOSITORY/IMAGE` on
    /// Artifact Registry) to check it on every registry of the credential, or
    /// `HOST/NAME` (a first component with a dot or a port, or `localhost`)
    /// to check it on that registry only. Needs `enabled: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 16),
        inner(
            length(min = 1, max = 255),
            regex(
                pattern = r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
            )
        )
    )]
    pub repositories: Option<Vec<String>>,
}

/// What happens to written objects when the credential is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Remove the Secrets and imagePullSecrets entries regcred wrote.
    #[default]
    Delete,
    /// Leave them in place.
    Orphan,
}

/// A namespaced registry credential: reads source Secrets from, and writes its
/// pull Secret into, its own namespace only.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "regcred.dev",
    version = "v1beta1",
    kind = "RegistryCredential",
    doc = "RegistryCredential keeps an image pull Secret fresh in its own namespace. It reads source Secrets only from its own namespace and writes only there.",
    namespaced,
    shortname = "rcred",
    category = "regcred",
    status = "CredentialStatus",
    printcolumn(
        name = "Provider",
        type_ = "string",
        json_path = ".status.provider",
        description = "The credential's provider"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the pull Secret is current"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.expiresAt",
        description = "When the published credential expires"
    ),
    printcolumn(
        name = "Namespaces",
        type_ = "string",
        json_path = ".status.targets.summary",
        description = "Namespaces synced/desired"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct RegistryCredentialSpec {
    #[serde(flatten)]
    pub credential: CredentialSpec,
}

/// A cluster-wide registry credential: reads source Secrets from the
/// operator's cluster resource namespace and writes its pull Secret into every
/// selected namespace.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "regcred.dev",
    version = "v1beta1",
    kind = "ClusterRegistryCredential",
    doc = "ClusterRegistryCredential keeps an image pull Secret fresh in every selected namespace. Source Secrets live in the operator's cluster resource namespace.",
    shortname = "crcred",
    category = "regcred",
    status = "CredentialStatus",
    printcolumn(
        name = "Provider",
        type_ = "string",
        json_path = ".status.provider",
        description = "The credential's provider"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the pull Secrets are current"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.expiresAt",
        description = "When the published credential expires"
    ),
    printcolumn(
        name = "Namespaces",
        type_ = "string",
        json_path = ".status.targets.summary",
        description = "Namespaces synced/desired"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.namespaceSelector) || (has(self.namespaces) && size(self.namespaces) > 0)",
    "message": "select target namespaces with namespaceSelector or namespaces"
}]))]
pub struct ClusterRegistryCredentialSpec {
    #[serde(flatten)]
    pub credential: CredentialSpec,
    /// Namespaces whose labels match this selector are targets. `{}` matches
    /// every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Namespaces targeted by name, in addition to the selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 1024),
        inner(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    )]
    pub namespaces: Option<Vec<String>>,
    /// Namespaces never targeted, even when selected above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 1024),
        inner(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    )]
    pub exclude_namespaces: Option<Vec<String>>,
    /// The clusters the pull Secret is written to (docs/fleet.md). Absent:
    /// this cluster only. The namespace selection above applies inside each
    /// selected cluster; the credential is minted once for all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<ClusterSelector>,
}

/// Which clusters a ClusterRegistryCredential writes to. Clusters are
/// registered as kubeconfig Secrets in regcred's namespace: Cluster API's
/// `<cluster>-kubeconfig` Secrets and Argo CD cluster Secrets. `names` and
/// `selector` add up; `exclude` wins.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSelector {
    /// Write to the cluster regcred runs in. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<bool>,
    /// Clusters whose kubeconfig Secret's labels match this selector. `{}`
    /// matches every registered cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Clusters by name: the `cluster.x-k8s.io/cluster-name` label of a
    /// Cluster API Secret, the `name` key of an Argo CD cluster Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), inner(length(min = 1, max = 253)))]
    pub names: Option<Vec<String>>,
    /// Clusters never written to, even when selected above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), inner(length(min = 1, max = 253)))]
    pub exclude: Option<Vec<String>>,
}

impl ClusterSelector {
    /// Whether the local cluster is written to.
    pub fn local(&self) -> bool {
        self.local.unwrap_or(true)
    }
}
