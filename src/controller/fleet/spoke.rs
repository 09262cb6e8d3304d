//! One spoke: its client, watches, index and ServiceAccount writer, and a
//! worker that plans and acts for each credential, in tasks of its own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures::channel::oneshot;
use kube::config::Kubeconfig;
use kube::runtime::watcher;
use parking_lot::Mutex;
use tokio::task::AbortHandle;

use super::super::cluster::{Cluster, Waker};
use super::super::index::{CredentialRef, Index, SpokeIdentity};
use super::super::plan::{self, DesiredSecret};
use super::super::{
    FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, OWNER_ANNOTATION, Observer, accounts, act, list_contents, recovery,
    related_watches,
};
use super::{DELETION_POLICY_ANNOTATION, Fleet, policy_name};
use crate::api::{ClusterRegistryCredential, DeletionPolicy};
use crate::metrics::{ClusterLabels, ClusterReasonLabels, CredentialLabels};
use crate::reasons;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Resource, ResourceExt};

const OWNER_PREFIX: &str = "ClusterRegistryCredential/";
/// Why a kubeconfig that parsed cannot make a client.
const UNUSABLE: &str = "the kubeconfig cannot be used: its certificate, key or CA data cannot be read";
/// The longest one credential's sync in one cluster may take.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Work for the spoke's worker.
pub(super) enum Job {
    Credential(String),
    /// Remove what regcred wrote here (per deletionPolicy), then stop.
    Retire(oneshot::Sender<()>),
}

/// Whether the spoke answers, and why not.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Health {
    /// Caches filled.
    pub ready: bool,
    pub problem: Option<(&'static str, String)>,
    /// The problem is a sync that timed out (a later sync that ends in time
    /// clears it; otherwise watch events do).
    timed_out: bool,
}

/// What the last sync of a credential here came to.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Outcome {
    pub targets: usize,
    pub synced: usize,
    /// A carrier existed: there was something to publish.
    pub published: bool,
    pub failure: Option<(String, String)>,
    /// Secrets of a credential being deleted are still here.
    pub holds: bool,
}

/// See the module documentation.
pub(super) struct Spoke {
    pub name: String,
    pub fingerprint: u64,
    identity: Arc<SpokeIdentity>,
    fleet: Arc<Fleet>,
    jobs: UnboundedSender<Job>,
    jobs_rx: Mutex<Option<UnboundedReceiver<Job>>>,
    cluster: Mutex<Option<Arc<Cluster>>>,
    /// Pod recovery in this cluster.
    recovery: Mutex<Option<Arc<recovery::Site>>>,
    /// Where the cluster's injection binding takes its parameters (`None`:
    /// no binding, or no MutatingAdmissionPolicy API), and when that was
    /// last looked up.
    injection: tokio::sync::Mutex<(Option<String>, Option<std::time::Instant>)>,
    /// Digests of the injection parameters written, by credential.
    injected: Mutex<HashMap<String, [u8; 32]>>,
    health: Mutex<Health>,
    outcomes: Mutex<HashMap<String, Outcome>>,
    retries: Mutex<HashMap<String, u32>>,
    tasks: Mutex<Vec<AbortHandle>>,
    /// When serving it started.
    pub started: std::time::Instant,
}

impl Spoke {
    /// Connects to the spoke in the background and starts serving it.
    pub fn start(
        fleet: Arc<Fleet>,
        name: &str,
        fingerprint: u64,
        labels: BTreeMap<String, String>,
        kubeconfig: Result<Kubeconfig, String>,
    ) -> Arc<Spoke> {
        let (jobs, jobs_rx) = unbounded();
        let identity = Arc::new(SpokeIdentity { name: name.into(), labels: parking_lot::RwLock::new(labels) });
        let spoke = Arc::new(Spoke {
            name: name.into(),
            fingerprint,
            identity,
            fleet,
            jobs,
            jobs_rx: Mutex::new(Some(jobs_rx)),
            cluster: Mutex::default(),
            recovery: Mutex::default(),
            injection: tokio::sync::Mutex::new((None, None)),
            injected: Mutex::default(),
            health: Mutex::default(),
            outcomes: Mutex::default(),
            retries: Mutex::default(),
            tasks: Mutex::default(),
            started: std::time::Instant::now(),
        });
        spoke.fleet.metrics.cluster_up.get_or_create(&spoke.labels()).set(0);
        let s = spoke.clone();
        spoke.spawn(async move { s.serve(kubeconfig).await });
        spoke
    }

