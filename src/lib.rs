//! regcred: a Kubernetes operator that keeps image pull secrets fresh.
//!
//! The crate is laid out by concern: [`api`] holds the CRD types,
//! [`crdgen`] turns them into CustomResourceDefinitions, and [`cli`] is the
//! command line of the `regcred` binary.

pub mod api;
pub mod cli;
pub mod crdgen;

/// Errors of the regcred crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A feature that later work will provide.
    #[error("{0} is not implemented yet")]
    NotImplemented(&'static str),
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::NotImplemented(_) => "not_implemented",
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
