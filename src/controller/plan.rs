//! Planning: which Secret writes, removals and ServiceAccount passes a
//! credential needs now. A pure function of the [`Index`] and the minted
//! credential; [`super::act`] carries the plan out.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha256};

use super::cache::Pairs;
use super::index::{Index, ManagedEntry};
use super::{CredentialKind, MANAGED_BY, MANAGED_BY_LABEL, OWNER_ANNOTATION};
use crate::api::{CredentialSpec, DeletionPolicy};
use crate::provider::Minted;
use crate::render::dockerconfigjson;

/// The type of every Secret regcred writes.
pub const SECRET_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// The data key of every Secret regcred writes.
pub const DATA_KEY: &str = ".dockerconfigjson";

/// A SHA-256 digest of a Secret's data value.
pub fn data_digest(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

/// The pull Secret a credential should have in every target namespace.
pub struct DesiredSecret {
    pub name: String,
    data: Vec<u8>,
    /// What the ledger holds in place of `data`.
    pub digest: [u8; 32],
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    /// Hash of all of the above, to recognise regcred's own writes.
    pub hash: u64,
}

impl DesiredSecret {
    pub fn new(spec: &CredentialSpec, owner: &str, minted: &Minted) -> Self {
        Self::with_data(spec, owner, dockerconfigjson(&minted.auths), &[])
    }

    /// The Secret holding `data` (a rendered `.dockerconfigjson`), with
    /// `extra` annotations besides the spec's and the owner.
    pub fn with_data(spec: &CredentialSpec, owner: &str, data: Vec<u8>, extra: &[(&str, &str)]) -> Self {
        let mut labels = spec.secret.labels.clone().unwrap_or_default();
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        let mut annotations = spec.secret.annotations.clone().unwrap_or_default();
        annotations.insert(OWNER_ANNOTATION.into(), owner.into());
        annotations.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut h = Sha256::new();
        h.update(&data);
        for (k, v) in labels.iter().chain(annotations.iter()) {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        let hash = u64::from_be_bytes(h.finalize()[..8].try_into().expect("sha256 is 32 bytes"));
        let digest = data_digest(&data);
        DesiredSecret { name: spec.secret.name.clone(), data, digest, labels, annotations, hash }
    }

    /// Whether a cached Secret already has this metadata. Labels and
    /// annotations others added are left alone and do not count.
    fn metadata_matches(&self, s: &ManagedEntry) -> bool {
        let subset =
            |want: &BTreeMap<String, String>, have: &Pairs| want.iter().all(|(k, v)| have.get(k) == Some(v.as_str()));
        subset(&self.labels, &s.labels) && subset(&self.annotations, &s.annotations)
    }

    /// The rendered `.dockerconfigjson`.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The JSON merge patch of a [`WriteKind::Data`] write: the data only.
    pub fn data_patch(&self) -> serde_json::Value {
        serde_json::json!({ "data": { DATA_KEY: ByteString(self.data.clone()) } })
    }

    /// The Secret object for `namespace`.
    pub fn object(&self, namespace: &str) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(namespace.into()),
                labels: Some(self.labels.clone()),
                annotations: Some(self.annotations.clone()),
                ..Default::default()
            },
            type_: Some(SECRET_TYPE.into()),
            data: Some(BTreeMap::from([(DATA_KEY.to_string(), ByteString(self.data.clone()))])),
            ..Default::default()
        }
    }
}

/// A Secret to write, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretWrite {
    pub namespace: String,
    pub kind: WriteKind,
}

/// How a Secret is written: the cheapest write that brings it to the
/// desired one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// Missing: a plain create (one created in the meantime by someone
    /// else makes it fail instead of being taken over).
    Create,
    /// regcred's own, with the desired labels and annotations: only the
    /// data is replaced, by a JSON merge patch (a rotation).
    Data,
    /// regcred's own, with other metadata (drift, or the spec changed it):
    /// a forced server-side apply, which also drops labels and annotations
    /// regcred set before and no longer wants.
    Apply,
}

