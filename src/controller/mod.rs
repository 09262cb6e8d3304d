//! The controller: caches, triggers and the two reconcile loops.
//!
//! One reconcile handles one credential and every namespace it targets, so a
//! credential is minted once per refresh however far it fans out. Related
//! objects are cached by watches (namespaces as metadata, ServiceAccounts,
//! the Secrets regcred manages, and metadata of all Secrets), and their
//! changes are routed back to the credentials they concern, so a new
//! namespace, a new ServiceAccount or a deleted Secret is handled at once
//! without polling.

mod accounts;
mod admission;
mod cache;
mod kinds;
mod reconcile;
mod recovery;
mod status;
mod sync;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::{UnboundedSender, unbounded};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};

use cache::{Cache, Pairs};
use kube::runtime::utils::Predicate as _;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{Controller, WatchStreamExt, predicates};
use kube::{Client, Resource, ResourceExt};

use crate::api::{ClusterRegistryCredential, RegistryCredential};
use crate::metrics::Metrics;
use crate::provider::Minted;

pub use kinds::CredentialKind;

/// Field manager of every write regcred makes.
pub const FIELD_MANAGER: &str = "regcred";
/// Finalizer that removes written objects when a credential is deleted.
pub const FINALIZER: &str = "regcred.dev/cleanup";
/// Label on every Secret regcred writes.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "regcred";
/// Annotation naming the credential that owns a written Secret:
/// `RegistryCredential/<namespace>/<name>` or `ClusterRegistryCredential/<name>`.
pub const OWNER_ANNOTATION: &str = "regcred.dev/owner";

/// Controller settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where ClusterRegistryCredentials read source Secrets.
    pub cluster_resource_namespace: Option<String>,
    /// Credentials reconciled in parallel.
    pub concurrency: u16,
    /// Writes in flight per credential during a fan-out, and ServiceAccount
    /// patches in flight.
    pub write_concurrency: usize,
    /// Let RegistryCredentials use the operator's own cloud identity.
    pub allow_namespaced_ambient_identity: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster_resource_namespace: None,
            concurrency: 4,
            write_concurrency: 32,
            allow_namespaced_ambient_identity: false,
        }
    }
}

/// What regcred remembers about a credential between reconciles.
#[derive(Default)]
struct CredentialState {
    /// The last minted credential and what it was minted from.
    minted: Option<MintedEntry>,
    /// Consecutive failed attempts, for backoff.
    failures: u32,
}

struct MintedEntry {
    generation: Option<i64>,
    /// `(name, resourceVersion)` of the source Secrets read.
    fingerprint: Vec<(String, String)>,
    minted: Minted,
    minted_at: k8s_openapi::jiff::Timestamp,
    /// Drawn once per mint, so the refresh time stays put between reconciles.
    jitter: f64,
}

/// The resourceVersion regcred's own last write of a Secret produced, a hash
/// of what it wrote and of the owner it wrote it for. Caches lag behind
/// writes; this keeps a reconcile that runs before the watch event arrives
/// from writing the same thing again.
#[derive(Clone, Copy, Debug)]
struct Written {
    content: u64,
    owner: u64,
    resource_version: u64,
}

/// `(namespace, name)` of a written Secret.
type WrittenKey = (String, String);

fn owner_hash(owner: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    owner.hash(&mut h);
    h.finish()
}

/// The stores of both credential kinds.
struct CredentialStores {
    namespaced: Store<RegistryCredential>,
    cluster: Store<ClusterRegistryCredential>,
}

/// Requests a reconcile of a credential.
struct Wake {
    namespaced: UnboundedSender<ObjectRef<RegistryCredential>>,
    cluster: UnboundedSender<ObjectRef<ClusterRegistryCredential>>,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    namespaces: Arc<Cache<NamespaceEntry>>,
    service_accounts: Arc<Cache<AccountEntry>>,
    /// Secrets labelled as managed by regcred.
    managed_secrets: Arc<Cache<ManagedEntry>>,
    /// Every other Secret (metadata only), to see name clashes and source
    /// Secret changes. The two watches split the Secrets by label, so each
    /// Secret reaches regcred once.
    other_secrets: Arc<Cache<SecretEntry>>,
    credentials: CredentialStores,
    wake: Wake,
    /// The ServiceAccount writer's queue and memory.
    accounts: accounts::Accounts,
    /// The MutatingAdmissionPolicy API: what the cluster serves, and the
    /// bindings and policies in place.
    admission: admission::Admission,
    /// The rate limit of Pod recovery.
    recovery: recovery::Recovery,
    /// What the managed Secrets hold: `(namespace, name)` to the
    /// resourceVersion and a SHA-256 digest of the pull secret at it (never
    /// the value), from one list at start and from regcred's own writes.
    /// Watching the managed Secrets as metadata and keeping this instead of
    /// watching them whole spares the apiserver from sending every Secret
    /// regcred writes back to it; a Secret someone else changed has a newer
    /// resourceVersion, so its content counts as unknown and it is written
    /// again.
    contents: Mutex<HashMap<WrittenKey, (u64, [u8; 32])>>,
    state: Mutex<HashMap<String, CredentialState>>,
    written: Mutex<HashMap<WrittenKey, Written>>,
}

