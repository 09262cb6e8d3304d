//! The fleet: one regcred (the hub) writes a ClusterRegistryCredential's
//! pull Secret into other clusters (spokes) as well as its own, minting once
//! for all of them (docs/fleet.md).
//!
//! - The leader mints, as for the local cluster, and publishes what it
//!   minted in a *carrier* Secret in regcred's namespace
//!   ([`publish_carrier`]): one provider call per refresh whatever the
//!   number of clusters, and every replica can read it.
//! - Spokes are registered as kubeconfig Secrets in regcred's namespace
//!   ([`crate::clusters`]). Each is hashed to one of `--fleet-shards`
//!   shards; every replica serves the shards it holds a Lease for
//!   ([`shards`]), or all of them without leader election.
//! - A served spoke ([`spoke`]) has its own client, watches, [`Index`] and
//!   ServiceAccount writer, and runs the same plan and act as the local
//!   cluster, in its own tasks: a spoke that is down, refuses the hub or is
//!   slow delays nothing else.
//! - What the spokes hold is reported per shard in
//!   `status.clusters.<shard>`, in Events and in metrics labelled by cluster
//!   ([`report`]).

mod report;
pub mod shards;
mod spoke;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, events::Recorder, events::Reporter};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::index::{Credentials, Index};
use super::plan::{DATA_KEY, DesiredSecret, SECRET_TYPE, data_digest};
use super::{FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL};
use crate::api::{ClusterRegistryCredential, DeletionPolicy, RegistryCredential};
use crate::clusters::{
    ARGO_SECRET_TYPE_LABEL, CAPI_CLUSTER_NAME_LABEL, Format, Registration, fingerprint, registration,
};
use crate::metrics::Metrics;
use crate::targets::{cluster_selected, selects_spokes};
use spoke::Spoke;

/// Label on carrier Secrets (value `true`).
pub const CARRIER_LABEL: &str = "regcred.dev/fleet-carrier";
/// Annotation on a carrier Secret naming the credential it carries.
pub const CARRIER_OF_ANNOTATION: &str = "regcred.dev/fleet-carrier-of";
/// Annotation on a Secret written in a spoke: the credential's
/// deletionPolicy, so a spoke that was down when its credential was deleted
/// is cleaned up when it comes back.
pub const DELETION_POLICY_ANNOTATION: &str = "regcred.dev/deletion-policy";

/// How the fleet runs.
#[derive(Clone, Debug)]
pub struct FleetSettings {
    /// Where kubeconfig and carrier Secrets (and shard Leases) live.
    pub namespace: String,
    /// This replica (the Pod name).
    pub identity: String,
    /// Shards the clusters are spread over.
    pub shards: u32,
    /// Shard Lease duration; `None`: this replica serves every shard.
    pub lease_seconds: Option<u64>,
    /// Writes in flight per credential and spoke.
    pub write_concurrency: usize,
}

/// The carrier Secret of a credential: `regcred-fleet-<name>`, shortened
/// with a hash when that would be too long for a Secret name.
pub fn carrier_name(credential: &str) -> String {
    name_for("regcred-fleet-", credential)
}

/// `prefix` + `credential`, shortened with a hash of the credential's name
/// when longer than an object name may be (253).
fn name_for(prefix: &str, credential: &str) -> String {
    let name = format!("{prefix}{credential}");
    if name.len() <= 253 {
        return name;
    }
    let hash: String = Sha256::digest(credential.as_bytes())[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hash}", &name[..253 - 17])
}

/// The injection parameters (a ConfigMap in a spoke) of a credential:
/// `regcred-inject-<name>`, shortened with a hash when too long.
pub fn params_name(credential: &str) -> String {
    name_for("regcred-inject-", credential)
}