/// A Secret of this credential's that is no longer wanted, and the
/// ServiceAccounts whose entry for it goes first, through the writer (so
/// none points at a missing Secret).
#[derive(Clone, Debug, PartialEq)]
pub struct Removal {
    pub namespace: String,
    pub name: String,
    /// Deleted with this uid as precondition: never a Secret that replaced
    /// ours in the meantime.
    pub uid: Option<Box<str>>,
    /// Names of the ServiceAccounts listing it.
    pub accounts: Vec<String>,
}

/// What a credential needs done now.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Namespaces that should hold the Secret.
    pub targets: BTreeSet<String>,
    /// Target namespaces that need no write: they hold the current Secret
    /// (or, while the provider fails, this credential's last good one).
    pub in_place: Vec<String>,
    pub writes: Vec<SecretWrite>,
    /// Target namespaces where a Secret of the name exists and is not this
    /// credential's, with a message.
    pub conflicts: Vec<(String, String)>,
    pub removals: Vec<Removal>,
    /// Namespaces whose ServiceAccounts need a pass of the writer once the
    /// Secret is in place: a selected one lacks the entry, or an unselected
    /// one has it.
    pub accounts: Vec<String>,
}

/// What to do about one target namespace.
#[derive(Debug, PartialEq)]
enum Step {
    InPlace,
    Write(WriteKind),
    Conflict(String),
}

/// The plan of a credential. `desired` is the Secret to publish, or `None`
/// when there is nothing new to publish (the provider failed): what is in
/// place then stays untouched.
pub fn plan<K: CredentialKind>(index: &Index, obj: &K, desired: Option<&DesiredSecret>) -> Plan {
    let owner = obj.owner_key();
    let spec = obj.credential();
    let name = spec.secret.name.as_str();
    let targets = obj.target_namespaces(index);
    let mut plan = Plan::default();
    for namespace in &targets {
        let step = match desired {
            Some(desired) => secret_step(index, &owner, desired, namespace),
            None if index.managed.with(namespace, name, |s| s.owner() == Some(&owner)) == Some(true) => Step::InPlace,
            None => continue,
        };
        match step {
            Step::InPlace => plan.in_place.push(namespace.clone()),
            Step::Write(kind) => plan.writes.push(SecretWrite { namespace: namespace.clone(), kind }),
            Step::Conflict(message) => plan.conflicts.push((namespace.clone(), message)),
        }
    }
    let selector = spec.service_accounts.as_ref();
    let served = plan.in_place.iter().chain(plan.writes.iter().map(|w| &w.namespace));
    plan.accounts = served.filter(|ns| index.accounts_need_pass(ns, name, selector)).cloned().collect();
    // A hash set: the check runs for every Secret the credential owns.
    let wanted: std::collections::HashSet<&str, foldhash::fast::RandomState> =
        targets.iter().map(String::as_str).collect();
    plan.removals = removals(index, &owner, |ns, n| n == name && wanted.contains(ns));
    plan.targets = targets;
    plan
}

/// The plan of a credential being deleted: with `deletionPolicy: Delete`
/// every Secret it wrote goes (with its ServiceAccount entries); with
/// `Orphan` everything stays.
pub fn plan_deletion<K: CredentialKind>(index: &Index, obj: &K) -> Plan {
    match obj.credential().deletion_policy {
        DeletionPolicy::Delete => Plan { removals: removals(index, &obj.owner_key(), |_, _| false), ..Plan::default() },
        DeletionPolicy::Orphan => Plan::default(),
    }
}

/// Secrets `owner` wrote in a spoke, now that its credential is gone, that
/// were written with `deletionPolicy: Delete` (the annotation `annotation`
/// says so); those written with `Orphan` stay.
pub fn orphan_removals(index: &Index, owner: &str, annotation: &str) -> Vec<Removal> {
    let orphaned: std::collections::HashSet<(String, String)> = index.managed.with_all(|all| {
        all.filter(|(_, _, s)| s.owner() == Some(owner) && s.annotations.get(annotation) != Some("Delete"))
            .map(|(ns, name, _)| (ns.to_string(), name.to_string()))
            .collect()
    });
    removals(index, owner, |ns, name| orphaned.contains(&(ns.to_string(), name.to_string())))
}

