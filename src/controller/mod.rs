//! The controller: watches, the index they feed, and the two reconcile
//! loops. docs/architecture.md draws the data path.
//!
//! One reconcile handles one credential and every namespace it targets, so a
//! credential is minted once per refresh however far it fans out. Related
//! objects are cached in the [`index`] by watches (namespaces as metadata,
//! ServiceAccounts, the Secrets regcred manages, and metadata of all
//! Secrets), and their changes are routed back to the credentials they
//! concern, so a new namespace, a new ServiceAccount or a deleted Secret is
//! handled at once without polling.
//!
//! A reconcile ([`reconcile`]) reads as four steps: observe ([`mint`]),
//! plan ([`plan`], pure), act ([`act`], with the ServiceAccount writer in
//! [`accounts`]), report ([`report`], [`status`]).

mod accounts;
mod act;
mod admission;
mod cache;
mod cluster;
pub mod fleet;
mod index;
mod kinds;
mod mint;
mod plan;
mod reconcile;
mod recovery;
mod report;
mod status;

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::{UnboundedSender, unbounded};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::utils::Backoff;
use kube::runtime::utils::Predicate as _;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{Controller, WatchStreamExt, predicates};
use kube::{Client, Resource, ResourceExt};

use crate::api::{ClusterRegistryCredential, RegistryCredential};
use crate::metrics::Metrics;
use index::{CredentialRef, Credentials, Index, Related, secret_related};

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
    /// How long the finalizer of a deleted credential waits for the fleet's
    /// clusters to remove its Secrets.
    pub fleet_cleanup_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster_resource_namespace: None,
            concurrency: 4,
            write_concurrency: 32,
            allow_namespaced_ambient_identity: false,
            fleet_cleanup_timeout: Duration::from_secs(120),
        }
    }
}

/// The backoff of a watch after an error: kube's default (0.8 s doubling to
/// 30 s, client-go's), or for a spoke of the fleet 0.5 s doubling to 5 s, so
/// a cluster that comes back is served again within seconds (a failed
/// reconnect to a spoke costs it nothing).
fn watch_backoff(spoke: bool) -> Box<dyn Backoff> {
    if spoke { Box::new(SpokeBackoff::default()) } else { Box::new(watcher::DefaultBackoff::default()) }
}

/// See [`watch_backoff`]; reset by the stream on every event.
struct SpokeBackoff {
    next: Duration,
}

impl SpokeBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for SpokeBackoff {
    fn default() -> Self {
        SpokeBackoff { next: Self::FIRST }
    }
}

impl Iterator for SpokeBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(now)
    }
}

impl Backoff for SpokeBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Told of every event or error of a cluster's watches (a spoke's health).
type Observer = Arc<dyn Fn(Result<(), &watcher::Error>) + Send + Sync>;

/// Requests a reconcile of a credential.
struct Wake {
    namespaced: UnboundedSender<ObjectRef<RegistryCredential>>,
    cluster: UnboundedSender<ObjectRef<ClusterRegistryCredential>>,
}

/// Shared by every reconcile: the index and memory, and the clients and
/// queues that act on what they say.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    /// The cluster as watched, routing, and regcred's own writes.
    index: Arc<Index>,
    /// Minted logins and failure counts, between reconciles.
    memory: mint::Memory,
    wake: Wake,
    /// The cluster regcred runs in, as plan and act see it (the same index).
    local: Arc<cluster::Cluster>,
    /// The MutatingAdmissionPolicy API: what the cluster serves, and the
    /// bindings and policies in place.
    admission: admission::Admission,
    /// Pod recovery in the local cluster.
    recovery: Arc<recovery::Site>,
}

