//! Prometheus metrics, the Kubernetes request counter, and the HTTP server
//! for `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `regcred_kube_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    /// HTTP method: GET (reads and watches), POST, PUT, PATCH, DELETE.
    pub method: String,
}

/// Labels carrying a reason (never a secret).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Labels of `regcred_refreshes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    pub provider: String,
    /// `success`, `failure` or `verification_failed`.
    pub result: String,
}

/// Labels of the pull quota gauges: the credential and the registry.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub registry: String,
}

/// Labels naming a provider.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

/// Labels naming a credential.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// Labels naming a cluster of the fleet.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

/// Labels of a cluster's failures: the cluster and the reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterReasonLabels {
    pub cluster: String,
    pub reason: String,
}

/// All of regcred's metrics.
pub struct Metrics {
    pub registry: Registry,
    pub kube_requests: Family<VerbLabels, Counter>,
    /// Kubernetes API answers of 429 Too Many Requests (each attempt).
    pub kube_throttled: Family<VerbLabels, Counter>,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    /// Time one reconcile took (minting, writes, status).
    pub reconcile_duration: Histogram,
    pub managed_secrets: Family<CredentialLabels, Gauge>,
    pub expiry: Family<CredentialLabels, Gauge>,
    pub refreshes: Family<RefreshLabels, Counter>,
    pub provider_duration: Family<ProviderLabels, Histogram, fn() -> Histogram>,
    /// Pods deleted so that their controller recreates them with the pull
    /// Secret they missed (`recovery.enabled`).
    pub pods_recovered: Family<CredentialLabels, Counter>,
    /// 1 while this replica holds the leader Lease (or runs without election).
    pub leader: Gauge,
    /// Pulls left in the registry's window, as it last reported to
    /// verification (`ratelimit-remaining`; Docker Hub).
    pub pull_quota_remaining: Family<QuotaLabels, Gauge>,
    /// The registry's pull limit for the window (`ratelimit-limit`).
    pub pull_quota_limit: Family<QuotaLabels, Gauge>,
    /// 1 while a cluster of the fleet this replica serves answers and its
    /// caches are filled, 0 otherwise.
    pub cluster_up: Family<ClusterLabels, Gauge>,
    /// Failures reaching or writing to a cluster of the fleet, by reason.
    pub cluster_errors: Family<ClusterReasonLabels, Counter>,
    /// Pull Secrets holding their credential's current content, per cluster
    /// of the fleet.
    pub cluster_secrets: Family<ClusterLabels, Gauge>,
    /// Shards of the fleet this replica serves.
    pub fleet_shards: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("regcred");
        let kube_requests = Family::<VerbLabels, Counter>::default();
        registry.register(
            "kube_requests",
            "Requests regcred sent to the Kubernetes API, by HTTP method",
            kube_requests.clone(),
        );
        let kube_throttled = Family::<VerbLabels, Counter>::default();
        registry.register(
            "kube_throttled",
            "Kubernetes API requests the apiserver throttled (HTTP 429), each attempt, by HTTP method; retried after Retry-After",
            kube_throttled.clone(),
        );
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        let reconcile_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciliations that ended not Ready, by the Ready condition's reason",
            reconcile_errors.clone(),
        );
        let reconcile_duration = duration_histogram();
        registry.register(
            "reconcile_duration_seconds",
            "Time a reconcile of one credential took: minting, Secret and ServiceAccount writes, status",
            reconcile_duration.clone(),
        );
        let managed_secrets = Family::<CredentialLabels, Gauge>::default();
        registry.register(
            "managed_secrets",
            "Pull Secrets holding a credential's current content",
            managed_secrets.clone(),
        );
        let expiry = Family::<CredentialLabels, Gauge>::default();
        registry.register(
            "credential_expiry_timestamp_seconds",
            "When the published credential expires (Unix time); absent for static credentials",
            expiry.clone(),
        );
        let refreshes = Family::<RefreshLabels, Counter>::default();
        registry.register("refreshes", "Credential refreshes (provider calls), by result", refreshes.clone());
        let provider_duration =
            Family::<ProviderLabels, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        registry.register(
            "provider_request_duration_seconds",
            "Time a provider took to mint a credential",
            provider_duration.clone(),
        );
        let pods_recovered = Family::<CredentialLabels, Counter>::default();
        registry.register(
            "pods_recovered",
            "Pods deleted so that their controller recreates them with the pull Secret they missed",
            pods_recovered.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "Whether this replica is the leader (1) or a standby (0)", leader.clone());
        let pull_quota_remaining = Family::<QuotaLabels, Gauge>::default();
        registry.register(
            "registry_pull_quota_remaining",
            "Pulls left in the registry's window as it reported when a new credential was verified (Docker Hub's ratelimit-remaining)",
            pull_quota_remaining.clone(),
        );
        let pull_quota_limit = Family::<QuotaLabels, Gauge>::default();
        registry.register(
            "registry_pull_quota_limit",
            "The registry's pull limit per window as it reported when a new credential was verified (ratelimit-limit)",
            pull_quota_limit.clone(),
        );
        let cluster_up = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "cluster_up",
            "Whether a cluster of the fleet this replica serves answers and its caches are filled (1) or not (0)",
            cluster_up.clone(),
        );
        let cluster_errors = Family::<ClusterReasonLabels, Counter>::default();
        registry.register(
            "cluster_errors",
            "Failures reaching or writing to a cluster of the fleet, by cluster and reason",
            cluster_errors.clone(),
        );
        let cluster_secrets = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "cluster_managed_secrets",
            "Pull Secrets holding their credential's current content, per cluster of the fleet",
            cluster_secrets.clone(),
        );
        let fleet_shards = Gauge::default();
        registry.register("fleet_shards", "Shards of the fleet this replica serves", fleet_shards.clone());
        Metrics {
            cluster_up,
            cluster_errors,
            cluster_secrets,
            fleet_shards,
            leader,
            registry,
            kube_requests,
            kube_throttled,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            managed_secrets,
            expiry,
            refreshes,
            provider_duration,
            pods_recovered,
            pull_quota_remaining,
            pull_quota_limit,
            ready: AtomicBool::new(false),
        }
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