/// A change to a related object, reduced to what routing needs.
enum Related {
    Namespace,
    ServiceAccount { namespace: String, name: String },
    Secret { namespace: String, name: String, owner: Option<String> },
}

/// What is cached of a namespace.
#[derive(Clone)]
struct NamespaceEntry {
    labels: BTreeMap<String, String>,
    terminating: bool,
}

impl NamespaceEntry {
    fn of(ns: &PartialObjectMeta<Namespace>) -> Self {
        NamespaceEntry {
            labels: ns.metadata.labels.clone().unwrap_or_default(),
            terminating: ns.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// What is cached of a ServiceAccount (a serviceAccountRef's annotations are
/// read when a token is requested, not from the cache).
#[derive(Clone)]
struct AccountEntry {
    resource_version: Option<u64>,
    labels: BTreeMap<String, String>,
    image_pull_secrets: Vec<String>,
}

impl AccountEntry {
    fn of(sa: &ServiceAccount) -> Self {
        AccountEntry {
            resource_version: rv_of(&sa.metadata),
            labels: sa.metadata.labels.clone().unwrap_or_default(),
            image_pull_secrets: sa.image_pull_secrets.iter().flatten().map(|r| r.name.clone()).collect(),
        }
    }
}

/// What is cached of a Secret regcred manages, from a metadata-only watch:
/// its owner, labels and annotations, and the uid to delete exactly it. What
/// its data holds is in [`Context::contents`], by resourceVersion.
#[derive(Clone)]
struct ManagedEntry {
    resource_version: Option<u64>,
    uid: Option<Box<str>>,
    labels: Pairs,
    annotations: Pairs,
}

impl ManagedEntry {
    fn of(secret: &PartialObjectMeta<Secret>) -> Self {
        ManagedEntry {
            resource_version: rv_of(&secret.metadata),
            uid: secret.metadata.uid.as_deref().map(Into::into),
            labels: Pairs::from_map(secret.metadata.labels.as_ref()),
            annotations: Pairs::from_map(secret.metadata.annotations.as_ref()),
        }
    }

    fn owner(&self) -> Option<&str> {
        (self.labels.get(MANAGED_BY_LABEL) == Some(MANAGED_BY)).then(|| self.annotations.get(OWNER_ANNOTATION))?
    }
}

/// What is cached of a Secret regcred does not manage.
#[derive(Clone)]
struct SecretEntry {
    resource_version: Option<Box<str>>,
}

impl SecretEntry {
    fn of(secret: &PartialObjectMeta<Secret>) -> Self {
        SecretEntry { resource_version: secret.metadata.resource_version.as_deref().map(Into::into) }
    }
}

/// A SHA-256 digest of a Secret's data value.
fn data_digest(value: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(value).into()
}

fn key_of<K: Resource>(obj: &K) -> (String, String) {
    (obj.meta().namespace.clone().unwrap_or_default(), obj.meta().name.clone().unwrap_or_default())
}

/// Runs a watch into a cache and turns its events into [`Related`] changes.
fn related_stream<K, V, F>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    cache: Arc<Cache<V>>,
    project: fn(&K) -> V,
    what: &'static str,
    map: F,
) -> impl Stream<Item = (Related, bool)> + Send
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    F: Fn(&K) -> Related + Send + 'static,
{
    stream.default_backoff().filter_map(move |event| {
        let out = match event {
            Ok(event) => {
                cache.apply(&event, key_of, project);
                match event {
                    Event::Apply(o) | Event::InitApply(o) => Some((map(&o), false)),
                    Event::Delete(o) => Some((map(&o), true)),
                    Event::Init | Event::InitDone => None,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching {what} failed; retrying");
                None
            }
        };
        futures::future::ready(out)
    })
}

/// Runs the controller until the process is asked to stop.
pub async fn run(client: Client, settings: Settings, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let namespace_cache = Arc::new(Cache::default());
    let account_cache = Arc::new(Cache::default());
    let managed_cache = Arc::new(Cache::default());
    let secret_cache = Arc::new(Cache::default());
    let managed_cfg = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let others_cfg = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}!={MANAGED_BY}"));

    let namespaces = related_stream(
        watcher::watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watcher::Config::default()),
        namespace_cache.clone(),
        NamespaceEntry::of,
        "namespaces",
        |_| Related::Namespace,
    );
    let service_accounts = related_stream(
        watcher::watcher(Api::<ServiceAccount>::all(client.clone()), watcher::Config::default()),
        account_cache.clone(),
        AccountEntry::of,
        "serviceaccounts",
        |sa: &ServiceAccount| Related::ServiceAccount {
            namespace: sa.namespace().unwrap_or_default(),
            name: sa.name_any(),
        },
    );
    let managed = related_stream(
        watcher::watcher(Api::<PartialObjectMeta<Secret>>::all(client.clone()), managed_cfg),
        managed_cache.clone(),
        ManagedEntry::of,
        "managed secrets",
        secret_related,
    );
    let all_secrets = related_stream(
        watcher::watcher(Api::<PartialObjectMeta<Secret>>::all(client.clone()), others_cfg),
        secret_cache.clone(),
        SecretEntry::of,
        "secrets",
        secret_related,
    );

    let (rtx, rrx) = unbounded::<ObjectRef<RegistryCredential>>();
    let (ctx_tx, ctx_rx) = unbounded::<ObjectRef<ClusterRegistryCredential>>();
    let config = ControllerConfig::default().concurrency(settings.concurrency);
    let rcreds = spec_controller::<RegistryCredential>(&client).with_config(config.clone()).reconcile_on(rrx);
    let crcreds = spec_controller::<ClusterRegistryCredential>(&client).with_config(config).reconcile_on(ctx_rx);

    let admission = admission::discover(&client).await;
    let admission_watches = admission::watches(&client, &admission);

    let reporter = Reporter { controller: "regcred".into(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: settings.clone(),
        metrics: metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        namespaces: namespace_cache,
        service_accounts: account_cache,
        managed_secrets: managed_cache,
        other_secrets: secret_cache,
        credentials: CredentialStores { namespaced: rcreds.store(), cluster: crcreds.store() },
        wake: Wake { namespaced: rtx, cluster: ctx_tx },
        accounts: accounts::Accounts::default(),
        admission,
        recovery: recovery::Recovery::default(),
        contents: Mutex::default(),
        state: Mutex::default(),
        written: Mutex::default(),
    });
    // Each watch runs in a task of its own (decoding events spreads over
    // every thread) and routes its changes.
    let router = Arc::new(Router { ctx: ctx.clone() });
    for related in [namespaces.boxed(), service_accounts.boxed(), managed.boxed(), all_secrets.boxed()] {
        let router = router.clone();
        tokio::spawn(related.for_each(move |(change, deleted)| {
            router.route(change, deleted);
            futures::future::ready(())
        }));
    }
    for changes in admission_watches {
        let router = router.clone();
        tokio::spawn(changes.for_each(move |change| {
            router.route_admission(change);
            futures::future::ready(())
        }));
    }

    // Reconciling before every cache is filled would see namespaces or
    // Secrets as missing, and remove or rewrite what is in place.
    tracing::info!("waiting for caches");
    ctx.namespaces.wait_until_ready().await;
    ctx.service_accounts.wait_until_ready().await;
    ctx.managed_secrets.wait_until_ready().await;
    ctx.other_secrets.wait_until_ready().await;
    if ctx.admission.version.is_some() {
        ctx.admission.bindings.wait_until_ready().await;
        ctx.admission.policies.wait_until_ready().await;
    }
    list_contents(&ctx).await?;
    metrics.set_ready();
    tracing::info!("caches filled; reconciling");
    tokio::spawn(accounts::run(ctx.clone()));

    let rcreds = rcreds
        .shutdown_on_signal()
        .run(reconcile::reconcile::<RegistryCredential>, reconcile::error_policy, ctx.clone())
        .for_each(log_result);
    let crcreds = crcreds
        .shutdown_on_signal()
        .run(reconcile::reconcile::<ClusterRegistryCredential>, reconcile::error_policy, ctx.clone())
        .for_each(log_result);
    futures::join!(rcreds, crcreds);
    tracing::info!("controller stopped");
    Ok(())
}

/// A controller woken by spec changes (generation, which deletion also
/// bumps) and finalizer changes (the finalizer helper waits for its own
/// patch), not by status writes: its own status writes must not wake it, or
/// a failing credential would retry in a loop instead of on its backoff.
fn spec_controller<K: CredentialKind>(client: &Client) -> Controller<K> {
    let (reader, writer) = reflector::store();
    let stream = watcher::watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation.combine(predicates::finalizers), Default::default());
    Controller::for_stream(stream, reader)
}