fn secret_step(index: &Index, owner: &str, desired: &DesiredSecret, namespace: &str) -> Step {
    let own = index.ledger.secret(namespace, &desired.name);
    let written = own.filter(|o| o.written.is_some_and(|w| w.content == desired.hash));
    let not_ours = || {
        Step::Conflict(format!(
            "Secret {namespace}/{} exists and is not managed by regcred; it is left alone",
            desired.name
        ))
    };
    if index.others.with(namespace, &desired.name, |_| ()).is_some() {
        return not_ours();
    }
    // The owner: `None` when there is none, `Some(None)` when it is
    // `owner` (no copy: the plan asks this of every target namespace).
    let cached = index.managed.with(namespace, &desired.name, |s| {
        let other = s.owner().map(|o| (o != owner).then(|| o.to_string()));
        (other, desired.metadata_matches(s), s.resource_version)
    });
    // The data counts only if it is known at the cached resourceVersion.
    let cached = cached.map(|(owner, metadata_matches, rv)| {
        let data_matches = index.content_at(namespace, &desired.name, rv) == Some(desired.digest);
        let kind = if metadata_matches { WriteKind::Data } else { WriteKind::Apply };
        (owner, metadata_matches && data_matches, rv, kind)
    });
    match cached {
        // Not in the cache: absent, or just written by us and not seen yet.
        None if written.is_some() => Step::InPlace,
        None => Step::Write(WriteKind::Create),
        Some((Some(Some(o)), _, _, _)) => {
            Step::Conflict(format!("Secret {namespace}/{} is managed by regcred for {o}", desired.name))
        }
        Some((None, _, _, _)) => not_ours(),
        Some((_, true, _, _)) => Step::InPlace,
        // The cache still shows an older version than our own last write.
        Some((_, false, rv, _)) if written.is_some_and(|w| Some(w.resource_version) > rv) => Step::InPlace,
        Some((_, false, _, kind)) => Step::Write(kind),
    }
}