/// The shard of a cluster: a stable hash of its name.
pub fn shard_of(cluster: &str, shards: u32) -> u32 {
    let d = Sha256::digest(cluster.as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % shards.max(1)
}

/// The leader's half: writes (or leaves) the carrier of a credential that
/// selects spokes, and removes the carrier of one that no longer does.
/// `desired` is `None` while the provider fails: the carrier keeps the last
/// good credential.
pub async fn publish_carrier(
    client: &Client,
    index: &Index,
    namespace: &str,
    obj: &ClusterRegistryCredential,
    desired: Option<&DesiredSecret>,
) -> Result<(), kube::Error> {
    let name = carrier_name(&obj.name_any());
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let cached = index.managed.with(namespace, &name, |s| s.resource_version);
    if !selects_spokes(obj.spec.clusters.as_ref()) || obj.metadata.deletion_timestamp.is_some() {
        if cached.is_some() {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
            index.ledger.secret_gone(&(namespace.to_string(), name));
        }
        return Ok(());
    }
    let Some(desired) = desired else { return Ok(()) };
    if let Some(rv) = cached
        && index.content_at(namespace, &name, rv) == Some(desired.digest)
    {
        return Ok(());
    }
    let owner = format!("ClusterRegistryCredential/{}", obj.name_any());
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                (CARRIER_LABEL.to_string(), "true".to_string()),
            ])),
            annotations: Some(BTreeMap::from([(CARRIER_OF_ANNOTATION.to_string(), owner.clone())])),
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.into()),
        data: Some(BTreeMap::from([(DATA_KEY.to_string(), ByteString(desired.data().to_vec()))])),
        ..Default::default()
    };
    let written = api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&secret)).await?;
    let key = (namespace.to_string(), name);
    index.ledger.secret_written(key, &owner, 0, desired.digest, written.metadata.resource_version.as_deref());
    Ok(())
}

/// What a carrier holds for the spokes.
pub(super) struct Carrier {
    pub data: Vec<u8>,
}

/// A registered cluster, served here or not.
struct Known {
    secret: String,
    labels: BTreeMap<String, String>,
    fingerprint: u64,
    /// Why the kubeconfig Secret cannot be used, if it cannot.
    invalid: Option<String>,
}

/// A kubeconfig Secret, the watch it came from, and the cluster it names.
struct KubeconfigSecret {
    secret: Secret,
    watch: Format,
    cluster: Option<String>,
}

/// Shared by every part of the fleet.
pub(super) struct Fleet {
    hub: Client,
    settings: FleetSettings,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    credentials: Store<ClusterRegistryCredential>,
    no_namespaced: Store<RegistryCredential>,
    carriers: Mutex<HashMap<String, Arc<Carrier>>>,
    known: Mutex<BTreeMap<String, Known>>,
    spokes: Mutex<BTreeMap<String, Arc<Spoke>>>,
    owned: watch::Receiver<BTreeSet<u32>>,
    /// The kubeconfig Secrets, by Secret name.
    secrets: Mutex<HashMap<String, KubeconfigSecret>>,
    /// Secrets seen by each kubeconfig watch's relist in progress.
    relisting: Mutex<HashMap<Format, BTreeSet<String>>>,
    /// Carriers seen by the carrier watch's relist in progress.
    carriers_relisting: Mutex<Option<BTreeSet<String>>>,
}

impl Fleet {
    /// The credential stores a spoke's index routes by (no
    /// RegistryCredentials: they never leave the local cluster).
    fn credential_stores(&self) -> Credentials {
        Credentials { namespaced: self.no_namespaced.clone(), cluster: self.credentials.clone() }
    }

    fn credential(&self, name: &str) -> Option<Arc<ClusterRegistryCredential>> {
        self.credentials.get(&ObjectRef::new(name))
    }

    fn carrier(&self, owner: &str) -> Option<Arc<Carrier>> {
        self.carriers.lock().get(owner).cloned()
    }

    /// Sends a credential to every served spoke (each decides whether it is
    /// selected: a spoke it left removes its Secrets).
    fn dispatch(&self, credential: &str) {
        for spoke in self.spokes.lock().values() {
            spoke.enqueue(credential);
        }
    }

    /// Whether this replica serves `cluster`'s shard.
    fn serves(&self, cluster: &str) -> bool {
        self.owned.borrow().contains(&shard_of(cluster, self.settings.shards))
    }

    /// `cluster` is registered by `reg` (the Secret [`Fleet::resolve`] chose).
    fn registered(self: &Arc<Self>, reg: Registration, fingerprint: u64) {
        let name = reg.name.clone();
        let invalid = reg.kubeconfig.as_ref().err().cloned();
        let known = Known { secret: reg.secret.clone(), labels: reg.labels.clone(), fingerprint, invalid };
        self.known.lock().insert(name.clone(), known);
        self.place(&name, Some(reg));
    }

