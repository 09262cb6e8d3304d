//! What the spokes hold, told: `status.clusters.<shard>` of each credential
//! (written by the replica serving the shard, only when it changed),
//! Events when a cluster starts or stops failing, and metrics per cluster.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::Fleet;
use crate::api::{ClusterFailure, ClusterRegistryCredential, DeletionPolicy, ShardStatus};
use crate::metrics::ClusterLabels;
use crate::reasons;

/// Failures listed per shard.
const MAX_FAILED_LISTED: usize = 20;
/// Failures listed over all shards: with many shards each lists fewer, so
/// the status stays well under etcd's object size limit (1.5 MiB) however
/// many clusters fail.
const MAX_FAILED_TOTAL: usize = 320;

/// Failures each shard lists when there are `shards`.
pub(super) fn failures_per_shard(shards: u32) -> usize {
    (MAX_FAILED_TOTAL / shards.max(1) as usize).clamp(1, MAX_FAILED_LISTED)
}
/// How often the report is made (it writes only what changed).
const PERIOD: Duration = Duration::from_secs(2);
/// How long a cluster may be connecting before it is reported.
const CONNECTING_FOR: Duration = Duration::from_secs(30);
/// Field manager of the shards' status writes.
const FIELD_MANAGER: &str = "regcred-fleet";

/// Where one cluster stands for one credential.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Standing {
    /// Every target namespace holds the current Secret.
    Synced {
        namespaces: usize,
    },
    /// Not yet: caches filling, nothing minted yet, writes in flight.
    Pending {
        namespaces: usize,
    },
    Failed {
        reason: String,
        message: String,
    },
}

pub(super) async fn run(fleet: Arc<Fleet>) {
    // The failure last told per (credential, cluster), for Events.
    let mut told: HashMap<(String, String), Option<String>> = HashMap::new();
    loop {
        tokio::time::sleep(PERIOD).await;
        report_once(&fleet, &mut told).await;
    }
}

impl Fleet {
    /// Where `cluster` stands for `credential`.
    fn standing(&self, cluster: &str, credential: &str) -> Standing {
        let failed = |reason: &str, message: String| Standing::Failed { reason: reason.into(), message };
        if let Some(invalid) = self.known.lock().get(cluster).and_then(|k| k.invalid.clone()) {
            return failed(reasons::KUBECONFIG_INVALID, invalid);
        }
        let Some(spoke) = self.spokes.lock().get(cluster).cloned() else {
            return Standing::Pending { namespaces: 0 };
        };
        let health = spoke.health();
        if let Some((reason, message)) = health.problem {
            return failed(reason, message);
        }
        if !health.ready {
            // Connecting takes seconds; longer is worth telling.
            let waited = spoke.started.elapsed();
            if waited > CONNECTING_FOR {
                let message = format!("its caches are not filled after {}s", waited.as_secs());
                return failed(reasons::CLUSTER_CONNECTING, message);
            }
            return Standing::Pending { namespaces: 0 };
        }
        match spoke.outcome(credential) {
            Some(o) if o.failure.is_some() => {
                let (reason, message) = o.failure.expect("checked");
                Standing::Failed { reason, message }
            }
            Some(o) if o.published && o.synced == o.targets => Standing::Synced { namespaces: o.synced },
            Some(o) => Standing::Pending { namespaces: o.synced },
            None => Standing::Pending { namespaces: 0 },
        }
    }

    /// Whether `cluster` may still hold Secrets of `owner` (unknown counts).
    fn still_holds(&self, cluster: &str, owner: &str) -> bool {
        match self.spokes.lock().get(cluster) {
            Some(s) => s.holds(owner).unwrap_or(true),
            None => true,
        }
    }
}