    fn labels(&self) -> ClusterLabels {
        ClusterLabels { cluster: self.name.clone() }
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.lock().push(tokio::spawn(task).abort_handle());
    }

    /// Stops every task of the spoke at once (writes in flight are
    /// abandoned): its shard went to another replica, or its kubeconfig
    /// changed.
    pub fn stop(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        self.fleet.metrics.cluster_up.remove(&self.labels());
        self.fleet.metrics.cluster_secrets.remove(&self.labels());
    }

    /// Removes regcred's Secrets (per deletionPolicy) within `timeout`, then
    /// stops.
    pub async fn retire(self: Arc<Self>, timeout: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.jobs.unbounded_send(Job::Retire(tx)).is_ok() && tokio::time::timeout(timeout, rx).await.is_err() {
            tracing::warn!(cluster = %self.name, "the cluster could not be cleaned up in time; its Secrets stay");
        }
        self.stop();
    }

    pub fn enqueue(&self, credential: &str) {
        let _ = self.jobs.unbounded_send(Job::Credential(credential.into()));
    }

    /// The kubeconfig Secret's labels changed: selections are looked at again.
    pub fn relabel(&self, labels: BTreeMap<String, String>) {
        if *self.identity.labels.read() == labels {
            return;
        }
        *self.identity.labels.write() = labels;
        for name in self.credential_names() {
            self.enqueue(&name);
        }
    }

    pub fn health(&self) -> Health {
        self.health.lock().clone()
    }

    pub fn outcome(&self, credential: &str) -> Option<Outcome> {
        self.outcomes.lock().get(credential).cloned()
    }

    /// Pull Secrets here holding their credential's current content.
    pub fn synced_secrets(&self) -> usize {
        self.outcomes.lock().values().map(|o| o.synced).sum()
    }

    /// Whether the cache shows Secrets of `owner` here (`None`: not known yet).
    pub fn holds(&self, owner: &str) -> Option<bool> {
        let cluster = self.cluster.lock().clone()?;
        self.health.lock().ready.then(|| holds(&cluster.index, owner))
    }

    fn problem(&self, reason: &'static str, message: String) {
        let mut health = self.health.lock();
        if health.problem.as_ref().map(|p| p.0) != Some(reason) {
            tracing::warn!(cluster = %self.name, reason, "{message}");
            let labels = ClusterReasonLabels { cluster: self.name.clone(), reason: reason.into() };
            self.fleet.metrics.cluster_errors.get_or_create(&labels).inc();
        }
        health.problem = Some((reason, message));
        self.fleet.metrics.cluster_up.get_or_create(&self.labels()).set(0);
    }

    /// What a watch saw: an event clears a problem, an error is one.
    fn observe(&self, seen: Result<(), &watcher::Error>) {
        match seen {
            Ok(()) => {
                let cleared = {
                    let mut health = self.health.lock();
                    health.timed_out = false;
                    let cleared = health.problem.take().is_some();
                    if cleared {
                        tracing::info!(cluster = %self.name, "the cluster answers again");
                        self.fleet.metrics.cluster_up.get_or_create(&self.labels()).set(i64::from(health.ready));
                    }
                    cleared
                };
                // What was held back while it did not answer goes now.
                if cleared {
                    for name in self.credential_names() {
                        self.enqueue(&name);
                    }
                }
            }
            Err(e) => {
                if let Some((reason, message)) = classify(e) {
                    self.problem(reason, message);
                }
            }
        }
    }

