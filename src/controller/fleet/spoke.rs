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
use super::super::{Observer, accounts, act, list_contents, related_watches};
use super::{DELETION_POLICY_ANNOTATION, Fleet, policy_name};
use crate::api::DeletionPolicy;
use crate::metrics::{ClusterLabels, ClusterReasonLabels};
use crate::reasons;

const OWNER_PREFIX: &str = "ClusterRegistryCredential/";

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
    health: Mutex<Health>,
    outcomes: Mutex<HashMap<String, Outcome>>,
    retries: Mutex<HashMap<String, u32>>,
    tasks: Mutex<Vec<AbortHandle>>,
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
            health: Mutex::default(),
            outcomes: Mutex::default(),
            retries: Mutex::default(),
            tasks: Mutex::default(),
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
                let mut health = self.health.lock();
                if health.problem.take().is_some() {
                    tracing::info!(cluster = %self.name, "the cluster answers again");
                    self.fleet.metrics.cluster_up.get_or_create(&self.labels()).set(i64::from(health.ready));
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
            Err(e) => return self.problem(reasons::KUBECONFIG_INVALID, format!("the kubeconfig cannot be used: {e}")),
        };
        // A spoke that does not answer fails its own requests soon; the
        // watches' long polls keep the default read timeout.
        config.connect_timeout = Some(Duration::from_secs(5));
        config.write_timeout = Some(Duration::from_secs(30));
        let client = match crate::metrics::counted_client(config, &self.fleet.metrics) {
            Ok(c) => c,
            Err(e) => return self.problem(reasons::KUBECONFIG_INVALID, format!("the kubeconfig cannot be used: {e}")),
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
                self.sync(&cluster, &name).await;
            }
        }
    }

    /// Brings one credential's Secrets here to what it wants.
    async fn sync(self: &Arc<Self>, cluster: &Arc<Cluster>, name: &str) {
        let owner = format!("{OWNER_PREFIX}{name}");
        let outcome = match self.fleet.credential(name) {
            // Gone (deleted while this cluster was away, or just now).
            None => {
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
                    let report = act::act(cluster, &owner, desired, plan).await;
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