/// Runs a watch into the index and turns its events into [`Related`] changes.
fn related_stream<K, F>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    index: Arc<Index>,
    apply: fn(&Index, &Event<K>),
    what: &'static str,
    map: F,
    backoff: Box<dyn Backoff>,
) -> impl Stream<Item = (Related, bool)> + Send
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    F: Fn(&K) -> Related + Send + 'static,
{
    stream.backoff(backoff).filter_map(move |event| {
        let out = match event {
            Ok(event) => {
                apply(&index, &event);
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
    let (rtx, rrx) = unbounded::<ObjectRef<RegistryCredential>>();
    let (ctx_tx, ctx_rx) = unbounded::<ObjectRef<ClusterRegistryCredential>>();
    let config = ControllerConfig::default().concurrency(settings.concurrency);
    let rcreds = spec_controller::<RegistryCredential>(&client).with_config(config.clone()).reconcile_on(rrx);
    let crcreds = spec_controller::<ClusterRegistryCredential>(&client).with_config(config).reconcile_on(ctx_rx);
    let credentials = Credentials { namespaced: rcreds.store(), cluster: crcreds.store() };
    let index = Arc::new(Index::new(credentials, settings.cluster_resource_namespace.clone()));

    let related = related_watches(&client, &index, None);
    let local_index = index.clone();
    let admission = admission::discover(&client).await;
    let admission_watches = admission::watches(&client, &admission);

    let reporter = Reporter { controller: "regcred".into(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: settings.clone(),
        metrics: metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter.clone()),
        local: Arc::new(cluster::Cluster::new(
            client.clone(),
            index.clone(),
            settings.write_concurrency,
            waker(rtx.clone(), ctx_tx.clone()),
        )),
        index,
        memory: mint::Memory::default(),
        wake: Wake { namespaced: rtx, cluster: ctx_tx },
        admission,
        recovery: Arc::new(recovery::Site {
            client: client.clone(),
            index: local_index,
            limits: recovery::Recovery::default(),
            metrics: metrics.clone(),
            pod_events: Recorder::new(client.clone(), reporter.clone()),
            credential_events: Recorder::new(client.clone(), reporter),
        }),
    });
    route_changes(&ctx, related, admission_watches);

    // Reconciling before every cache is filled would see namespaces or
    // Secrets as missing, and remove or rewrite what is in place.
    tracing::info!("waiting for caches");
    ctx.index.wait_until_ready().await;
    if ctx.admission.version.is_some() {
        ctx.admission.bindings.wait_until_ready().await;
        ctx.admission.policies.wait_until_ready().await;
    }
    list_contents(&ctx.client, &ctx.index).await?;
    metrics.set_ready();
    tracing::info!("caches filled; reconciling");
    tokio::spawn(accounts::run(ctx.local.clone()));

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

/// The watches that feed the index, each turned into the changes it routes.
fn related_watches(
    client: &Client,
    index: &Arc<Index>,
    observe: Option<Observer>,
) -> Vec<BoxStream<'static, (Related, bool)>> {
    // Each watch, with what it sees told to `observe` first.
    fn observed<K: Send + 'static>(
        stream: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
        observe: &Option<Observer>,
    ) -> BoxStream<'static, Result<Event<K>, watcher::Error>> {
        match observe.clone() {
            Some(o) => stream.inspect(move |r| o(r.as_ref().map(drop))).boxed(),
            None => stream.boxed(),
        }
    }
    let spoke = observe.is_some();
    let managed_cfg = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let others_cfg = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}!={MANAGED_BY}"));
    let namespaces = related_stream(
        observed(
            watcher::watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watcher::Config::default()),
            &observe,
        ),
        index.clone(),
        Index::apply_namespace,
        "namespaces",
        |_| Related::Namespace,
        watch_backoff(spoke),
    );
    let service_accounts = related_stream(
        observed(watcher::watcher(Api::<ServiceAccount>::all(client.clone()), watcher::Config::default()), &observe),
        index.clone(),
        Index::apply_account,
        "serviceaccounts",
        |sa: &ServiceAccount| Related::ServiceAccount {
            namespace: sa.namespace().unwrap_or_default(),
            name: sa.name_any(),
        },
        watch_backoff(spoke),
    );
    let managed = related_stream(
        observed(watcher::watcher(Api::<PartialObjectMeta<Secret>>::all(client.clone()), managed_cfg), &observe),
        index.clone(),
        Index::apply_managed,
        "managed secrets",
        secret_related,
        watch_backoff(spoke),
    );
    let all_secrets = related_stream(
        observed(watcher::watcher(Api::<PartialObjectMeta<Secret>>::all(client.clone()), others_cfg), &observe),
        index.clone(),
        Index::apply_other,
        "secrets",
        secret_related,
        watch_backoff(spoke),
    );

    vec![namespaces.boxed(), service_accounts.boxed(), managed.boxed(), all_secrets.boxed()]
}