/// The status of one shard for one credential (pure).
pub(super) fn shard_status(
    standings: &[(String, Standing)],
    cleanup_pending: Option<usize>,
    max_failed: usize,
) -> ShardStatus {
    let mut status = ShardStatus { desired: standings.len() as i32, ..Default::default() };
    for (cluster, standing) in standings {
        match standing {
            Standing::Synced { namespaces } => {
                status.synced += 1;
                status.namespaces += *namespaces as i32;
            }
            Standing::Pending { namespaces } => status.namespaces += *namespaces as i32,
            Standing::Failed { reason, message } => status.failed.push(ClusterFailure {
                cluster: cluster.clone(),
                reason: reason.clone(),
                message: Some(truncate(message, 512)),
            }),
        }
    }
    status.failed.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    status.failed.truncate(max_failed);
    status.cleanup_pending = cleanup_pending.map(|n| n as i32);
    status
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

async fn report_once(fleet: &Arc<Fleet>, told: &mut HashMap<(String, String), Option<String>>) {
    let owned = fleet.owned.borrow().clone();
    let max_failed = failures_per_shard(fleet.settings.shards);
    let spokes: Vec<_> = fleet.spokes.lock().values().cloned().collect();
    for s in &spokes {
        let labels = ClusterLabels { cluster: s.name.clone() };
        fleet.metrics.cluster_secrets.get_or_create(&labels).set(s.synced_secrets() as i64);
    }
    for obj in fleet.credentials.state() {
        let name = obj.name_any();
        let owner = format!("ClusterRegistryCredential/{name}");
        let deleting = obj.metadata.deletion_timestamp.is_some();
        let cleaning = deleting && obj.spec.credential.deletion_policy == DeletionPolicy::Delete;
        let mut by_shard: BTreeMap<u32, Vec<(String, Standing)>> = BTreeMap::new();
        let mut pending: BTreeMap<u32, usize> = BTreeMap::new();
        for (cluster, shard) in fleet.selected(&obj).into_iter().filter(|(_, s)| owned.contains(s)) {
            if cleaning {
                let holds = fleet.still_holds(&cluster, &owner);
                *pending.entry(shard).or_default() += usize::from(holds);
                let standing = match fleet.standing(&cluster, &name) {
                    Standing::Failed { reason, message } => Standing::Failed { reason, message },
                    _ if holds => Standing::Pending { namespaces: 0 },
                    _ => Standing::Synced { namespaces: 0 },
                };
                by_shard.entry(shard).or_default().push((cluster, standing));
                continue;
            }
            let standing = fleet.standing(&cluster, &name);
            tell(fleet, &obj, &cluster, &standing, told).await;
            by_shard.entry(shard).or_default().push((cluster, standing));
        }
        let current = obj.status.as_ref().and_then(|s| s.clusters.clone()).unwrap_or_default();
        let mut patch = serde_json::Map::new();
        for shard in &owned {
            let key = shard.to_string();
            let left = cleaning.then(|| pending.get(shard).copied().unwrap_or(0));
            let new = by_shard.get(shard).map(|s| shard_status(s, left, max_failed));
            if new.as_ref() != current.get(&key) {
                patch.insert(key, merge_value(new.as_ref()));
            }
        }
        // Entries of shards that no longer exist (--fleet-shards lowered):
        // any replica removes them.
        for key in current.keys() {
            if key.parse::<u32>().map_or(true, |s| s >= fleet.settings.shards) {
                patch.insert(key.clone(), serde_json::Value::Null);
            }
        }
        if patch.is_empty() {
            continue;
        }
        let api: Api<ClusterRegistryCredential> = Api::all(fleet.hub.clone());
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let body = json!({ "status": { "clusters": patch } });
        match api.patch_status(&name, &params, &Patch::Merge(&body)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => tracing::warn!(credential = %name, error = %e, "writing the clusters' status failed"),
        }
    }
}

/// A shard's status as a JSON merge patch value: fields left out of the
/// new status are sent as `null`, which removes them (a merge patch leaves
/// what it does not name); no status at all removes the shard's entry.
fn merge_value(status: Option<&ShardStatus>) -> serde_json::Value {
    let Some(status) = status else { return serde_json::Value::Null };
    let mut value = serde_json::to_value(status).expect("status serialises");
    if let Some(map) = value.as_object_mut() {
        for field in ["failed", "cleanupPending"] {
            map.entry(field).or_insert(serde_json::Value::Null);
        }
    }
    value
}

/// An Event when a cluster starts failing for a credential, fails for
/// another reason, or holds the current Secret again.
async fn tell(
    fleet: &Fleet,
    obj: &ClusterRegistryCredential,
    cluster: &str,
    standing: &Standing,
    told: &mut HashMap<(String, String), Option<String>>,
) {
    let key = (obj.name_any(), cluster.to_string());
    let (event, now) = match standing {
        Standing::Failed { reason, message } => {
            if told.get(&key).is_some_and(|r| r.as_deref() == Some(reason.as_str())) {
                return;
            }
            let note = truncate(&format!("cluster {cluster}: {message}"), 1000);
            (
                KubeEvent {
                    type_: EventType::Warning,
                    reason: reason.clone(),
                    note: Some(note),
                    action: "Sync".into(),
                    secondary: None,
                },
                Some(reason.clone()),
            )
        }
        Standing::Synced { namespaces } => {
            if !told.get(&key).is_some_and(Option::is_some) {
                told.insert(key, None);
                return;
            }
            let note = format!("cluster {cluster} holds the current Secret in {namespaces} namespaces");
            (
                KubeEvent {
                    type_: EventType::Normal,
                    reason: reasons::CLUSTER_SYNCED.into(),
                    note: Some(note),
                    action: "Sync".into(),
                    secondary: None,
                },
                None,
            )
        }
        Standing::Pending { .. } => return,
    };
    told.insert(key, now);
    let reference: ObjectReference = obj.object_ref(&());
    if let Err(e) = fleet.recorder.publish(&event, &reference).await {
        tracing::warn!(error = %e, "publishing an Event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_counts_its_clusters_and_lists_failures_bounded() {
        let mut standings = vec![
            ("a".to_string(), Standing::Synced { namespaces: 3 }),
            ("b".to_string(), Standing::Pending { namespaces: 1 }),
        ];
        for i in 0..30 {
            standings.push((
                format!("down-{i:02}"),
                Standing::Failed { reason: reasons::CLUSTER_UNREACHABLE.into(), message: "x".repeat(2000) },
            ));
        }
        let s = shard_status(&standings, None, failures_per_shard(16));
        assert_eq!((s.desired, s.synced, s.namespaces), (32, 1, 4));
        assert_eq!(s.failed.len(), MAX_FAILED_LISTED, "bounded");
        assert_eq!(s.failed[0].cluster, "down-00");
        assert!(s.failed[0].message.as_ref().unwrap().len() < 600, "messages are shortened");
        assert_eq!(s.cleanup_pending, None);
        assert_eq!(shard_status(&standings[..1], Some(0), 20).cleanup_pending, Some(0));
        assert_eq!(failures_per_shard(256), 1, "256 shards list at most 256 failures");
        assert_eq!(failures_per_shard(1), MAX_FAILED_LISTED);
    }

    #[test]
    fn the_status_of_1000_failing_clusters_stays_small() {
        for shards in [1, 16, 256] {
            let mut by_shard: BTreeMap<u32, Vec<(String, Standing)>> = BTreeMap::new();
            for i in 0..1000 {
                let cluster = format!("cluster-{i:04}-{}", "x".repeat(200));
                let failed =
                    Standing::Failed { reason: reasons::CLUSTER_UNREACHABLE.into(), message: "m".repeat(4000) };
                by_shard.entry(super::super::shard_of(&cluster, shards)).or_default().push((cluster, failed));
            }
            let status: BTreeMap<String, ShardStatus> = by_shard
                .iter()
                .map(|(s, st)| (s.to_string(), shard_status(st, None, failures_per_shard(shards))))
                .collect();
            let bytes = serde_json::to_vec(&status).unwrap().len();
            assert_eq!(status.values().map(|s| s.desired).sum::<i32>(), 1000);
            assert!(bytes < 300 * 1024, "{shards} shards: {bytes} bytes");
        }
    }

    #[test]
    fn a_merge_patch_removes_what_the_new_status_leaves_out() {
        let synced = ShardStatus { desired: 1, synced: 1, namespaces: 2, ..Default::default() };
        let v = merge_value(Some(&synced));
        assert!(v["failed"].is_null() && v["cleanupPending"].is_null(), "{v}");
        assert!(v.as_object().unwrap().contains_key("failed"), "sent as null, not left out");
        assert!(merge_value(None).is_null(), "no clusters left in the shard: the entry goes");
    }
}
