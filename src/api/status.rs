//! Status shared by both kinds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a registry credential.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` says whether every target holds a current credential; its
    /// reason says why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The provider in use (`ecr`, `google`, `basic`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Registry hosts present in the written Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<String>,
    /// When the published credential expires. Empty for static credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the credential was last minted successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<Time>,
    /// When the next refresh is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh_time: Option<Time>,
    /// Where the Secret is written and how that went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<TargetStatus>,
    /// State the provider keeps between refreshes, such as the ids of the
    /// Harbor robot accounts regcred created. Never secret material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub provider_state: Option<serde_json::Value>,
    /// The clusters of a fleet other than this one (docs/fleet.md), by
    /// shard: each shard is written by the replica serving it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<std::collections::BTreeMap<String, ShardStatus>>,
}

/// What the selected clusters of one shard hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    /// Selected clusters in this shard.
    pub desired: i32,
    /// Clusters where every target namespace holds the current Secret.
    pub synced: i32,
    /// Namespaces holding the current Secret, over those clusters.
    pub namespaces: i32,
    /// Clusters that could not be synced, and why (at most 20 listed per
    /// shard, fewer with many shards: 320 over all shards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<ClusterFailure>,
    /// Clusters still holding Secrets of this credential while it is being
    /// deleted (with `deletionPolicy: Delete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup_pending: Option<i32>,
}

/// A cluster that could not be synced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFailure {
    /// The cluster's name.
    pub cluster: String,
    /// Machine-readable reason, for example `ClusterUnreachable`.
    pub reason: String,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Fan-out state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    /// Number of namespaces that should hold the Secret.
    pub desired: i32,
    /// Number of namespaces holding the current Secret.
    pub synced: i32,
    /// `synced/desired`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Namespaces that could not be synced, and why (at most 50 listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<TargetFailure>,
}

/// A namespace that could not be synced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetFailure {
    /// The namespace.
    pub namespace: String,
    /// Machine-readable reason, for example `SecretConflict`.
    pub reason: String,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
