//! Admission-time injection of the pull Secret into Pods: what regcred
//! asks of the cluster's MutatingAdmissionPolicy API. Pure functions; the
//! controller (`controller::admission`) does the I/O.
//!
//! The chart ships, per credential kind, one MutatingAdmissionPolicy with
//! the credential kind as its `paramKind` and one binding whose
//! `paramRef.selector` selects every credential of that kind
//! (`charts/regcred/files/admission/`). The policy's CEL acts only for
//! credentials with `injection.enabled`, reads their `spec.secret.name`,
//! `spec.serviceAccounts` and namespace selection, and appends
//! `{name: <secret>}` to a new Pod's `spec.imagePullSecrets` when the Pod
//! runs as a selected ServiceAccount and does not list it yet.
//!
//! regcred writes no binding: it reads the policies and bindings to say in
//! a credential's `Injection` condition whether injection is in effect.
//! So its identity needs no write access to admission configuration, which
//! no admission policy could narrow (kube-apiserver runs none on
//! admission policies and their bindings).

use serde_json::Value;

/// API group of MutatingAdmissionPolicy and its bindings.
pub const ADMISSION_GROUP: &str = "admissionregistration.k8s.io";
/// The chart's policy for RegistryCredentials.
pub const REGISTRY_CREDENTIAL_POLICY: &str = "inject-pull-secret.registrycredentials.regcred.dev";
/// The chart's policy for ClusterRegistryCredentials.
pub const CLUSTER_REGISTRY_CREDENTIAL_POLICY: &str = "inject-pull-secret.clusterregistrycredentials.regcred.dev";
/// Plural of the binding resource.
/// The policy (and its binding) the chart installs in a spoke of a fleet,
/// whose parameters are ConfigMaps the hub writes.
pub const FLEET_POLICY: &str = "inject-pull-secret.fleet.regcred.dev";
/// Label of those ConfigMaps (value `true`).
pub const FLEET_PARAMS_LABEL: &str = "regcred.dev/injection";
pub const BINDINGS: &str = "mutatingadmissionpolicybindings";
/// Plural of the policy resource.
pub const POLICIES: &str = "mutatingadmissionpolicies";

/// The version of `admissionregistration.k8s.io` serving mutating
/// admission policies, newest first: GA in 1.36, beta (off by default)
/// in 1.34 and 1.35.
pub const VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// The first of [`VERSIONS`] whose discovery document lists both the
/// policies and their bindings. `served(version)` returns the resource
/// names discovery lists for that group version, or `None` when the
/// version is not served.
pub fn served_version<'a>(mut served: impl FnMut(&str) -> Option<&'a [String]>) -> Option<&'static str> {
    VERSIONS.into_iter().find(|v| {
        served(v).is_some_and(|names| names.iter().any(|n| n == BINDINGS) && names.iter().any(|n| n == POLICIES))
    })
}

/// What regcred keeps of a MutatingAdmissionPolicyBinding: the policy it
/// binds, and whether it passes every credential of the policy's kind to
/// it (a `paramRef.selector`, as the chart's bindings do). A binding whose
/// `paramRef` names one object, or that has no `paramRef`, would not pass
/// a credential as `params` the way the policy expects.
#[derive(Clone, Debug, PartialEq)]
pub struct BindingInfo {
    pub policy: String,
    pub selects_params: bool,
}

impl BindingInfo {
    /// Reads a binding as the API returns it.
    pub fn of(binding: &Value) -> Self {
        let spec = &binding["spec"];
        BindingInfo {
            policy: spec["policyName"].as_str().unwrap_or_default().to_string(),
            selects_params: spec["paramRef"]["selector"].is_object(),
        }
    }
}

/// Where injection stands for a credential of the policy's kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Injection {
    /// Not asked for.
    Off,
    /// The policy is installed and bound; the binding names.
    Active { bindings: Vec<String> },
    /// The policy is not installed.
    PolicyMissing,
    /// The policy is installed and no binding passes credentials to it.
    BindingMissing,
    /// The cluster does not serve the API.
    Unsupported,
}

/// Decides [`Injection`] from what the cluster serves and holds: `served`
/// whether the API is served, `policy_installed` whether the chart's policy
/// exists, `bindings` every binding by name.
pub fn injection<'a>(
    wanted: bool,
    served: bool,
    policy: &str,
    policy_installed: bool,
    bindings: impl IntoIterator<Item = (&'a str, &'a BindingInfo)>,
) -> Injection {
    if !wanted {
        return Injection::Off;
    }
    if !served {
        return Injection::Unsupported;
    }
    if !policy_installed {
        return Injection::PolicyMissing;
    }
    let mut names: Vec<String> =
        bindings.into_iter().filter(|(_, b)| b.policy == policy && b.selects_params).map(|(n, _)| n.into()).collect();
    if names.is_empty() {
        return Injection::BindingMissing;
    }
    names.sort();
    Injection::Active { bindings: names }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn served_version_prefers_v1_and_needs_both_resources() {
        let both = vec![POLICIES.to_string(), BINDINGS.to_string(), "validatingadmissionpolicies".into()];
        let policies_only = vec![POLICIES.to_string()];
        assert_eq!(served_version(|v| (v == "v1" || v == "v1beta1").then_some(both.as_slice())), Some("v1"));
        assert_eq!(served_version(|v| (v == "v1beta1").then_some(both.as_slice())), Some("v1beta1"));
        assert_eq!(
            served_version(|v| Some(if v == "v1" { policies_only.as_slice() } else { both.as_slice() })),
            Some("v1beta1"),
            "v1 without bindings does not count"
        );
        assert_eq!(served_version(|_| None), None);
        assert_eq!(served_version(|_| Some(policies_only.as_slice())), None);
    }

    #[test]
    fn bindings_count_only_when_they_pass_credentials_to_the_policy() {
        let chart = BindingInfo::of(&json!({"spec": {"policyName": REGISTRY_CREDENTIAL_POLICY,
            "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"}}}));
        assert_eq!(chart, BindingInfo { policy: REGISTRY_CREDENTIAL_POLICY.into(), selects_params: true });
        let by_name = BindingInfo::of(&json!({"spec": {"policyName": REGISTRY_CREDENTIAL_POLICY,
            "paramRef": {"name": "one"}}}));
        let other = BindingInfo::of(&json!({"spec": {"policyName": "someone-elses", "paramRef": {"selector": {}}}}));
        let no_params = BindingInfo::of(&json!({"spec": {"policyName": REGISTRY_CREDENTIAL_POLICY}}));
        assert!(!by_name.selects_params && !no_params.selects_params);

        let p = REGISTRY_CREDENTIAL_POLICY;
        let all = [("chart", &chart), ("by-name", &by_name), ("other", &other), ("no-params", &no_params)];
        assert_eq!(injection(false, true, p, true, all), Injection::Off);
        assert_eq!(injection(false, false, p, false, []), Injection::Off);
        assert_eq!(injection(true, false, p, true, all), Injection::Unsupported);
        assert_eq!(injection(true, true, p, false, all), Injection::PolicyMissing);
        assert_eq!(injection(true, true, p, true, all), Injection::Active { bindings: vec!["chart".into()] });
        let without_chart = [("by-name", &by_name), ("other", &other), ("no-params", &no_params)];
        assert_eq!(injection(true, true, p, true, without_chart), Injection::BindingMissing);
        let two = [("z", &chart), ("a", &chart)];
        assert_eq!(injection(true, true, p, true, two), Injection::Active { bindings: vec!["a".into(), "z".into()] });
    }
}