    async fn serve(self: Arc<Self>, kubeconfig: Result<Kubeconfig, String>) {
        let kubeconfig = match kubeconfig {
            Ok(k) => k,
            Err(message) => return self.problem(reasons::KUBECONFIG_INVALID, message),
        };
        let mut config = match kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await {
            Ok(c) => c,
            // Its message may quote what it could not read: not shown.
            Err(_) => return self.problem(reasons::KUBECONFIG_INVALID, UNUSABLE.into()),
        };
        // A spoke that does not answer fails its own requests soon; the
        // watches' long polls keep the default read timeout.
        config.connect_timeout = Some(Duration::from_secs(5));
        config.write_timeout = Some(Duration::from_secs(30));
        let client = match crate::metrics::counted_client(config, &self.fleet.metrics) {
            Ok(c) => c,
            Err(_) => return self.problem(reasons::KUBECONFIG_INVALID, UNUSABLE.into()),
        };
        let index = Arc::new(Index::spoke(self.fleet.credential_stores(), self.identity.clone()));
        let jobs = self.jobs.clone();
        let wake: Waker = Box::new(move |credentials| {
            for c in credentials {
                if let CredentialRef::Cluster(r) = c {
                    let _ = jobs.unbounded_send(Job::Credential(r.name));
                }
            }
        });
        let cluster =
            Arc::new(Cluster::new(client.clone(), index.clone(), self.fleet.settings.write_concurrency, wake));
        *self.cluster.lock() = Some(cluster.clone());
        let reporter = Reporter { controller: "regcred".into(), instance: Some(self.fleet.settings.identity.clone()) };
        *self.recovery.lock() = Some(Arc::new(recovery::Site {
            client: client.clone(),
            index: index.clone(),
            limits: recovery::Recovery::default(),
            metrics: self.fleet.metrics.clone(),
            pod_events: Recorder::new(client.clone(), reporter),
            credential_events: self.fleet.recorder.clone(),
        }));
        let me = Arc::downgrade(&self);
        let observe: Observer = Arc::new(move |seen| {
            if let Some(s) = me.upgrade() {
                s.observe(seen);
            }
        });
        for related in related_watches(&client, &index, Some(observe)) {
            let cluster = cluster.clone();
            self.spawn(related.for_each(move |(change, deleted)| {
                let routed = cluster.index.route(&change, deleted);
                if let Some(namespace) = routed.accounts {
                    cluster.accounts.enqueue(&namespace);
                }
                cluster.wake(routed.credentials);
                futures::future::ready(())
            }));
        }
        self.spawn(accounts::run(cluster.clone()));
        index.wait_until_ready().await;
        // What the managed Secrets hold (so nothing in place is rewritten).
        while let Err(e) = list_contents(&client, &index).await {
            self.problem(reasons::CLUSTER_UNREACHABLE, format!("listing regcred's Secrets: {e}"));
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        {
            let mut health = self.health.lock();
            health.ready = true;
            let up = health.problem.is_none();
            self.fleet.metrics.cluster_up.get_or_create(&self.labels()).set(i64::from(up));
        }
        tracing::info!(cluster = %self.name, "cluster caches filled; serving it");
        // Every credential once, and the owners of Secrets here whose
        // credential is gone (deleted while this cluster was away).
        for name in self.credential_names() {
            self.enqueue(&name);
        }
        self.work(cluster).await;
    }

    /// Every credential, and every owner of a Secret here.
    fn credential_names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> =
            self.fleet.credentials.state().iter().map(|c| kube::ResourceExt::name_any(&**c)).collect();
        if let Some(cluster) = self.cluster.lock().clone() {
            cluster.index.managed.with_all(|all| {
                names.extend(all.filter_map(|(_, _, s)| s.owner()?.strip_prefix(OWNER_PREFIX).map(String::from)));
            });
        }
        names
    }