    /// Decides which kubeconfig Secret registers `cluster` (the first by
    /// Secret name among those naming it; the others are ignored, with a
    /// warning) and connects, reconnects or retires its spoke.
    fn resolve(self: &Arc<Self>, cluster: &str) {
        let chosen = {
            let secrets = self.secrets.lock();
            let mut naming: Vec<&String> =
                secrets.iter().filter(|(_, e)| e.cluster.as_deref() == Some(cluster)).map(|(n, _)| n).collect();
            naming.sort();
            if naming.len() > 1 {
                tracing::warn!(cluster, used = %naming[0], ignored = ?&naming[1..], "several kubeconfig Secrets name the same cluster; the first by name is used");
            }
            naming.first().and_then(|n| secrets.get(*n)).map(|e| (registration(&e.secret), fingerprint(&e.secret)))
        };
        match chosen {
            Some((Some(reg), fp)) => self.registered(reg, fp),
            _ => self.unregistered(cluster),
        }
    }

    /// Connects, reconnects, relabels or drops the spoke of `name` as its
    /// registration and the shards served say.
    fn place(self: &Arc<Self>, name: &str, reg: Option<Registration>) {
        let (fingerprint, labels) = match self.known.lock().get(name) {
            Some(k) => (k.fingerprint, k.labels.clone()),
            None => return,
        };
        let current = self.spokes.lock().get(name).cloned();
        if !self.serves(name) {
            if let Some(s) = self.spokes.lock().remove(name) {
                tracing::info!(cluster = %name, "no longer serving this cluster's shard");
                s.stop();
            }
            return;
        }
        if let Some(s) = &current
            && s.fingerprint == fingerprint
        {
            s.relabel(labels);
            return;
        }
        // New, or its kubeconfig changed (rotated): connect anew.
        let kubeconfig = match reg {
            Some(r) => r.kubeconfig,
            None => match self.read_registration(name) {
                Some(r) => r.kubeconfig,
                None => return,
            },
        };
        if let Some(old) = current {
            tracing::info!(cluster = %name, "kubeconfig changed; reconnecting");
            old.stop();
        }
        let spoke = Spoke::start(self.clone(), name, fingerprint, labels, kubeconfig);
        self.spokes.lock().insert(name.to_string(), spoke);
    }

    /// The registration of `name` from the kubeconfig Secret cache.
    fn read_registration(&self, name: &str) -> Option<Registration> {
        let secret = self.known.lock().get(name)?.secret.clone();
        let cached = self.secrets.lock().get(&secret)?.secret.clone();
        registration(&cached)
    }

    /// No kubeconfig Secret registers `cluster` any more (deleted, or it
    /// names another cluster now): its Secrets go per their credential's
    /// deletionPolicy while it can still be reached, then the spoke is
    /// dropped.
    fn unregistered(self: &Arc<Self>, cluster: &str) {
        if self.known.lock().remove(cluster).is_none() {
            return;
        }
        if let Some(s) = self.spokes.lock().remove(cluster) {
            tracing::info!(cluster, "kubeconfig Secret gone; removing regcred's Secrets from the cluster");
            tokio::spawn(s.retire(RETIRE_TIMEOUT));
        }
    }

    /// The shards served changed.
    fn rebalance(self: &Arc<Self>) {
        let names: Vec<String> = self.known.lock().keys().cloned().collect();
        for name in names {
            self.place(&name, None);
        }
        self.metrics.fleet_shards.set(self.owned.borrow().len() as i64);
    }

    /// Registered clusters a credential selects, with their shards.
    fn selected(&self, obj: &ClusterRegistryCredential) -> Vec<(String, u32)> {
        let clusters = obj.spec.clusters.as_ref();
        self.known
            .lock()
            .iter()
            .filter(|(name, k)| cluster_selected(clusters, name, &k.labels))
            .map(|(name, _)| (name.clone(), shard_of(name, self.settings.shards)))
            .collect()
    }
}

