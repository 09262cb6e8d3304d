//! Which namespaces and ServiceAccounts a credential targets. Pure functions
//! over labels; the controller feeds them from its caches.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

use crate::api::{ClusterRegistryCredentialSpec, ClusterSelector, ServiceAccountSelector};

/// Whether `labels` match a Kubernetes label selector (kube's
/// [`Selector`]). An empty selector matches everything; a selector kube
/// cannot use (an unknown operator) matches nothing. `In` and `NotIn`
/// without `values` compare against the empty set, as they always have here
/// (kube refuses them).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    compile(selector).is_some_and(|s| s.matches(labels))
}

/// A label selector made ready for many matches (see [`selector_matches`]);
/// `None` when kube cannot use it.
fn compile(selector: &LabelSelector) -> Option<Selector> {
    let mut selector = selector.clone();
    for e in selector.match_expressions.iter_mut().flatten() {
        if matches!(e.operator.as_str(), "In" | "NotIn") {
            e.values.get_or_insert_with(Vec::new);
        }
    }
    Selector::try_from(selector).ok()
}

/// A namespace as the target selection sees it.
pub struct NamespaceInfo<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// Being deleted: never a target.
    pub terminating: bool,
}

/// Whether a ClusterRegistryCredential targets a namespace.
pub fn cluster_targets(spec: &ClusterRegistryCredentialSpec, ns: &NamespaceInfo<'_>) -> bool {
    let selector = spec.namespace_selector.as_ref().map(compile);
    targets_with(spec, selector.as_ref(), ns)
}

/// [`cluster_targets`] with the selector compiled (`None`: no selector;
/// `Some(None)`: one kube cannot use, which matches nothing).
fn targets_with(
    spec: &ClusterRegistryCredentialSpec,
    selector: Option<&Option<Selector>>,
    ns: &NamespaceInfo<'_>,
) -> bool {
    if ns.terminating {
        return false;
    }
    if spec.exclude_namespaces.iter().flatten().any(|n| n == ns.name) {
        return false;
    }
    let by_name = spec.namespaces.iter().flatten().any(|n| n == ns.name);
    let by_selector = selector.is_some_and(|s| s.as_ref().is_some_and(|s| s.matches(ns.labels)));
    by_name || by_selector
}

/// The target namespaces of a ClusterRegistryCredential among `namespaces`.
pub fn cluster_target_set<'a>(
    spec: &ClusterRegistryCredentialSpec,
    namespaces: impl IntoIterator<Item = NamespaceInfo<'a>>,
) -> BTreeSet<String> {
    // Compiled once, not once per namespace.
    let selector = spec.namespace_selector.as_ref().map(compile);
    namespaces
        .into_iter()
        .filter(|ns| targets_with(spec, selector.as_ref(), ns))
        .map(|ns| ns.name.to_string())
        .collect()
}

/// Whether a ClusterRegistryCredential writes to the cluster regcred runs in.
pub fn local_selected(clusters: Option<&ClusterSelector>) -> bool {
    clusters.is_none_or(ClusterSelector::local)
}

/// Whether a ClusterRegistryCredential writes to the registered cluster
/// `name`, whose kubeconfig Secret carries `labels`: named or matched by
/// the selector, and not excluded. No `clusters` at all: none.
pub fn cluster_selected(clusters: Option<&ClusterSelector>, name: &str, labels: &BTreeMap<String, String>) -> bool {
    let Some(c) = clusters else { return false };
    if c.exclude.iter().flatten().any(|n| n == name) {
        return false;
    }
    c.names.iter().flatten().any(|n| n == name) || c.selector.as_ref().is_some_and(|s| selector_matches(s, labels))
}

/// Whether a ClusterRegistryCredential writes to any cluster but the local one.
pub fn selects_spokes(clusters: Option<&ClusterSelector>) -> bool {
    clusters.is_some_and(|c| c.selector.is_some() || c.names.as_ref().is_some_and(|n| !n.is_empty()))
}