    async fn work(self: Arc<Self>, cluster: Arc<Cluster>) {
        let Some(mut rx) = self.jobs_rx.lock().take() else { return };
        while let Some(job) = rx.next().await {
            let mut pending = BTreeSet::new();
            let mut retire = None;
            let mut take = |job| match job {
                Job::Credential(name) => {
                    pending.insert(name);
                }
                Job::Retire(tx) => retire = Some(tx),
            };
            take(job);
            while let Ok(job) = rx.try_recv() {
                take(job);
            }
            if let Some(done) = retire {
                self.clean_all(&cluster).await;
                let _ = done.send(());
                return;
            }
            for name in pending {
                // A cluster that accepts connections and never answers
                // would hold its worker for the client's read timeout
                // (minutes): give up sooner, say so, and try again later.
                if tokio::time::timeout(SYNC_TIMEOUT, self.sync(&cluster, &name)).await.is_err() {
                    let message = format!("the cluster did not answer within {}s", SYNC_TIMEOUT.as_secs());
                    self.problem(reasons::CLUSTER_UNREACHABLE, message);
                    self.health.lock().timed_out = true;
                    self.retry_later(&name);
                } else {
                    let mut health = self.health.lock();
                    if health.timed_out {
                        health.timed_out = false;
                        health.problem = None;
                        self.fleet.metrics.cluster_up.get_or_create(&self.labels()).set(i64::from(health.ready));
                    }
                }
            }
        }
    }

    /// Brings one credential's Secrets here to what it wants.
    async fn sync(self: &Arc<Self>, cluster: &Arc<Cluster>, name: &str) {
        // The watches say the cluster does not answer, or refuses the hub:
        // every write would fail the same way (and log it), so none is
        // sent; the watches' recovery sends every credential again.
        if self.held_back() {
            return;
        }
        let owner = format!("{OWNER_PREFIX}{name}");
        let outcome = match self.fleet.credential(name) {
            // Gone (deleted while this cluster was away, or just now).
            None => {
                self.sync_injection(cluster, name, None).await;
                let removals = plan::orphan_removals(&cluster.index, &owner, DELETION_POLICY_ANNOTATION);
                let failed = self.remove(cluster, name, removals).await;
                failed.map(|m| Outcome {
                    failure: Some((reasons::WRITE_FAILED.into(), m)),
                    holds: true,
                    ..Default::default()
                })
            }
            Some(obj) => {
                let deleting = obj.metadata.deletion_timestamp.is_some();
                let policy = obj.spec.credential.deletion_policy;
                if deleting || !cluster.index.selected_by(obj.spec.clusters.as_ref()) {
                    // Deleted, or this cluster left the selection.
                    self.sync_injection(cluster, name, None).await;
                    let mut failed = None;
                    if policy == DeletionPolicy::Delete {
                        let removals = plan::plan_deletion(&cluster.index, &*obj).removals;
                        failed = self.remove(cluster, name, removals).await;
                    }
                    deleting.then(|| Outcome {
                        holds: failed.is_some() || holds(&cluster.index, &owner),
                        failure: failed.map(|m| (reasons::WRITE_FAILED.into(), m)),
                        ..Default::default()
                    })
                } else {
                    let desired = self.fleet.carrier(&owner).map(|c| {
                        let extra = [(DELETION_POLICY_ANNOTATION, policy_name(policy))];
                        Arc::new(DesiredSecret::with_data(&obj.spec.credential, &owner, c.data.clone(), &extra))
                    });
                    let plan = plan::plan(&cluster.index, &*obj, desired.as_deref());
                    let targets = plan.targets.len();
                    let published = desired.is_some();
                    let registries = desired.as_ref().map(|d| registries_in(d.data())).unwrap_or_default();
                    let report = act::act(cluster, &owner, desired, plan).await;
                    let injecting = self.sync_injection(cluster, name, Some((&obj, &report.synced))).await;
                    if obj.spec.credential.recovery_enabled() && published {
                        self.start_recovery(&obj, &report.created_in, registries, injecting);
                    }
                    if report.retry {
                        self.retry_later(name);
                    } else {
                        self.retries.lock().remove(name);
                    }
                    let failure = report.failed.first().map(|f| {
                        let labels = ClusterReasonLabels { cluster: self.name.clone(), reason: f.reason.clone() };
                        self.fleet.metrics.cluster_errors.get_or_create(&labels).inc();
                        (f.reason.clone(), f.message.clone().unwrap_or_else(|| f.namespace.clone()))
                    });
                    Some(Outcome { targets, synced: report.synced.len(), published, failure, holds: false })
                }
            }
        };
        let mut outcomes = self.outcomes.lock();
        match outcome {
            Some(o) => outcomes.insert(name.to_string(), o),
            None => outcomes.remove(name),
        };
    }