/// How long a deleted kubeconfig Secret's cluster is given to have its
/// Secrets removed.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the fleet: serves the spokes of the shards this replica holds,
/// until the process stops.
pub async fn run(hub: Client, settings: FleetSettings, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let (credentials, writer) = reflector::store::<ClusterRegistryCredential>();
    let (no_namespaced, _never) = reflector::store::<RegistryCredential>();
    let all: BTreeSet<u32> = (0..settings.shards).collect();
    let (owned_tx, owned) = watch::channel(if settings.lease_seconds.is_some() { BTreeSet::new() } else { all });
    let reporter = Reporter { controller: "regcred".into(), instance: Some(settings.identity.clone()) };
    let fleet = Arc::new(Fleet {
        recorder: Recorder::new(hub.clone(), reporter),
        hub: hub.clone(),
        settings: settings.clone(),
        metrics,
        credentials,
        no_namespaced,
        carriers: Mutex::default(),
        known: Mutex::default(),
        spokes: Mutex::default(),
        owned,
        secrets: Mutex::default(),
        relisting: Mutex::default(),
        carriers_relisting: Mutex::default(),
    });

    // Credentials: a change of spec, or a deletion, goes to every spoke.
    let creds = watcher::watcher(Api::<ClusterRegistryCredential>::all(hub.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let f = fleet.clone();
    let mut seen: HashMap<String, (Option<i64>, bool)> = HashMap::new();
    let creds = creds.for_each(move |event| {
        match event {
            Ok(Event::Apply(c) | Event::InitApply(c)) => {
                let now = (c.metadata.generation, c.metadata.deletion_timestamp.is_some());
                if seen.insert(c.name_any(), now) != Some(now) {
                    f.dispatch(&c.name_any());
                }
            }
            Ok(Event::Delete(c)) => {
                seen.remove(&c.name_any());
                f.dispatch(&c.name_any());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "watching ClusterRegistryCredentials failed; retrying"),
        }
        futures::future::ready(())
    });

    // Carriers: a new credential goes to every spoke.
    let carrier_cfg = watcher::Config::default().labels(&format!("{CARRIER_LABEL}=true"));
    let f = fleet.clone();
    let carriers = watcher::watcher(Api::<Secret>::namespaced(hub.clone(), &settings.namespace), carrier_cfg)
        .default_backoff()
        .for_each(move |event| {
            match event {
                Ok(Event::Init) => *f.carriers_relisting.lock() = Some(BTreeSet::new()),
                Ok(Event::InitApply(s)) => {
                    if let Some(seen) = f.carriers_relisting.lock().as_mut() {
                        seen.extend(s.annotations().get(CARRIER_OF_ANNOTATION).cloned());
                    }
                    f.carrier_changed(&s, false);
                }
                // Carriers deleted while the watch was away.
                Ok(Event::InitDone) => {
                    if let Some(seen) = f.carriers_relisting.lock().take() {
                        f.carriers.lock().retain(|owner, _| seen.contains(owner));
                    }
                }
                Ok(Event::Apply(s)) => f.carrier_changed(&s, false),
                Ok(Event::Delete(s)) => f.carrier_changed(&s, true),
                Err(e) => tracing::warn!(error = %e, "watching fleet carrier Secrets failed; retrying"),
            }
            futures::future::ready(())
        });

    // Kubeconfig Secrets of both formats.
    let registrations = futures::stream::select(
        kubeconfig_watch(&hub, &settings.namespace, CAPI_CLUSTER_NAME_LABEL, Format::ClusterApi),
        kubeconfig_watch(&hub, &settings.namespace, &format!("{ARGO_SECRET_TYPE_LABEL}=cluster"), Format::ArgoCd),
    );
    let f = fleet.clone();
    type Tagged = (Format, Result<Event<Secret>, watcher::Error>);
    let registrations = registrations.for_each(move |(watch, event): Tagged| {
        match event {
            Ok(Event::Init) => {
                f.relisting.lock().insert(watch, BTreeSet::new());
            }
            Ok(Event::InitApply(s)) => {
                if let Some(seen) = f.relisting.lock().get_mut(&watch) {
                    seen.insert(s.name_any());
                }
                f.secret_changed(watch, &s.name_any(), Some(s));
            }
            // Secrets deleted while the watch was away.
            Ok(Event::InitDone) => {
                let seen = f.relisting.lock().remove(&watch).unwrap_or_default();
                let gone: Vec<String> = f
                    .secrets
                    .lock()
                    .iter()
                    .filter(|(name, e)| e.watch == watch && !seen.contains(*name))
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in gone {
                    f.secret_changed(watch, &name, None);
                }
            }
            Ok(Event::Apply(s)) => f.secret_changed(watch, &s.name_any(), Some(s)),
            Ok(Event::Delete(s)) => f.secret_changed(watch, &s.name_any(), None),
            Err(e) => tracing::warn!(error = %e, "watching kubeconfig Secrets failed; retrying"),
        }
        futures::future::ready(())
    });

    // The shards served: all, or those whose Lease this replica holds.
    let f = fleet.clone();
    let mut owned_rx = fleet.owned.clone();
    let placement = async move {
        f.rebalance();
        while owned_rx.changed().await.is_ok() {
            f.rebalance();
        }
    };
    let leases = {
        let f_leases = fleet.clone();
        let hub = hub.clone();
        let settings = settings.clone();
        async move {
            if let Some(seconds) = settings.lease_seconds {
                // No Lease writes while no cluster is registered.
                while f_leases.known.lock().is_empty() {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                shards::run(hub, shards::LeaseSettings::new(&settings, seconds), owned_tx).await;
            } else {
                // Keep the sender: every shard stays served.
                futures::future::pending::<()>().await;
                drop(owned_tx);
            }
        }
    };
    let reports = report::run(fleet.clone());
    tracing::info!(namespace = %settings.namespace, shards = settings.shards, "fleet started");
    futures::join!(creds, carriers, registrations, placement, leases, reports);
    Ok(())
}

/// A watch of kubeconfig Secrets, its events tagged with `watch`.
fn kubeconfig_watch(
    hub: &Client,
    namespace: &str,
    selector: &str,
    watch: Format,
) -> futures::stream::BoxStream<'static, (Format, Result<Event<Secret>, watcher::Error>)> {
    let api = Api::<Secret>::namespaced(hub.clone(), namespace);
    watcher::watcher(api, watcher::Config::default().labels(selector))
        .default_backoff()
        .map(move |e| (watch, e))
        .boxed()
}

impl Fleet {
    fn carrier_changed(&self, secret: &Secret, deleted: bool) {
        let Some(owner) = secret.annotations().get(CARRIER_OF_ANNOTATION).cloned() else { return };
        let Some(name) = owner.strip_prefix("ClusterRegistryCredential/").map(String::from) else { return };
        if deleted {
            self.carriers.lock().remove(&owner);
            return;
        }
        let Some(data) = secret.data.as_ref().and_then(|d| d.get(DATA_KEY)) else { return };
        let changed = {
            let mut carriers = self.carriers.lock();
            let same = carriers.get(&owner).is_some_and(|c| data_digest(&c.data) == data_digest(&data.0));
            if !same {
                carriers.insert(owner, Arc::new(Carrier { data: data.0.clone() }));
            }
            !same
        };
        if changed {
            self.dispatch(&name);
        }
    }

    /// A kubeconfig Secret was written (`Some`) or deleted (`None`): the
    /// cluster it named before and the one it names now are resolved again.
    fn secret_changed(self: &Arc<Self>, watch: Format, name: &str, secret: Option<Secret>) {
        let after = secret.as_ref().and_then(registration).map(|r| r.name);
        let before = {
            let mut secrets = self.secrets.lock();
            let before = secrets.get(name).and_then(|e| e.cluster.clone());
            match secret {
                Some(secret) => {
                    secrets.insert(name.to_string(), KubeconfigSecret { secret, watch, cluster: after.clone() });
                }
                None => {
                    secrets.remove(name);
                }
            }
            before
        };
        if let Some(b) = before.as_ref().filter(|b| Some(*b) != after.as_ref()) {
            self.resolve(b);
        }
        if let Some(a) = &after {
            self.resolve(a);
        }
    }
}

/// The policy a spoke Secret is written with.
fn policy_name(p: DeletionPolicy) -> &'static str {
    match p {
        DeletionPolicy::Delete => "Delete",
        DeletionPolicy::Orphan => "Orphan",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carrier_names_fit_a_secret_name() {
        assert_eq!(carrier_name("ecr"), "regcred-fleet-ecr");
        let long = "a".repeat(253);
        let name = carrier_name(&long);
        assert!(name.len() <= 253, "{}", name.len());
        assert_ne!(carrier_name(&long), carrier_name(&"a".repeat(252)), "distinct credentials, distinct carriers");
    }

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("prod-eu", 16), shard_of("prod-eu", 16));
        let used: BTreeSet<u32> = (0..200).map(|i| shard_of(&format!("cluster-{i}"), 16)).collect();
        assert_eq!(used.len(), 16, "200 clusters reach every one of 16 shards");
        assert_eq!(shard_of("x", 1), 0);
        // tests/fleet_shards.rs picks spokes by these.
        assert_eq!([shard_of("east", 8), shard_of("west", 8), shard_of("alpha", 8)], [3, 0, 5]);
    }
}