/// Whether a ServiceAccount gets the pull Secret. No selector at all means
/// the `default` ServiceAccount.
pub fn service_account_selected(
    selector: Option<&ServiceAccountSelector>,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let Some(sel) = selector else {
        return name == "default";
    };
    if sel.all == Some(true) {
        return true;
    }
    let by_name = match &sel.names {
        Some(names) => names.iter().any(|n| n == name),
        // `names` omitted: the default applies unless a selector is given.
        None => sel.selector.is_none() && name == "default",
    };
    by_name || sel.selector.as_ref().is_some_and(|s| selector_matches(s, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn selector_semantics_follow_kubernetes() {
        let l = labels(&[("team", "a"), ("env", "prod")]);
        assert!(selector_matches(&LabelSelector::default(), &l), "empty selector matches all");
        let by_label = LabelSelector { match_labels: Some(labels(&[("team", "a")])), ..Default::default() };
        assert!(selector_matches(&by_label, &l));
        assert!(!selector_matches(&by_label, &labels(&[("team", "b")])));
        let exprs =
            |e: Vec<LabelSelectorRequirement>| LabelSelector { match_expressions: Some(e), ..Default::default() };
        assert!(selector_matches(&exprs(vec![req("env", "In", &["prod", "dev"])]), &l));
        assert!(!selector_matches(&exprs(vec![req("env", "NotIn", &["prod"])]), &l));
        assert!(selector_matches(&exprs(vec![req("missing", "NotIn", &["x"])]), &l));
        assert!(selector_matches(&exprs(vec![req("team", "Exists", &[])]), &l));
        assert!(selector_matches(&exprs(vec![req("other", "DoesNotExist", &[])]), &l));
        assert!(!selector_matches(&exprs(vec![req("team", "Bogus", &[])]), &l));
        // Both kinds of terms must hold; values without `values` are the empty set.
        let both = LabelSelector {
            match_labels: Some(labels(&[("team", "a")])),
            match_expressions: Some(vec![req("env", "In", &["dev"])]),
        };
        assert!(!selector_matches(&both, &l));
        let no_values = |op: &str| LabelSelectorRequirement { key: "env".into(), operator: op.into(), values: None };
        assert!(!selector_matches(&exprs(vec![no_values("In")]), &l));
        assert!(selector_matches(&exprs(vec![no_values("NotIn")]), &l));
    }

    fn spec(json: serde_json::Value) -> ClusterRegistryCredentialSpec {
        let mut base = serde_json::json!({
            "provider": {"basic": {"registry": "r", "secretRef": {"name": "s"}}},
            "secret": {"name": "pull"}
        });
        base.as_object_mut().unwrap().extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn cluster_selection_unions_names_and_selector_minus_excludes_and_terminating() {
        let s = spec(serde_json::json!({
            "namespaceSelector": {"matchLabels": {"pull": "yes"}},
            "namespaces": ["explicit"],
            "excludeNamespaces": ["blocked"]
        }));
        let yes = labels(&[("pull", "yes")]);
        let none = labels(&[]);
        let ns = |name, labels, terminating| NamespaceInfo { name, labels, terminating };
        let set = cluster_target_set(
            &s,
            [
                ns("a", &yes, false),
                ns("explicit", &none, false),
                ns("blocked", &yes, false),
                ns("dying", &yes, true),
                ns("other", &none, false),
            ],
        );
        assert_eq!(set.into_iter().collect::<Vec<_>>(), ["a", "explicit"]);
    }

    #[test]
    fn cluster_selection_defaults_to_this_cluster_only() {
        let prod = labels(&[("env", "prod")]);
        assert!(local_selected(None), "no clusters field: this cluster, as before");
        assert!(!cluster_selected(None, "a", &prod), "no clusters field: no spoke");
        assert!(!selects_spokes(None));
        let c: ClusterSelector = serde_json::from_value(serde_json::json!({
            "local": false,
            "selector": {"matchLabels": {"env": "prod"}},
            "names": ["named"],
            "exclude": ["legacy"]
        }))
        .unwrap();
        assert!(!local_selected(Some(&c)));
        assert!(selects_spokes(Some(&c)));
        assert!(cluster_selected(Some(&c), "eu", &prod), "by label");
        assert!(cluster_selected(Some(&c), "named", &labels(&[])), "by name");
        assert!(!cluster_selected(Some(&c), "dev", &labels(&[("env", "dev")])), "neither");
        assert!(!cluster_selected(Some(&c), "legacy", &prod), "exclusion wins");
        let only_local: ClusterSelector = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(local_selected(Some(&only_local)) && !selects_spokes(Some(&only_local)));
        assert!(!cluster_selected(Some(&only_local), "eu", &prod));
    }

    #[test]
    fn service_account_selection() {
        let none = labels(&[]);
        let builder = labels(&[("role", "builder")]);
        assert!(service_account_selected(None, "default", &none));
        assert!(!service_account_selected(None, "other", &none));
        let names = ServiceAccountSelector { names: Some(vec!["a".into()]), ..Default::default() };
        assert!(service_account_selected(Some(&names), "a", &none));
        assert!(!service_account_selected(Some(&names), "default", &none));
        let empty = ServiceAccountSelector { names: Some(vec![]), ..Default::default() };
        assert!(!service_account_selected(Some(&empty), "default", &none));
        let sel = ServiceAccountSelector {
            selector: Some(LabelSelector { match_labels: Some(builder.clone()), ..Default::default() }),
            ..Default::default()
        };
        assert!(service_account_selected(Some(&sel), "x", &builder));
        assert!(!service_account_selected(Some(&sel), "default", &none), "a selector replaces the default name");
        let all = ServiceAccountSelector { all: Some(true), ..Default::default() };
        assert!(service_account_selected(Some(&all), "anything", &none));
    }
}