    /// Whether writes wait for the cluster's watches to recover.
    fn held_back(&self) -> bool {
        let health = self.health.lock();
        !health.timed_out
            && health.problem.as_ref().is_some_and(|(reason, _)| {
                [reasons::CLUSTER_UNREACHABLE, reasons::CLUSTER_UNAUTHORIZED].contains(reason)
            })
    }

    /// Hands the namespaces where the Secret was just created to Pod
    /// recovery in this cluster.
    fn start_recovery(
        &self,
        obj: &ClusterRegistryCredential,
        namespaces: &[String],
        registries: Vec<String>,
        injection: bool,
    ) {
        let Some(site) = self.recovery.lock().clone() else { return };
        for namespace in namespaces {
            let job = recovery::Job {
                reference: obj.object_ref(&()),
                labels: CredentialLabels {
                    kind: "ClusterRegistryCredential".into(),
                    namespace: String::new(),
                    name: obj.name_any(),
                },
                namespace: namespace.clone(),
                secret: obj.spec.credential.secret.name.clone(),
                service_accounts: obj.spec.credential.service_accounts.clone(),
                registries: registries.clone(),
                injection,
            };
            recovery::start(site.clone(), job);
        }
    }

    /// The namespace of the cluster's injection binding, looked up again
    /// at most once a minute (the chart may be installed later).
    async fn injection_namespace(&self, client: &kube::Client) -> Option<String> {
        let mut cached = self.injection.lock().await;
        if cached.1.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
            return cached.0.clone();
        }
        let mut found = None;
        for version in crate::admission::VERSIONS {
            let gvk =
                GroupVersionKind::gvk(crate::admission::ADMISSION_GROUP, version, "MutatingAdmissionPolicyBinding");
            let resource = ApiResource::from_gvk_with_plural(&gvk, crate::admission::BINDINGS);
            let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
            if let Ok(Some(binding)) = api.get_opt(crate::admission::FLEET_POLICY).await {
                found = binding.data["spec"]["paramRef"]["namespace"].as_str().map(String::from);
                break;
            }
        }
        if found != cached.0 {
            tracing::info!(cluster = %self.name, namespace = ?found, "the cluster's injection binding");
        }
        *cached = (found.clone(), Some(std::time::Instant::now()));
        found
    }

    /// Writes, or removes, the injection parameters of a credential in this
    /// cluster: `want` is the credential and the namespaces holding its
    /// Secret, `None` when it injects nothing here. Returns whether
    /// injection is in effect for it.
    async fn sync_injection(
        &self,
        cluster: &Arc<Cluster>,
        credential: &str,
        want: Option<(&ClusterRegistryCredential, &BTreeSet<String>)>,
    ) -> bool {
        let want = want.filter(|(obj, _)| obj.spec.credential.injection_enabled());
        let known = self.injected.lock().contains_key(credential);
        if want.is_none() && !known && self.injection.lock().await.0.is_none() {
            return false;
        }
        let Some(namespace) = self.injection_namespace(&cluster.client).await else { return false };
        let data = want.map(|(obj, synced)| injection_params(obj, synced));
        let digest = data.as_ref().map(digest_of).unwrap_or([0; 32]);
        if self.injected.lock().get(credential) == Some(&digest) {
            return data.is_some();
        }
        let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &namespace);
        let name = super::params_name(credential);
        // Not written by this process yet: it may be in place already.
        if !known {
            match api.get_opt(&name).await {
                Ok(current) => {
                    let current = current.and_then(|c| c.data).map(|d| digest_of(&d)).unwrap_or([0; 32]);
                    if current == digest {
                        self.injected.lock().insert(credential.to_string(), digest);
                        return data.is_some();
                    }
                }
                Err(e) => {
                    tracing::warn!(cluster = %self.name, error = %e, "reading injection parameters failed");
                    return false;
                }
            }
        }
        let result = match &data {
            Some(data) => {
                let params = ConfigMap {
                    metadata: kube::api::ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        labels: Some(BTreeMap::from([
                            (crate::admission::FLEET_PARAMS_LABEL.to_string(), "true".to_string()),
                            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                        ])),
                        annotations: Some(BTreeMap::from([(
                            OWNER_ANNOTATION.to_string(),
                            format!("{OWNER_PREFIX}{credential}"),
                        )])),
                        ..Default::default()
                    },
                    data: Some(data.clone()),
                    ..Default::default()
                };
                api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&params)).await.map(drop)
            }
            None => match api.delete(&name, &DeleteParams::default()).await {
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                other => other.map(drop),
            },
        };
        match result {
            Ok(()) => {
                let mut injected = self.injected.lock();
                if data.is_some() {
                    injected.insert(credential.to_string(), digest);
                } else {
                    injected.remove(credential);
                }
                data.is_some()
            }
            Err(e) => {
                tracing::warn!(cluster = %self.name, error = %e, "writing injection parameters failed");
                false
            }
        }
    }

    /// Removes Secrets; on a failure, tries again later and says why.
    async fn remove(
        self: &Arc<Self>,
        cluster: &Arc<Cluster>,
        name: &str,
        removals: Vec<plan::Removal>,
    ) -> Option<String> {
        if removals.is_empty() {
            return None;
        }
        let results = act::remove_secrets(cluster, removals).await;
        let failed = results.into_iter().find_map(|(_, r)| r.err());
        if failed.is_some() {
            self.retry_later(name);
        }
        failed
    }

    /// Removes, per deletionPolicy, every Secret regcred wrote here.
    async fn clean_all(self: &Arc<Self>, cluster: &Arc<Cluster>) {
        for name in self.credential_names() {
            let owner = format!("{OWNER_PREFIX}{name}");
            let removals = match self.fleet.credential(&name) {
                Some(obj) => plan::plan_deletion(&cluster.index, &*obj).removals,
                None => plan::orphan_removals(&cluster.index, &owner, DELETION_POLICY_ANNOTATION),
            };
            let _ = act::remove_secrets(cluster, removals).await;
        }
    }

    /// Sends the credential again after a backoff (1 s doubling to 5 min).
    fn retry_later(self: &Arc<Self>, name: &str) {
        let attempt = {
            let mut retries = self.retries.lock();
            let n = retries.entry(name.to_string()).or_default();
            *n = (*n + 1).min(9);
            *n
        };
        let delay = Duration::from_secs((1u64 << attempt).min(300));
        let jobs = self.jobs.clone();
        let name = name.to_string();
        self.spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = jobs.unbounded_send(Job::Credential(name));
        });
    }
}