/// Routes every change in a task per watch (decoding events spreads over
/// every thread): credentials to wake, namespaces for the ServiceAccount
/// writer.
fn route_changes(
    ctx: &Arc<Context>,
    related: Vec<BoxStream<'static, (Related, bool)>>,
    admission_watches: Vec<BoxStream<'static, ()>>,
) {
    for related in related {
        let ctx = ctx.clone();
        tokio::spawn(related.for_each(move |(change, deleted)| {
            let routed = ctx.index.route(&change, deleted);
            if let Some(namespace) = routed.accounts {
                ctx.local.accounts.enqueue(&namespace);
            }
            ctx.wake_all(routed.credentials);
            futures::future::ready(())
        }));
    }
    for changes in admission_watches {
        let ctx = ctx.clone();
        tokio::spawn(changes.for_each(move |()| {
            ctx.route_admission();
            futures::future::ready(())
        }));
    }
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

/// Sends credentials to the reconcile queues of their kind.
fn send_all(
    namespaced: &UnboundedSender<ObjectRef<RegistryCredential>>,
    cluster: &UnboundedSender<ObjectRef<ClusterRegistryCredential>>,
    credentials: Vec<CredentialRef>,
) {
    for c in credentials {
        let _ = match c {
            CredentialRef::Namespaced(r) => namespaced.unbounded_send(r).map_err(drop),
            CredentialRef::Cluster(r) => cluster.unbounded_send(r).map_err(drop),
        };
    }
}

/// A [`cluster::Waker`] over the reconcile queues.
fn waker(
    namespaced: UnboundedSender<ObjectRef<RegistryCredential>>,
    cluster: UnboundedSender<ObjectRef<ClusterRegistryCredential>>,
) -> cluster::Waker {
    Box::new(move |credentials| send_all(&namespaced, &cluster, credentials))
}

impl Context {
    fn wake_all(&self, credentials: Vec<CredentialRef>) {
        send_all(&self.wake.namespaced, &self.wake.cluster, credentials);
    }

    /// A policy or binding changed: credentials with injection report it.
    fn route_admission(&self) {
        self.wake_all(self.index.credentials_injecting());
    }
}

/// Lists the managed Secrets once, in pages, to learn what they hold
/// (kept as digests), before anything is reconciled.
async fn list_contents(client: &Client, index: &Index) -> anyhow::Result<()> {
    let api: Api<Secret> = Api::all(client.clone());
    let mut params = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")).limit(500);
    loop {
        let page = list_with_retries(&api, &params).await?;
        for secret in &page.items {
            let key = (secret.namespace().unwrap_or_default(), secret.name_any());
            let data = secret.data.as_ref().and_then(|d| d.get(plan::DATA_KEY));
            if let Some(data) = data.filter(|_| secret.type_.as_deref() == Some(plan::SECRET_TYPE)) {
                let rv = secret.metadata.resource_version.as_deref();
                index.ledger.secret_listed(key, rv, plan::data_digest(&data.0));
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

/// One page of the managed Secrets, tried again (1 s doubling, 5 times)
/// while the apiserver is not answering.
async fn list_with_retries(api: &Api<Secret>, params: &ListParams) -> anyhow::Result<kube::core::ObjectList<Secret>> {
    use backon::{ExponentialBuilder, Retryable};
    let retries = ExponentialBuilder::default().with_min_delay(Duration::from_secs(1)).with_max_times(5);
    (|| api.list(params))
        .retry(retries)
        .notify(|e, _| tracing::warn!(error = %e, "listing the managed Secrets failed; retrying"))
        .await
        .map_err(|e| anyhow::anyhow!("listing the managed Secrets: {e}"))
}
