//! Admission-time injection of the pull Secret into Pods: what regcred
//! asks of the cluster's MutatingAdmissionPolicy API. Pure functions; the
//! controller (`controller::admission`) does the I/O.
//!
//! The chart ships one MutatingAdmissionPolicy per credential kind
//! (`charts/regcred/files/admission/`), with the credential kind as its
//! `paramKind`. For every credential with `injection.enabled`, regcred
//! writes one MutatingAdmissionPolicyBinding: `paramRef` names the
//! credential, `matchResources.namespaceSelector` is derived from the
//! credential's namespace selection. The policy's CEL reads the
//! credential's `spec.secret.name`, `spec.serviceAccounts` and namespace
//! selection, and appends `{name: <secret>}` to a new Pod's
//! `spec.imagePullSecrets` when the Pod runs as a selected ServiceAccount
//! and does not list it yet.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use serde_json::{Value, json};

use crate::api::{ClusterRegistryCredentialSpec, GROUP, VERSION};

/// API group of MutatingAdmissionPolicy and its bindings.
pub const ADMISSION_GROUP: &str = "admissionregistration.k8s.io";
/// The chart's policy for RegistryCredentials.
pub const REGISTRY_CREDENTIAL_POLICY: &str = "inject-pull-secret.registrycredentials.regcred.dev";
/// The chart's policy for ClusterRegistryCredentials.
pub const CLUSTER_REGISTRY_CREDENTIAL_POLICY: &str = "inject-pull-secret.clusterregistrycredentials.regcred.dev";
/// The label every namespace carries with its own name (Kubernetes 1.21+).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Plural of the binding resource.
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

/// The binding's name for a credential: `regcred.crcred.<name>` or
/// `regcred.rcred.<namespace>.<name>` (namespaces have no dots, so these
/// never collide), or a digest when that is longer than a name may be.
pub fn binding_name(namespace: Option<&str>, name: &str) -> String {
    let (kind, full) = match namespace {
        Some(ns) => ("rcred", format!("regcred.rcred.{ns}.{name}")),
        None => ("crcred", format!("regcred.crcred.{name}")),
    };
    if full.len() <= 253 {
        return full;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(full.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("regcred.{kind}.{hex}")
}

fn name_requirement(operator: &str, names: &[String]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: NAMESPACE_NAME_LABEL.into(),
        operator: operator.into(),
        values: Some(names.to_vec()),
    }
}

/// The binding's `namespaceSelector` for a RegistryCredential: its own
/// namespace and no other.
pub fn own_namespace_selector(namespace: &str) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(vec![name_requirement("In", &[namespace.to_string()])]),
        ..Default::default()
    }
}

/// The binding's `namespaceSelector` for a ClusterRegistryCredential, as
/// close to its namespace selection as one label selector can say:
/// - `namespaceSelector` only: that selector;
/// - `namespaces` only: `kubernetes.io/metadata.name In (namespaces)`;
/// - both: a label selector cannot express their union, so every
///   namespace, and the policy's CEL checks the union exactly;
/// - and in every case `kubernetes.io/metadata.name NotIn
///   (excludeNamespaces)`.
pub fn cluster_namespace_selector(spec: &ClusterRegistryCredentialSpec) -> LabelSelector {
    let names: &[String] = spec.namespaces.as_deref().unwrap_or_default();
    let mut selector = match (&spec.namespace_selector, names.is_empty()) {
        (Some(s), true) => s.clone(),
        (None, false) => {
            LabelSelector { match_expressions: Some(vec![name_requirement("In", names)]), ..Default::default() }
        }
        (Some(_), false) => LabelSelector::default(),
        // Rejected by the schema; match nothing rather than everything.
        (None, true) => LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: NAMESPACE_NAME_LABEL.into(),
                operator: "DoesNotExist".into(),
                values: None,
            }]),
            ..Default::default()
        },
    };
    let excluded: &[String] = spec.exclude_namespaces.as_deref().unwrap_or_default();
    if !excluded.is_empty() {
        selector.match_expressions.get_or_insert_with(Vec::new).push(name_requirement("NotIn", excluded));
    }
    selector
}

/// Who a binding is for.
pub struct BindingOwner<'a> {
    /// `RegistryCredential` or `ClusterRegistryCredential`.
    pub kind: &'a str,
    pub name: &'a str,
    /// Set for a RegistryCredential.
    pub namespace: Option<&'a str>,
    pub uid: Option<&'a str>,
    /// The value of the `regcred.dev/owner` annotation.
    pub owner_key: &'a str,
}