async fn log_result<K: Resource, E: std::fmt::Display>(r: Result<(ObjectRef<K>, Action), E>) {
    if let Err(e) = r {
        tracing::debug!(error = %e, "reconcile request failed");
    }
}

fn secret_related<K: Resource>(s: &K) -> Related {
    Related::Secret {
        namespace: s.meta().namespace.clone().unwrap_or_default(),
        name: s.meta().name.clone().unwrap_or_default(),
        owner: owner_of(s.meta()),
    }
}

/// The owner annotation of an object regcred manages.
fn owner_of(meta: &kube::api::ObjectMeta) -> Option<String> {
    let managed = meta.labels.as_ref().and_then(|l| l.get(MANAGED_BY_LABEL)).is_some_and(|v| v == MANAGED_BY);
    if !managed {
        return None;
    }
    meta.annotations.as_ref().and_then(|a| a.get(OWNER_ANNOTATION)).cloned()
}

/// Maps changes of related objects to the credentials they concern.
struct Router {
    ctx: Arc<Context>,
}

impl Router {
    fn route(&self, change: Related, deleted: bool) {
        let ctx = &self.ctx;
        match change {
            // Selection depends on namespace labels and phase: every cluster
            // credential re-evaluates (in memory, no API calls).
            Related::Namespace => {
                for c in ctx.credentials.cluster.state() {
                    ctx.wake_cluster(&c);
                }
            }
            // The ServiceAccount writer handles every credential at once.
            Related::ServiceAccount { namespace, name } => {
                if deleted {
                    ctx.accounts.forget(&namespace, &name);
                }
                ctx.accounts.enqueue(&namespace);
            }
            Related::Secret { namespace, name, owner } => {
                if deleted {
                    ctx.forget_written(&(namespace.clone(), name.clone()));
                }
                let interested = |spec: &crate::api::CredentialSpec| {
                    spec.secret.name == name || spec.provider.secret_names().contains(&name.as_str())
                };
                for c in ctx.credentials.namespaced.state() {
                    let mine = owner.as_deref() == Some(c.owner_key().as_str());
                    if mine || (c.namespace().as_deref() == Some(namespace.as_str()) && interested(c.credential())) {
                        ctx.wake_namespaced(&c);
                    }
                }
                let source_ns = ctx.settings.cluster_resource_namespace.as_deref();
                for c in ctx.credentials.cluster.state() {
                    let spec = c.credential();
                    let mine = owner.as_deref() == Some(c.owner_key().as_str());
                    let source =
                        source_ns == Some(namespace.as_str()) && spec.provider.secret_names().contains(&name.as_str());
                    let target = spec.secret.name == name && c.targets_namespace(ctx, &namespace);
                    if mine || source || target {
                        ctx.wake_cluster(&c);
                    }
                }
            }
        }
    }
}

