//! The `regcred.dev/v1beta1` API: `RegistryCredential` and
//! `ClusterRegistryCredential`. The CRDs also serve the same schema as the
//! deprecated `v1alpha1` ([`crate::crdgen`]; docs/api.md, "Versions and
//! compatibility").
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
/// API version of both kinds: the one regcred reads and writes, and the
/// CRDs' storage version.
pub const VERSION: &str = "v1beta1";
/// Earlier versions the CRDs still serve, with the same schema, deprecated.
pub const DEPRECATED_VERSIONS: [&str; 1] = ["v1alpha1"];