/// The MutatingAdmissionPolicyBinding for a credential (without
/// `apiVersion`, which depends on what the cluster serves).
///
/// A ClusterRegistryCredential owns its binding (ownerReference), so the
/// garbage collector removes it with the credential even if regcred is not
/// running. A cluster-scoped object cannot be owned by a namespaced one,
/// so a RegistryCredential's binding carries only the owner annotation and
/// is removed on the finalizer path.
pub fn desired_binding(
    owner: &BindingOwner<'_>,
    policy: &str,
    namespace_selector: &LabelSelector,
    managed_by: (&str, &str),
    owner_annotation: &str,
) -> Value {
    let mut param_ref = json!({"name": owner.name, "parameterNotFoundAction": "Allow"});
    if let Some(ns) = owner.namespace {
        param_ref["namespace"] = json!(ns);
    }
    let mut metadata = json!({
        "name": binding_name(owner.namespace, owner.name),
        "labels": {managed_by.0: managed_by.1},
        "annotations": {owner_annotation: owner.owner_key},
    });
    if let (None, Some(uid)) = (owner.namespace, owner.uid) {
        metadata["ownerReferences"] = json!([{
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": owner.kind,
            "name": owner.name,
            "uid": uid,
            "controller": true,
        }]);
    }
    json!({
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": metadata,
        "spec": {
            "policyName": policy,
            "paramRef": param_ref,
            "matchResources": {"namespaceSelector": namespace_selector},
        }
    })
}

/// Whether `actual` holds everything `desired` says: every key of a
/// desired object is in the actual one with a value that holds it, arrays
/// hold element by element and have the same length, scalars are equal.
/// Fields the API server adds (defaults, managedFields) do not count.
pub fn holds(actual: &Value, desired: &Value) -> bool {
    match (actual, desired) {
        (Value::Object(a), Value::Object(d)) => {
            d.iter().all(|(k, dv)| match a.get(k) {
                Some(av) => holds(av, dv),
                // An empty desired object or array is what the server
                // leaves out.
                None => dv.is_null() || dv.as_object().is_some_and(|o| o.is_empty()),
            })
        }
        (Value::Array(a), Value::Array(d)) => a.len() == d.len() && a.iter().zip(d).all(|(a, d)| holds(a, d)),
        _ => actual == desired,
    }
}

/// The parts of a binding regcred compares: labels, annotations,
/// ownerReferences and spec.
pub fn comparable(object: &Value) -> Value {
    let meta = &object["metadata"];
    let pick = |v: &Value| if v.is_null() { Value::Object(Default::default()) } else { v.clone() };
    json!({
        "metadata": {
            "labels": pick(&meta["labels"]),
            "annotations": pick(&meta["annotations"]),
            "ownerReferences": if meta["ownerReferences"].is_null() { json!([]) } else { meta["ownerReferences"].clone() },
        },
        "spec": pick(&object["spec"]),
    })
}