/// Secrets `owner` wrote that are no longer wanted (`keep` says whether a
/// `(namespace, name)` still is), in namespaces that are not terminating: a
/// terminating namespace takes its Secrets with it.
fn removals(index: &Index, owner: &str, keep: impl Fn(&str, &str) -> bool) -> Vec<Removal> {
    let stale: Vec<(String, String, Option<Box<str>>)> = index.managed.with_all(|all| {
        all.filter(|(ns, name, s)| s.owner() == Some(owner) && !keep(ns, name))
            .map(|(ns, name, s)| (ns.to_string(), name.to_string(), s.uid.clone()))
            .collect()
    });
    stale
        .into_iter()
        .filter(|(ns, _, _)| index.live_namespace_labels(ns).is_some())
        .map(|(namespace, name, uid)| {
            let accounts = index.accounts_in(&namespace).into_iter().filter(|a| a.has(&name)).map(|a| a.name).collect();
            Removal { namespace, name, uid, accounts }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! The index is fed watch events the way the watches feed it; each test
    //! then asks for a plan and checks it.

    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{LocalObjectReference, Namespace, ServiceAccount};
    use kube::api::{ObjectMeta, PartialObjectMeta};
    use kube::runtime::reflector::{self, store::Writer};
    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::*;
    use crate::api::{ClusterRegistryCredential, RegistryCredential};
    use crate::controller::index::{CredentialRef, Credentials, Related, Routed, secret_related};
    use crate::render::RegistryAuth;
    use kube::runtime::reflector::ObjectRef;

    struct World {
        index: Index,
        namespaced: Writer<RegistryCredential>,
        cluster: Writer<ClusterRegistryCredential>,
    }

    fn meta(namespace: Option<&str>, name: &str, rv: u64) -> ObjectMeta {
        ObjectMeta {
            namespace: namespace.map(String::from),
            name: Some(name.into()),
            resource_version: Some(rv.to_string()),
            uid: Some(format!("uid-{name}-{rv}")),
            ..Default::default()
        }
    }

    impl World {
        /// Every cache listed, empty.
        fn new() -> World {
            let (ns_store, namespaced) = reflector::store();
            let (cluster_store, cluster) = reflector::store();
            let index =
                Index::new(Credentials { namespaced: ns_store, cluster: cluster_store }, Some("regcred".into()));
            fn listed<K>(apply: impl Fn(&Event<K>)) {
                apply(&Event::Init);
                apply(&Event::InitDone);
            }
            listed(|e| index.apply_namespace(e));
            listed(|e| index.apply_account(e));
            listed(|e| index.apply_managed(e));
            listed(|e| index.apply_other(e));
            World { index, namespaced, cluster }
        }

        fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
            let mut m = meta(None, name, 1);
            m.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
            self.index
                .apply_namespace(&Event::Apply(PartialObjectMeta::<Namespace> { metadata: m, ..Default::default() }));
        }

        fn terminate(&self, name: &str) {
            let mut m = meta(None, name, 2);
            m.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
            self.index
                .apply_namespace(&Event::Apply(PartialObjectMeta::<Namespace> { metadata: m, ..Default::default() }));
        }

        fn account(&self, namespace: &str, name: &str, rv: u64, entries: &[&str]) {
            let sa = ServiceAccount {
                metadata: meta(Some(namespace), name, rv),
                image_pull_secrets: Some(
                    entries.iter().map(|e| LocalObjectReference { name: e.to_string() }).collect(),
                ),
                ..Default::default()
            };
            self.index.apply_account(&Event::Apply(sa));
        }

        /// A Secret in the managed watch (labelled), owned by `owner`.
        fn managed(&self, namespace: &str, name: &str, rv: u64, owner: &str, desired: &DesiredSecret) {
            self.index.apply_managed(&Event::Apply(managed_secret(namespace, name, rv, owner, desired)));
        }

        fn other_secret(&self, namespace: &str, name: &str) {
            let m = meta(Some(namespace), name, 7);
            self.index.apply_other(&Event::Apply(PartialObjectMeta::<Secret> { metadata: m, ..Default::default() }));
        }

        fn cluster_credential(&mut self, name: &str, spec: serde_json::Value) -> Arc<ClusterRegistryCredential> {
            let mut c: ClusterRegistryCredential = serde_json::from_value(json!({
                "apiVersion": "regcred.dev/v1beta1", "kind": "ClusterRegistryCredential",
                "metadata": {"name": name, "generation": 1}, "spec": with_defaults(spec)
            }))
            .unwrap();
            c.metadata.resource_version = Some("1".into());
            self.cluster.apply_watcher_event(&Event::Apply(c.clone()));
            Arc::new(c)
        }

        fn credential(&mut self, namespace: &str, name: &str, spec: serde_json::Value) -> Arc<RegistryCredential> {
            let c: RegistryCredential = serde_json::from_value(json!({
                "apiVersion": "regcred.dev/v1beta1", "kind": "RegistryCredential",
                "metadata": {"name": name, "namespace": namespace, "generation": 1}, "spec": with_defaults(spec)
            }))
            .unwrap();
            self.namespaced.apply_watcher_event(&Event::Apply(c.clone()));
            Arc::new(c)
        }
    }

    fn managed_secret(
        namespace: &str,
        name: &str,
        rv: u64,
        owner: &str,
        desired: &DesiredSecret,
    ) -> PartialObjectMeta<Secret> {
        let mut m = meta(Some(namespace), name, rv);
        m.labels = desired.labels.clone().into();
        m.annotations = Some(BTreeMap::from([(OWNER_ANNOTATION.to_string(), owner.to_string())]));
        PartialObjectMeta::<Secret> { metadata: m, ..Default::default() }
    }

    fn with_defaults(spec: serde_json::Value) -> serde_json::Value {
        let mut base = json!({
            "provider": {"basic": {"registry": "r.example", "secretRef": {"name": "login"}}},
            "secret": {"name": "pull"}
        });
        base.as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
        base
    }

    fn desired<K: CredentialKind>(c: &K, password: &str) -> DesiredSecret {
        let auth = RegistryAuth { registry: "r.example".into(), username: "u".into(), password: password.into() };
        DesiredSecret::new(c.credential(), &c.owner_key(), &Minted { auths: vec![auth], ..Default::default() })
    }

    fn names(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    fn writes(plan: &Plan) -> Vec<(&str, WriteKind)> {
        plan.writes.iter().map(|w| (w.namespace.as_str(), w.kind)).collect()
    }

    /// Records a write of regcred's own in the ledger, as `act` does.
    fn wrote(world: &World, namespace: &str, owner: &str, d: &DesiredSecret, rv: u64) {
        let key = (namespace.to_string(), d.name.clone());
        world.index.ledger.secret_written(key, owner, d.hash, d.digest, Some(&rv.to_string()));
    }

    #[test]
    fn missing_secrets_are_created_in_selected_namespaces_only() {
        let mut w = World::new();
        w.namespace("a", &[("pull", "yes")]);
        w.namespace("b", &[("pull", "yes")]);
        w.namespace("c", &[]);
        let c = w.cluster_credential("c1", json!({"namespaceSelector": {"matchLabels": {"pull": "yes"}}}));
        let d = desired(&*c, "p1");
        let plan = plan(&w.index, &*c, Some(&d));
        assert_eq!(writes(&plan), [("a", WriteKind::Create), ("b", WriteKind::Create)]);
        assert!(plan.in_place.is_empty() && plan.conflicts.is_empty() && plan.removals.is_empty());
        assert_eq!(names(&Vec::from_iter(plan.targets.clone())), ["a", "b"]);
    }

    #[test]
    fn drift_of_data_or_metadata_is_written_back_and_a_current_secret_is_left_alone() {
        let mut w = World::new();
        w.namespace("a", &[]);
        w.namespace("b", &[]);
        let c = w.cluster_credential("c1", json!({"namespaces": ["a", "b"]}));
        let d = desired(&*c, "p1");
        let owner = c.owner_key();
        w.managed("a", "pull", 10, &owner, &d);
        w.managed("b", "pull", 11, &owner, &d);
        // What both hold is known (listed at start) at those versions.
        w.index.ledger.secret_listed(("a".into(), "pull".into()), Some("10"), d.digest);
        w.index.ledger.secret_listed(("b".into(), "pull".into()), Some("11"), d.digest);
        assert_eq!(names(&plan(&w.index, &*c, Some(&d)).in_place), ["a", "b"]);
        // Someone edits b's data: a newer resourceVersion whose content is
        // unknown.
        w.managed("b", "pull", 12, &owner, &d);
        let p = plan(&w.index, &*c, Some(&d));
        assert_eq!((names(&p.in_place), writes(&p)), (vec!["a"], vec![("b", WriteKind::Data)]));
        // Someone strips the managed-by label off a: it lands in the other
        // watch and is not regcred's any more.
        w.index.apply_managed(&Event::Delete(PartialObjectMeta::<Secret> {
            metadata: meta(Some("a"), "pull", 13),
            ..Default::default()
        }));
        w.other_secret("a", "pull");
        let p = plan(&w.index, &*c, Some(&d));
        assert_eq!(p.conflicts.len(), 1, "{p:?}");
        // A new credential content: every namespace is written.
        let d2 = desired(&*c, "p2");
        w.index.ledger.secret_listed(("b".into(), "pull".into()), Some("12"), d.digest);
        assert_eq!(writes(&plan(&w.index, &*c, Some(&d2))), [("b", WriteKind::Data)]);
    }

    #[test]
    fn a_rotation_replaces_only_the_data_and_drifted_metadata_is_applied() {
        let mut w = World::new();
        w.namespace("a", &[]);
        w.namespace("b", &[]);
        let spec = json!({"namespaces": ["a", "b"], "secret": {"name": "pull", "labels": {"team": "x"}}});
        let c = w.cluster_credential("c1", spec);
        let d = desired(&*c, "p1");
        let owner = c.owner_key();
        w.managed("a", "pull", 10, &owner, &d);
        let mut stripped = managed_secret("b", "pull", 11, &owner, &d);
        stripped.metadata.labels.as_mut().unwrap().remove("team");
        w.index.apply_managed(&Event::Apply(stripped));
        w.index.ledger.secret_listed(("a".into(), "pull".into()), Some("10"), d.digest);
        w.index.ledger.secret_listed(("b".into(), "pull".into()), Some("11"), d.digest);
        // b lost a label regcred sets: the whole Secret is applied.
        assert_eq!(writes(&plan(&w.index, &*c, Some(&d))), [("b", WriteKind::Apply)]);
        // A new token: a keeps its metadata and gets new data only.
        let d2 = desired(&*c, "p2");
        assert_eq!(writes(&plan(&w.index, &*c, Some(&d2))), [("a", WriteKind::Data), ("b", WriteKind::Apply)]);
        let patch = d2.data_patch();
        assert_eq!(patch.as_object().unwrap().keys().collect::<Vec<_>>(), ["data"]);
        let sent = patch["data"][DATA_KEY].as_str().unwrap();
        assert_eq!(sent, serde_json::to_value(ByteString(d2.data.clone())).unwrap());
    }

    #[test]
    fn an_unmanaged_secret_or_another_credentials_secret_is_a_conflict_and_never_written() {
        let mut w = World::new();
        w.namespace("a", &[]);
        w.namespace("b", &[]);
        let c = w.cluster_credential("c1", json!({"namespaces": ["a", "b"]}));
        let other = w.cluster_credential("c2", json!({"namespaces": ["b"]}));
        w.other_secret("a", "pull");
        let theirs = desired(&*other, "x");
        w.managed("b", "pull", 5, &other.owner_key(), &theirs);
        let p = plan(&w.index, &*c, Some(&desired(&*c, "p1")));
        assert!(p.writes.is_empty(), "{p:?}");
        let conflicts: Vec<(&str, &str)> = p.conflicts.iter().map(|(n, m)| (n.as_str(), m.as_str())).collect();
        assert_eq!(
            conflicts,
            [
                ("a", "Secret a/pull exists and is not managed by regcred; it is left alone"),
                ("b", "Secret b/pull is managed by regcred for ClusterRegistryCredential/c2"),
            ]
        );
        assert!(p.removals.is_empty(), "a conflict never removes someone else's Secret");
    }

    #[test]
    fn a_namespace_leaving_the_selector_loses_the_secret_and_its_service_account_entries() {
        let mut w = World::new();
        w.namespace("a", &[("pull", "yes")]);
        w.namespace("b", &[("pull", "yes")]);
        let c = w.cluster_credential("c1", json!({"namespaceSelector": {"matchLabels": {"pull": "yes"}}}));
        let d = desired(&*c, "p1");
        let owner = c.owner_key();
        for (ns, rv) in [("a", 10), ("b", 11)] {
            w.managed(ns, "pull", rv, &owner, &d);
            w.index.ledger.secret_listed((ns.into(), "pull".into()), Some(&rv.to_string()), d.digest);
        }
        w.account("b", "default", 3, &["theirs", "pull"]);
        w.account("b", "builder", 4, &["theirs"]);
        w.namespace("b", &[]);
        let p = plan(&w.index, &*c, Some(&d));
        assert_eq!(names(&p.in_place), ["a"]);
        assert_eq!(p.removals.len(), 1);
        let r = &p.removals[0];
        assert_eq!((r.namespace.as_str(), r.name.as_str(), r.uid.as_deref()), ("b", "pull", Some("uid-pull-11")));
        assert_eq!(r.accounts, ["default"], "only ServiceAccounts holding the entry are patched");
        // A terminating namespace takes its Secrets with it: no removal.
        w.terminate("b");
        assert!(plan(&w.index, &*c, Some(&d)).removals.is_empty());
    }

    #[test]
    fn service_account_passes_are_planned_where_selection_and_entries_disagree() {
        let mut w = World::new();
        w.namespace("a", &[]);
        w.namespace("b", &[]);
        w.namespace("c", &[]);
        let c = w.cluster_credential("c1", json!({"namespaces": ["a", "b", "c"]}));
        let d = desired(&*c, "p1");
        let owner = c.owner_key();
        for (ns, rv) in [("a", 10), ("b", 11)] {
            w.managed(ns, "pull", rv, &owner, &d);
            w.index.ledger.secret_listed((ns.into(), "pull".into()), Some(&rv.to_string()), d.digest);
        }
        w.account("a", "default", 1, &["pull"]);
        w.account("b", "default", 1, &[]);
        w.account("c", "default", 1, &[]);
        let p = plan(&w.index, &*c, Some(&d));
        assert_eq!(names(&p.accounts), ["b", "c"], "a is done; b lacks the entry; c gets the Secret first");
    }

    #[test]
    fn two_credentials_on_one_service_account_each_claim_their_own_entry() {
        let mut w = World::new();
        w.namespace("a", &[]);
        let one = w.cluster_credential("one", json!({"namespaces": ["a"], "secret": {"name": "pull-one"}}));
        let two = w.cluster_credential(
            "two",
            json!({"namespaces": ["a"], "secret": {"name": "pull-two"}, "serviceAccounts": {"names": ["default", "builder"]}}),
        );
        let (d1, d2) = (desired(&*one, "p1"), desired(&*two, "p2"));
        wrote(&w, "a", &one.owner_key(), &d1, 20);
        wrote(&w, "a", &two.owner_key(), &d2, 21);
        w.account("a", "default", 1, &["pull-one"]);
        w.account("a", "builder", 1, &[]);
        assert!(plan(&w.index, &*one, Some(&d1)).accounts.is_empty(), "one's entry is in place");
        assert_eq!(names(&plan(&w.index, &*two, Some(&d2)).accounts), ["a"]);
        let mut claims: Vec<(String, bool, bool)> = w
            .index
            .claims("a")
            .into_iter()
            .map(|c| {
                let sel = c.selector.as_ref();
                let views = w.index.accounts_in("a");
                let pick = |n: &str| views.iter().find(|v| v.name == n).unwrap().selected_by(sel);
                (c.secret, pick("default"), pick("builder"))
            })
            .collect();
        claims.sort();
        assert_eq!(claims, [("pull-one".into(), true, false), ("pull-two".into(), true, true)]);
    }

    #[test]
    fn a_cache_lagging_behind_regcreds_own_write_plans_no_second_write() {
        let mut w = World::new();
        w.namespace("a", &[]);
        let c = w.cluster_credential("c1", json!({"namespaces": ["a"]}));
        let d = desired(&*c, "p1");
        let owner = c.owner_key();
        // Created: the watch event has not arrived yet.
        wrote(&w, "a", &owner, &d, 30);
        assert_eq!(names(&plan(&w.index, &*c, Some(&d)).in_place), ["a"]);
        assert!(w.index.secret_in_place("a", "pull", &owner));
        assert!(!w.index.secret_in_place("a", "pull", "ClusterRegistryCredential/other"));
        // The watch bringing that write back wakes no one; a later version
        // (someone else's change) wakes the owner.
        let echo = managed_secret("a", "pull", 30, &owner, &d);
        assert_eq!(w.index.route(&secret_related(&echo), false), Routed::default());
        let changed = managed_secret("a", "pull", 32, &owner, &d);
        let routed = w.index.route(&secret_related(&changed), false);
        assert_eq!(routed.credentials, [CredentialRef::Cluster(ObjectRef::from_obj(&*c))]);
        // Updated: the cache still shows the older version.
        w.managed("a", "pull", 25, &owner, &d);
        assert_eq!(names(&plan(&w.index, &*c, Some(&d)).in_place), ["a"]);
        // A newer content than the one written is written.
        assert_eq!(writes(&plan(&w.index, &*c, Some(&desired(&*c, "p2")))), [("a", WriteKind::Data)]);
        // The Secret is deleted: routing wakes its owner, the ledger forgets
        // it, and it is created again.
        let gone = managed_secret("a", "pull", 31, &owner, &d);
        w.index.apply_managed(&Event::Delete(gone.clone()));
        let routed = w.index.route(&secret_related(&gone), true);
        assert_eq!(routed.credentials, [CredentialRef::Cluster(ObjectRef::from_obj(&*c))]);
        assert_eq!(writes(&plan(&w.index, &*c, Some(&d))), [("a", WriteKind::Create)]);
    }

    #[test]
    fn while_the_provider_fails_what_is_in_place_stays_and_counts() {
        let mut w = World::new();
        w.namespace("a", &[]);
        w.namespace("b", &[]);
        let c = w.cluster_credential("c1", json!({"namespaces": ["a", "b"]}));
        let d = desired(&*c, "p1");
        w.managed("a", "pull", 10, &c.owner_key(), &d);
        let p = plan(&w.index, &*c, None);
        assert_eq!(names(&p.in_place), ["a"]);
        assert!(p.writes.is_empty() && p.removals.is_empty(), "{p:?}");
    }

    #[test]
    fn deletion_removes_everything_with_delete_and_nothing_with_orphan() {
        let mut w = World::new();
        w.namespace("a", &[]);
        w.namespace("b", &[]);
        let orphan = w.cluster_credential("keep", json!({"namespaces": ["a", "b"], "deletionPolicy": "Orphan"}));
        let delete = w.cluster_credential("drop", json!({"namespaces": ["a", "b"], "secret": {"name": "pull-drop"}}));
        for c in [&orphan, &delete] {
            let d = desired(&**c, "p");
            w.managed("a", &d.name, 10, &c.owner_key(), &d);
            w.managed("b", &d.name, 11, &c.owner_key(), &d);
        }
        w.account("a", "default", 1, &["pull", "pull-drop"]);
        assert_eq!(plan_deletion(&w.index, &*orphan), Plan::default());
        let p = plan_deletion(&w.index, &*delete);
        let mut removed: Vec<(&str, &str, usize)> =
            p.removals.iter().map(|r| (r.namespace.as_str(), r.name.as_str(), r.accounts.len())).collect();
        removed.sort();
        assert_eq!(removed, [("a", "pull-drop", 1), ("b", "pull-drop", 0)]);
        assert!(p.writes.is_empty() && p.targets.is_empty());
    }

    #[test]
    fn a_registry_credential_targets_its_own_namespace_while_it_lives() {
        let mut w = World::new();
        w.namespace("team", &[]);
        w.namespace("other", &[]);
        let c = w.credential("team", "mine", json!({}));
        let d = desired(&*c, "p1");
        assert_eq!(writes(&plan(&w.index, &*c, Some(&d))), [("team", WriteKind::Create)]);
        w.terminate("team");
        assert!(plan(&w.index, &*c, Some(&d)).targets.is_empty());
    }

    #[test]
    fn changes_are_routed_to_the_credentials_they_concern() {
        let mut w = World::new();
        w.namespace("team", &[]);
        let everywhere = w.cluster_credential("everywhere", json!({"namespaces": ["team"]}));
        let elsewhere = w.cluster_credential("elsewhere", json!({"namespaces": ["nope"], "secret": {"name": "other"}}));
        let tenant = w.credential("team", "mine", json!({"secret": {"name": "tenant-pull"}}));
        let cluster = |c: &Arc<ClusterRegistryCredential>| CredentialRef::Cluster(ObjectRef::from_obj(&**c));
        let namespaced = CredentialRef::Namespaced(ObjectRef::from_obj(&*tenant));
        // Namespaces: every cluster credential looks again.
        let sorted = |mut v: Vec<CredentialRef>| {
            v.sort_by_key(|r| format!("{r:?}"));
            v
        };
        let routed = w.index.route(&Related::Namespace, false);
        assert_eq!(sorted(routed.credentials), sorted(vec![cluster(&elsewhere), cluster(&everywhere)]));
        // A ServiceAccount: its namespace goes to the writer, no credential.
        let sa = Related::ServiceAccount { namespace: "team".into(), name: "default".into() };
        assert_eq!(w.index.route(&sa, false), Routed { credentials: vec![], accounts: Some("team".into()) });
        // A source Secret: the tenant's own in its namespace; the cluster
        // credentials' in the cluster resource namespace.
        let source = |ns: &str| Related::Secret {
            namespace: ns.into(),
            name: "login".into(),
            owner: None,
            resource_version: None,
        };
        assert_eq!(w.index.route(&source("team"), false).credentials, std::slice::from_ref(&namespaced));
        let in_resource_ns = sorted(w.index.route(&source("regcred"), false).credentials);
        assert_eq!(in_resource_ns, sorted(vec![cluster(&elsewhere), cluster(&everywhere)]), "both read `login` there");
        // An unmanaged Secret taking a target's name wakes the credential
        // that targets the namespace, not the one that does not.
        let clash =
            Related::Secret { namespace: "team".into(), name: "pull".into(), owner: None, resource_version: None };
        assert_eq!(w.index.route(&clash, false).credentials, [cluster(&everywhere)]);
        assert_eq!(w.index.credentials_targeting("team").len(), 2, "the tenant and `everywhere`");
        assert_eq!(w.index.credentials_owned_by(&tenant.owner_key()), [namespaced]);
    }
}
