//! The `regcred.dev/v1alpha1` API: `RegistryCredential` and
//! `ClusterRegistryCredential`.
//!
//! Both kinds share [`CredentialSpec`] (flattened into their specs), like
//! cert-manager's Issuer and ClusterIssuer. The cluster kind adds the namespace
//! selection fields. Schema-level validation lives next to the types (CEL rules
//! and patterns); [`crate::crdgen`] turns them into CRDs.

mod duration;
mod provider;
mod spec;
mod status;

pub use duration::Duration;
pub use provider::*;
pub use spec::*;
pub use status::*;

/// API group of both kinds.
pub const GROUP: &str = "regcred.dev";
/// API version of both kinds.
pub const VERSION: &str = "v1alpha1";