/// Labels of a namespace as the binding's selector sees them: its own
/// labels plus `kubernetes.io/metadata.name`.
pub fn namespace_labels(name: &str, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut all = labels.clone();
    all.insert(NAMESPACE_NAME_LABEL.into(), name.into());
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::{NamespaceInfo, cluster_targets, selector_matches};

    fn spec(json: Value) -> ClusterRegistryCredentialSpec {
        let mut base = json!({
            "provider": {"basic": {"registry": "r", "secretRef": {"name": "s"}}},
            "secret": {"name": "pull"}
        });
        base.as_object_mut().unwrap().extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

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
    fn binding_names_are_unique_and_short_enough() {
        assert_eq!(binding_name(None, "ghcr"), "regcred.crcred.ghcr");
        assert_eq!(binding_name(Some("team-a"), "ghcr"), "regcred.rcred.team-a.ghcr");
        assert_ne!(binding_name(Some("a"), "b.c"), binding_name(None, "a.b.c"));
        let long = "x".repeat(250);
        let n = binding_name(Some("team"), &long);
        assert!(n.len() <= 253 && n.starts_with("regcred.rcred."), "{n}");
        assert_ne!(n, binding_name(Some("team2"), &long));
    }

    /// The binding's selector never matches a namespace the credential does
    /// not target, and matches every target when one selector can say so.
    #[test]
    fn cluster_selector_follows_the_namespace_selection() {
        let cases = [
            json!({"namespaceSelector": {"matchLabels": {"pull": "yes"}}, "excludeNamespaces": ["blocked"]}),
            json!({"namespaces": ["a", "b"], "excludeNamespaces": ["b"]}),
            json!({"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]},
                   "namespaces": ["explicit"], "excludeNamespaces": ["blocked"]}),
            json!({"namespaceSelector": {}}),
        ];
        let namespaces = [
            ("a", labels(&[("pull", "yes"), ("env", "prod")])),
            ("b", labels(&[("pull", "yes")])),
            ("explicit", labels(&[])),
            ("blocked", labels(&[("pull", "yes"), ("env", "prod")])),
            ("other", labels(&[("env", "dev")])),
        ];
        for (i, case) in cases.iter().enumerate() {
            let s = spec(case.clone());
            let selector = cluster_namespace_selector(&s);
            let union = s.namespace_selector.is_some() && s.namespaces.is_some();
            for (name, l) in &namespaces {
                let target = cluster_targets(&s, &NamespaceInfo { name, labels: l, terminating: false });
                let matched = selector_matches(&selector, &namespace_labels(name, l));
                if target {
                    assert!(matched, "case {i}: target {name} not matched by {selector:?}");
                } else if !union {
                    assert!(!matched, "case {i}: {name} matched by {selector:?}");
                }
                if s.exclude_namespaces.iter().flatten().any(|n| n == name) {
                    assert!(!matched, "case {i}: excluded {name} matched");
                }
            }
        }
    }

    #[test]
    fn own_namespace_only() {
        let s = own_namespace_selector("team-a");
        assert!(selector_matches(&s, &namespace_labels("team-a", &labels(&[]))));
        assert!(!selector_matches(&s, &namespace_labels("team-b", &labels(&[]))));
    }

    #[test]
    fn bindings_name_the_credential_and_own_only_when_they_can() {
        let cluster = BindingOwner {
            kind: "ClusterRegistryCredential",
            name: "ghcr",
            namespace: None,
            uid: Some("u1"),
            owner_key: "ClusterRegistryCredential/ghcr",
        };
        let b = desired_binding(
            &cluster,
            CLUSTER_REGISTRY_CREDENTIAL_POLICY,
            &LabelSelector::default(),
            ("app.kubernetes.io/managed-by", "regcred"),
            "regcred.dev/owner",
        );
        assert_eq!(b["metadata"]["name"], "regcred.crcred.ghcr");
        assert_eq!(b["spec"]["paramRef"], json!({"name": "ghcr", "parameterNotFoundAction": "Allow"}));
        assert_eq!(b["spec"]["policyName"], CLUSTER_REGISTRY_CREDENTIAL_POLICY);
        assert_eq!(b["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(b["metadata"]["annotations"]["regcred.dev/owner"], "ClusterRegistryCredential/ghcr");

        let namespaced = BindingOwner {
            kind: "RegistryCredential",
            name: "own",
            namespace: Some("team-a"),
            uid: Some("u2"),
            owner_key: "RegistryCredential/team-a/own",
        };
        let b = desired_binding(
            &namespaced,
            REGISTRY_CREDENTIAL_POLICY,
            &own_namespace_selector("team-a"),
            ("app.kubernetes.io/managed-by", "regcred"),
            "regcred.dev/owner",
        );
        assert_eq!(b["spec"]["paramRef"]["namespace"], "team-a");
        assert!(b["metadata"]["ownerReferences"].is_null(), "a namespaced owner cannot own a cluster-scoped object");
    }

    #[test]
    fn holds_ignores_server_defaults_but_not_changes() {
        let desired = json!({"spec": {"paramRef": {"name": "a"}, "matchResources": {"namespaceSelector": {}}},
            "metadata": {"labels": {"x": "1"}, "ownerReferences": []}});
        let actual = json!({"spec": {"paramRef": {"name": "a"}, "policyName": "p",
            "matchResources": {"namespaceSelector": {}, "objectSelector": {}, "matchPolicy": "Equivalent"}},
            "metadata": {"labels": {"x": "1", "other": "2"}, "ownerReferences": []}});
        assert!(holds(&actual, &desired));
        let changed = json!({"spec": {"paramRef": {"name": "b"}, "matchResources": {"namespaceSelector": {}}},
            "metadata": {"labels": {"x": "1"}}});
        assert!(!holds(&changed, &desired));
        let server_dropped_empty = json!({"spec": {"paramRef": {"name": "a"}, "matchResources": {}},
            "metadata": {"labels": {"x": "1"}, "ownerReferences": []}});
        assert!(holds(&server_dropped_empty, &desired), "an empty selector the server left out");
        let more = json!({"spec": {"paramRef": {"name": "a"}, "matchResources": {"namespaceSelector": {}}},
            "metadata": {"labels": {"x": "1"}, "ownerReferences": [{"uid": "u"}]}});
        assert!(!holds(&more, &desired), "an extra ownerReference");
        assert_eq!(comparable(&json!({"metadata": {"name": "n"}}))["metadata"]["ownerReferences"], json!([]));
    }
}
