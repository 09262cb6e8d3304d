//! regcred: a Kubernetes operator that keeps image pull secrets fresh.
//!
//! Layout by concern:
//! - [`api`]: the CRD types; [`crdgen`] turns them into CRDs.
//! - [`provider`]: one module per credential provider behind one trait.
//! - [`render`]: dockerconfigjson rendering and parsing.
//! - [`hygiene`]: which source Secret values can work as a login.
//! - [`targets`]: namespace and ServiceAccount selection.
//! - [`admission`] and [`recovery`]: injecting the pull Secret into Pods at
//!   admission, and which stuck Pods to recover.
//! - [`schedule`]: when to refresh; [`pacing`]: how fast each provider
//!   endpoint is called.
//! - [`controller`]: caches, triggers and reconciliation.
//! - [`verify`]: logging in to a registry before publishing.
//! - [`metrics`]: Prometheus metrics and the probe server.
//! - [`standalone`]: the kubelet credential provider and the Docker/Podman
//!   credential helper, on the same providers.
//! - [`cli`], [`check`] and [`telemetry`]: the binary's command line, `regcred check`, logging.
//! - [`http`] and [`redact`]: the shared HTTP client, body limit and error
//!   chain printer, and the removal of secrets from messages.

pub mod admission;
pub mod api;
pub mod check;
pub mod cli;
pub mod clusters;
pub mod controller;
pub mod crdgen;
pub mod explain;
pub mod explain_cli;
pub mod http;
pub mod hygiene;
pub mod leader;
pub mod metrics;
pub mod pacing;
pub mod provider;
pub mod reasons;
pub mod recovery;
pub mod redact;
pub mod render;
pub mod schedule;
pub mod standalone;
pub mod targets;
pub mod telemetry;
pub mod verify;

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer, or the cleanup behind it, failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// Removing written objects failed; the finalizer stays until it works.
    #[error("cleanup: {message}")]
    Cleanup { reason: &'static str, message: String },
}

impl Error {
    /// The condition reason (from [`reasons`]): metric labels are only
    /// these.
    pub fn reason(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Kube(_) => reasons::KUBE_API_ERROR,
            Error::Finalizer(e) => match &**e {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.reason(),
                _ => reasons::KUBE_API_ERROR,
            },
            Error::Cleanup { reason, .. } => reason,
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