impl Router {
    fn route_admission(&self, change: admission::Change) {
        let ctx = &self.ctx;
        match change {
            // A binding changed or went away: its credential puts it back
            // if it differs from what it should be.
            admission::Change::Binding { name, owner, deleted } => {
                if deleted {
                    ctx.admission.forget(&name);
                }
                let Some(owner) = owner else { return };
                for c in ctx.credentials.namespaced.state() {
                    if c.owner_key() == owner {
                        ctx.wake_namespaced(&c);
                    }
                }
                for c in ctx.credentials.cluster.state() {
                    if c.owner_key() == owner {
                        ctx.wake_cluster(&c);
                    }
                }
            }
            // A policy was installed or removed: credentials with
            // injection report it.
            admission::Change::Policy => {
                for c in ctx.credentials.namespaced.state() {
                    if c.credential().injection_enabled() {
                        ctx.wake_namespaced(&c);
                    }
                }
                for c in ctx.credentials.cluster.state() {
                    if c.credential().injection_enabled() {
                        ctx.wake_cluster(&c);
                    }
                }
            }
        }
    }
}

impl Context {
    fn forget_written(&self, key: &WrittenKey) {
        self.written.lock().expect("not poisoned").remove(key);
        self.contents.lock().expect("not poisoned").remove(key);
    }

    /// Records what a managed Secret holds at a resourceVersion.
    fn remember_content(&self, key: WrittenKey, resource_version: Option<&str>, digest: [u8; 32]) {
        if let Some(rv) = resource_version.and_then(|v| v.parse().ok()) {
            self.contents.lock().expect("not poisoned").insert(key, (rv, digest));
        }
    }

