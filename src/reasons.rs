//! The reasons regcred puts in the `Ready` condition, `status.targets.failed`
//! and Events. One list, so docs and code agree (see docs/api.md).

/// Every target holds the current credential.
pub const SYNCED: &str = "Synced";
/// A source Secret named in the spec does not exist.
pub const SOURCE_SECRET_NOT_FOUND: &str = "SourceSecretNotFound";
/// A source Secret exists but lacks the expected keys or format.
pub const SOURCE_SECRET_INVALID: &str = "SourceSecretInvalid";
/// The spec names a source object outside the namespace it may read from.
pub const SOURCE_NAMESPACE_FORBIDDEN: &str = "SourceNamespaceForbidden";
/// The cluster resource namespace is not configured.
pub const NO_CLUSTER_RESOURCE_NAMESPACE: &str = "ClusterResourceNamespaceUnset";
/// A Secret with the target name exists and regcred does not manage it for
/// this credential.
pub const SECRET_CONFLICT: &str = "SecretConflict";
/// Writing a Secret or patching a ServiceAccount failed.
pub const WRITE_FAILED: &str = "WriteFailed";
/// Reading from the Kubernetes API failed.
pub const KUBE_API_ERROR: &str = "KubernetesAPIError";
/// Refreshing fails and the credential in place has expired: pulls fail.
pub const CREDENTIAL_EXPIRED: &str = "CredentialExpired";
/// The registry refused a newly minted credential; it was not published.
pub const VERIFICATION_FAILED: &str = "VerificationFailed";
/// A namespaced credential asked for the operator's own cloud identity.
pub const AMBIENT_IDENTITY_FORBIDDEN: &str = "AmbientIdentityForbidden";
/// A ServiceAccount named in `serviceAccountRef` does not exist.
pub const SERVICE_ACCOUNT_NOT_FOUND: &str = "ServiceAccountNotFound";
/// The cloud provider refused the identity (bad keys, no permission).
pub const PROVIDER_AUTH_FAILED: &str = "ProviderAuthFailed";
/// The provider's API answered with an error or could not be reached.
pub const PROVIDER_ERROR: &str = "ProviderError";
/// The provider's API throttled the request.
pub const PROVIDER_THROTTLED: &str = "ProviderThrottled";
/// The provider's answer could not be understood.
pub const PROVIDER_RESPONSE_INVALID: &str = "ProviderResponseInvalid";
/// The spec is valid for the schema but not usable (for example a bad region).
pub const INVALID_SPEC: &str = "InvalidSpec";

// Reasons of the `Injection` condition (only on credentials with
// `injection.enabled`) and the Events that go with them.

/// The chart's MutatingAdmissionPolicy and its binding are in place: new
/// Pods get the Secret at admission.
pub const INJECTION_ACTIVE: &str = "InjectionActive";
/// The cluster serves no MutatingAdmissionPolicy API (v1, or v1beta1 where
/// enabled): Kubernetes before 1.34, or 1.34-1.35 without the beta API.
pub const ADMISSION_POLICY_UNSUPPORTED: &str = "AdmissionPolicyUnsupported";
/// The chart's MutatingAdmissionPolicy for this kind, or a binding that
/// passes credentials to it, is not installed, so nothing is injected.
pub const ADMISSION_POLICY_MISSING: &str = "AdmissionPolicyMissing";

/// Event reason: a registry reported at most a tenth of its pull quota
/// left while regcred verified a new credential (Docker Hub's
/// `ratelimit-remaining`).
pub const PULL_QUOTA_LOW: &str = "PullQuotaLow";

/// Event reason: regcred deleted a Pod that missed the pull Secret, so
/// that its controller recreates it with it.
pub const POD_RECOVERED: &str = "PodRecovered";

/// A cluster of the fleet (docs/fleet.md) cannot be reached.
pub const CLUSTER_UNREACHABLE: &str = "ClusterUnreachable";
/// A cluster of the fleet refuses the hub's identity (401).
pub const CLUSTER_UNAUTHORIZED: &str = "ClusterUnauthorized";
/// A cluster of the fleet does not let the hub's identity do what regcred
/// does there (403).
pub const CLUSTER_FORBIDDEN: &str = "ClusterForbidden";
/// A cluster's kubeconfig Secret cannot be used.
pub const KUBECONFIG_INVALID: &str = "KubeconfigInvalid";
/// A cluster's caches are still being filled.
pub const CLUSTER_CONNECTING: &str = "ClusterConnecting";
/// Event reason: every selected cluster holds the current Secret again.
pub const CLUSTER_SYNCED: &str = "ClusterSynced";
/// Event reason: a credential was deleted while clusters that hold its
/// Secrets could not be reached; the finalizer stopped waiting for them.
pub const FLEET_CLEANUP_INCOMPLETE: &str = "FleetCleanupIncomplete";

/// Every reason above: Event reasons and metric labels are only these.
pub const ALL: &[&str] = &[
    SYNCED,
    SOURCE_SECRET_NOT_FOUND,
    SOURCE_SECRET_INVALID,
    SOURCE_NAMESPACE_FORBIDDEN,
    NO_CLUSTER_RESOURCE_NAMESPACE,
    SECRET_CONFLICT,
    WRITE_FAILED,
    KUBE_API_ERROR,
    CREDENTIAL_EXPIRED,
    VERIFICATION_FAILED,
    AMBIENT_IDENTITY_FORBIDDEN,
    SERVICE_ACCOUNT_NOT_FOUND,
    PROVIDER_AUTH_FAILED,
    PROVIDER_ERROR,
    PROVIDER_THROTTLED,
    PROVIDER_RESPONSE_INVALID,
    INVALID_SPEC,
    INJECTION_ACTIVE,
    ADMISSION_POLICY_UNSUPPORTED,
    ADMISSION_POLICY_MISSING,
    POD_RECOVERED,
    PULL_QUOTA_LOW,
    CLUSTER_UNREACHABLE,
    CLUSTER_UNAUTHORIZED,
    CLUSTER_FORBIDDEN,
    KUBECONFIG_INVALID,
    CLUSTER_CONNECTING,
    CLUSTER_SYNCED,
    FLEET_CLEANUP_INCOMPLETE,
];