/// The parameters of the spoke's injection policy for a credential
/// (charts/regcred/files/fleet-injection/policy.yaml): the Secret, the
/// namespaces holding it, and the ServiceAccounts it is added for.
/// ServiceAccounts selected only by labels are not covered, as in the
/// local policy.
pub(super) fn injection_params(obj: &ClusterRegistryCredential, synced: &BTreeSet<String>) -> BTreeMap<String, String> {
    let spec = &obj.spec.credential;
    let mut data = BTreeMap::from([("secret".to_string(), spec.secret.name.clone())]);
    data.extend(synced.iter().map(|ns| (format!("ns.{ns}"), String::new())));
    match &spec.service_accounts {
        None => {
            data.insert("sa.default".into(), String::new());
        }
        Some(sel) if sel.all == Some(true) => {
            data.insert("all-service-accounts".into(), String::new());
        }
        Some(sel) => match &sel.names {
            Some(names) => data.extend(names.iter().map(|n| (format!("sa.{n}"), String::new()))),
            None if sel.selector.is_none() => {
                data.insert("sa.default".into(), String::new());
            }
            None => {}
        },
    }
    data
}

fn digest_of(data: &BTreeMap<String, String>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (k, v) in data {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// The registry hosts of a rendered `.dockerconfigjson`.
fn registries_in(data: &[u8]) -> Vec<String> {
    let parsed: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
    parsed["auths"].as_object().map(|a| a.keys().cloned().collect()).unwrap_or_default()
}

fn holds(index: &Index, owner: &str) -> bool {
    index.managed.with_all(|all| {
        let mut matching = all.filter(|(_, _, s)| s.owner() == Some(owner));
        matching.next().is_some()
    })
}

/// Why a watch of the spoke failed, as a reason; `None` for what a watch
/// meets in normal work (an expired resourceVersion).
fn classify(e: &watcher::Error) -> Option<(&'static str, String)> {
    let code = match e {
        watcher::Error::InitialListFailed(k) | watcher::Error::WatchStartFailed(k) | watcher::Error::WatchFailed(k) => {
            match k {
                kube::Error::Api(s) => Some(s.code),
                _ => None,
            }
        }
        watcher::Error::WatchError(s) => Some(s.code),
        watcher::Error::NoResourceVersion => None,
    };
    let reason = match code {
        Some(410) => return None,
        Some(401) => reasons::CLUSTER_UNAUTHORIZED,
        Some(403) => reasons::CLUSTER_FORBIDDEN,
        Some(_) => reasons::KUBE_API_ERROR,
        None => reasons::CLUSTER_UNREACHABLE,
    };
    Some((reason, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(service_accounts: serde_json::Value) -> ClusterRegistryCredential {
        let mut spec = serde_json::json!({
            "provider": {"basic": {"registry": "r", "secretRef": {"name": "s"}}},
            "secret": {"name": "pull"},
            "namespaces": ["a"],
            "injection": {"enabled": true}
        });
        if !service_accounts.is_null() {
            spec["serviceAccounts"] = service_accounts;
        }
        ClusterRegistryCredential::new("c", serde_json::from_value(spec).unwrap())
    }

    #[test]
    fn injection_parameters_name_the_secret_the_namespaces_holding_it_and_the_accounts() {
        let synced = BTreeSet::from(["a".to_string(), "b".to_string()]);
        let keys = |p: BTreeMap<String, String>| p.into_keys().collect::<Vec<_>>();
        let p = injection_params(&credential(serde_json::Value::Null), &synced);
        assert_eq!(p["secret"], "pull");
        assert_eq!(keys(p), ["ns.a", "ns.b", "sa.default", "secret"]);
        let all = injection_params(&credential(serde_json::json!({"all": true})), &synced);
        assert!(all.contains_key("all-service-accounts") && !all.contains_key("sa.default"));
        let named = injection_params(&credential(serde_json::json!({"names": ["builder"]})), &BTreeSet::new());
        assert_eq!(keys(named), ["sa.builder", "secret"], "no namespace holds the Secret yet: none is injected");
        let by_label =
            injection_params(&credential(serde_json::json!({"selector": {"matchLabels": {"x": "y"}}})), &synced);
        assert!(!by_label.keys().any(|k| k.starts_with("sa.")), "label-selected accounts are not covered");
    }
}