impl Metrics {
    /// Marks the operator ready (caches filled); `/readyz` answers 200 from then on.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(|State(m): State<Arc<Metrics>>| async move { m.encode() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                }
            }),
        )
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics and probes");
    axum::serve(listener, app).await
}

/// A client for `config` that counts its requests into `metrics` and retries
/// throttled ones (the layers every regcred client has).
pub fn counted_client(mut config: kube::Config, metrics: &Metrics) -> Result<kube::Client, kube::Error> {
    // kube's own retry layer sits below any layer added here; regcred puts
    // the same policy above its counter, so 429s are counted as they come.
    config.default_retry = false;
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&RequestCounter::new(metrics))
        .with_layer(&tower::buffer::BufferLayer::<http::Request<kube::client::Body>>::new(1024))
        .with_layer(&tower::retry::RetryLayer::new(kube_client_retry()))
        .build())
}

/// A tower layer counting the requests a kube client sends, and the ones
/// the apiserver throttled (HTTP 429). It sits beneath the retry layer (see
/// [`kube_client_retry`]), so every attempt and every 429 is counted.
#[derive(Clone)]
pub struct RequestCounter {
    pub requests: Family<VerbLabels, Counter>,
    pub throttled: Family<VerbLabels, Counter>,
}

impl RequestCounter {
    /// Counts into `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        RequestCounter { requests: metrics.kube_requests.clone(), throttled: metrics.kube_throttled.clone() }
    }
}

impl<S> tower::Layer<S> for RequestCounter {
    type Service = CountedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountedService { inner, counter: self.clone() }
    }
}

/// See [`RequestCounter`].
#[derive(Clone)]
pub struct CountedService<S> {
    inner: S,
    counter: RequestCounter,
}

impl<S, B, R> tower::Service<http::Request<B>> for CountedService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let labels = VerbLabels { method: req.method().as_str().to_string() };
        self.counter.requests.get_or_create(&labels).inc();
        let throttled = self.counter.throttled.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            if response.status() == http::StatusCode::TOO_MANY_REQUESTS {
                throttled.get_or_create(&labels).inc();
            }
            Ok(response)
        })
    }
}

/// The retry policy of regcred's Kubernetes client: kube's server-aware
/// policy, which retries 429, 503 and 504 with exponential backoff (5ms
/// doubling, at most 15 attempts) and waits at least the `Retry-After` the
/// apiserver sent. Throttling is thus absorbed below the controller and
/// never becomes `Ready=False`; a request still throttled after every
/// attempt fails like any other API error and is retried by the reconcile
/// backoff.
pub fn kube_client_retry() -> kube::client::retry::RetryPolicy {
    kube::client::retry::RetryPolicy::server_retry()
}