    /// The digest of what a managed Secret holds at `resource_version`, if
    /// known.
    fn content_at(&self, namespace: &str, name: &str, resource_version: Option<u64>) -> Option<[u8; 32]> {
        let contents = self.contents.lock().expect("not poisoned");
        let (rv, digest) = contents.get(&(namespace.to_string(), name.to_string()))?;
        (Some(*rv) == resource_version).then_some(*digest)
    }

    fn remember_written(&self, key: WrittenKey, owner: &str, content: u64, resource_version: Option<&str>) {
        let Some(rv) = resource_version.and_then(|v| v.parse().ok()) else {
            return;
        };
        let written = Written { content, owner: owner_hash(owner), resource_version: rv };
        self.written.lock().expect("not poisoned").insert(key, written);
    }

    /// Whether `owner`'s pull Secret `name` is in `namespace`: in the cache,
    /// or just written and not in the cache yet.
    fn secret_in_place(&self, namespace: &str, name: &str, owner: &str) -> bool {
        let cached = self.managed_secrets.with(namespace, name, |s| (s.resource_version, s.owner() == Some(owner)));
        if let Some(w) = self.written(&(namespace.to_string(), name.to_string()))
            && cached.is_none_or(|(rv, _)| Some(w.resource_version) > rv)
        {
            return w.owner == owner_hash(owner);
        }
        cached.is_some_and(|(_, ours)| ours)
    }

    /// The resourceVersion of any Secret in the caches.
    fn secret_resource_version(&self, namespace: &str, name: &str) -> Option<String> {
        self.other_secrets
            .with(namespace, name, |s| s.resource_version.as_deref().map(String::from))
            .or_else(|| self.managed_secrets.with(namespace, name, |s| s.resource_version.map(|rv| rv.to_string())))
            .flatten()
    }

    fn wake_namespaced(&self, c: &RegistryCredential) {
        let _ = self.wake.namespaced.unbounded_send(ObjectRef::from_obj(c));
    }

    fn wake_cluster(&self, c: &ClusterRegistryCredential) {
        let _ = self.wake.cluster.unbounded_send(ObjectRef::from_obj(c));
    }

    /// Wakes every credential that targets `namespace`.
    fn wake_credentials_targeting(&self, namespace: &str) {
        for c in self.credentials.namespaced.state() {
            if c.targets_namespace(self, namespace) {
                self.wake_namespaced(&c);
            }
        }
        for c in self.credentials.cluster.state() {
            if c.targets_namespace(self, namespace) {
                self.wake_cluster(&c);
            }
        }
    }

    fn written(&self, key: &WrittenKey) -> Option<Written> {
        self.written.lock().expect("not poisoned").get(key).copied()
    }

    /// Labels of a namespace, or `None` if it does not exist or is terminating.
    fn live_namespace_labels(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces.with("", name, |ns| (!ns.terminating).then(|| ns.labels.clone())).flatten()
    }
}

fn rv_of(meta: &kube::api::ObjectMeta) -> Option<u64> {
    meta.resource_version.as_deref()?.parse().ok()
}

/// Lists the managed Secrets once, in pages, to learn what they hold
/// (kept as digests), before anything is reconciled.
async fn list_contents(ctx: &Context) -> anyhow::Result<()> {
    let api: Api<Secret> = Api::all(ctx.client.clone());
    let mut params = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")).limit(500);
    loop {
        let page = list_with_retries(&api, &params).await?;
        for secret in &page.items {
            let key = key_of(secret);
            let data = secret.data.as_ref().and_then(|d| d.get(sync::DATA_KEY));
            if let Some(data) = data.filter(|_| secret.type_.as_deref() == Some(sync::SECRET_TYPE)) {
                ctx.remember_content(key, secret.metadata.resource_version.as_deref(), data_digest(&data.0));
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

async fn list_with_retries(api: &Api<Secret>, params: &ListParams) -> anyhow::Result<kube::core::ObjectList<Secret>> {
    let mut attempt = 0;
    loop {
        match api.list(params).await {
            Ok(page) => return Ok(page),
            Err(e) if attempt < 5 => {
                attempt += 1;
                tracing::warn!(error = %e, "listing the managed Secrets failed; retrying");
                tokio::time::sleep(Duration::from_secs(attempt)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("listing the managed Secrets: {e}")),
        }
    }
}

/// Backoff after `failures` consecutive failures: 5s doubling to 5 minutes.
fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << failures.saturating_sub(1).min(10));
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_5s_and_is_capped_at_5_minutes() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(0).as_secs(), 5);
        assert_eq!(backoff(u32::MAX).as_secs(), 300, "no overflow");
    }
}
