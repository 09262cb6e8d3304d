//! The index: everything regcred knows of the cluster, and no client.
//!
//! Watches feed it (namespaces, ServiceAccounts, the Secrets regcred manages
//! and metadata of all others, both credential kinds); regcred's own writes
//! feed its [`Ledger`], because a cache lags behind the writes that change
//! it. Everything the controller decides reads from here: which credentials
//! a change concerns ([`Index::route`]), which namespaces a credential
//! targets, and, in [`super::plan`], what a credential needs written. None
//! of it can call the API server, so all of it is unit-tested by applying
//! watch events and asserting the outcome.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};
use parking_lot::Mutex;

use super::cache::{ByNamespace, Cache, Pairs};
use super::kinds::CredentialKind;
use super::{MANAGED_BY, MANAGED_BY_LABEL, OWNER_ANNOTATION};
use crate::api::{
    ClusterRegistryCredential, ClusterSelector, CredentialSpec, RegistryCredential, ServiceAccountSelector,
};
use crate::targets::{cluster_selected, local_selected, service_account_selected};

/// `(namespace, name)` of a namespaced object.
pub type Key = (String, String);

/// What is cached of a namespace.
#[derive(Clone)]
pub struct NamespaceEntry {
    pub labels: BTreeMap<String, String>,
    pub terminating: bool,
}

impl NamespaceEntry {
    fn of(ns: &PartialObjectMeta<Namespace>) -> Self {
        NamespaceEntry {
            labels: ns.metadata.labels.clone().unwrap_or_default(),
            terminating: ns.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// What is cached of a ServiceAccount (a serviceAccountRef's annotations are
/// read when a token is requested, not from the cache).
#[derive(Clone)]
pub struct AccountEntry {
    resource_version: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub image_pull_secrets: Vec<String>,
}

impl AccountEntry {
    fn of(sa: &ServiceAccount) -> Self {
        AccountEntry {
            resource_version: rv_of(&sa.metadata),
            labels: sa.metadata.labels.clone().unwrap_or_default(),
            image_pull_secrets: sa.image_pull_secrets.iter().flatten().map(|r| r.name.clone()).collect(),
        }
    }
}

/// What is cached of a Secret regcred manages, from a metadata-only watch:
/// its owner, labels and annotations, and the uid to delete exactly it.
/// What its data holds is in the [`Ledger`], by resourceVersion.
#[derive(Clone)]
pub struct ManagedEntry {
    pub resource_version: Option<u64>,
    pub uid: Option<Box<str>>,
    pub labels: Pairs,
    pub annotations: Pairs,
}

impl ManagedEntry {
    fn of(secret: &PartialObjectMeta<Secret>) -> Self {
        ManagedEntry {
            resource_version: rv_of(&secret.metadata),
            uid: secret.metadata.uid.as_deref().map(Into::into),
            labels: Pairs::from_map(secret.metadata.labels.as_ref()),
            annotations: Pairs::from_map(secret.metadata.annotations.as_ref()),
        }
    }

    /// The credential that wrote it, from the owner annotation.
    pub fn owner(&self) -> Option<&str> {
        (self.labels.get(MANAGED_BY_LABEL) == Some(MANAGED_BY)).then(|| self.annotations.get(OWNER_ANNOTATION))?
    }
}

/// What is cached of a Secret regcred does not manage.
#[derive(Clone)]
pub struct SecretEntry {
    resource_version: Option<Box<str>>,
}

impl SecretEntry {
    fn of(secret: &PartialObjectMeta<Secret>) -> Self {
        SecretEntry { resource_version: secret.metadata.resource_version.as_deref().map(Into::into) }
    }
}

/// What one of regcred's own writes left on a Secret: the resourceVersion
/// and a SHA-256 digest of the pull secret at it (never the value); for
/// Secrets written by this process also a hash of everything written and of
/// the owner it was written for.
#[derive(Clone, Copy, Debug)]
pub struct OwnSecret {
    pub resource_version: u64,
    pub digest: [u8; 32],
    pub written: Option<Written>,
}

/// A write of this process: what it wrote and for whom.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    pub content: u64,
    pub owner: u64,
}

/// What regcred's own last patch left on a ServiceAccount.
#[derive(Clone, Debug)]
struct OwnAccount {
    resource_version: u64,
    entries: Vec<String>,
}

/// regcred's own writes, until the caches show them, and what the managed
/// Secrets hold. The managed Secrets are watched as metadata only, which
/// spares the apiserver from sending every written Secret back; what they
/// hold is known from one list at start and from each write, by
/// resourceVersion. A Secret someone else changed has a newer
/// resourceVersion, so its content counts as unknown and it is written
/// again.
#[derive(Default)]
pub struct Ledger {
    secrets: Mutex<ByNamespace<OwnSecret>>,
    accounts: Mutex<ByNamespace<OwnAccount>>,
}

impl Ledger {
    /// What a managed Secret held when it was listed.
    pub fn secret_listed(&self, key: Key, resource_version: Option<&str>, digest: [u8; 32]) {
        if let Some(resource_version) = resource_version.and_then(|v| v.parse().ok()) {
            self.secrets.lock().insert(&key.0, &key.1, OwnSecret { resource_version, digest, written: None });
        }
    }

    /// regcred wrote a Secret for `owner`.
    pub fn secret_written(
        &self,
        key: Key,
        owner: &str,
        content: u64,
        digest: [u8; 32],
        resource_version: Option<&str>,
    ) {
        if let Some(resource_version) = resource_version.and_then(|v| v.parse().ok()) {
            let written = Some(Written { content, owner: owner_hash(owner) });
            self.secrets.lock().insert(&key.0, &key.1, OwnSecret { resource_version, digest, written });
        }
    }

    /// A Secret was deleted.
    pub fn secret_gone(&self, key: &Key) {
        self.secrets.lock().remove(&key.0, &key.1);
    }

    /// Whether `resource_version` of the Secret is regcred's own last
    /// write of it for `owner`.
    pub fn is_own_write(&self, key: &Key, owner: Option<&str>, resource_version: Option<u64>) -> bool {
        let (Some(owner), Some(rv)) = (owner, resource_version) else { return false };
        self.secrets
            .lock()
            .get(&key.0, &key.1)
            .is_some_and(|o| o.resource_version == rv && o.written.is_some_and(|w| w.owner == owner_hash(owner)))
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<OwnSecret> {
        self.secrets.lock().get(namespace, name).copied()
    }

    /// regcred patched a ServiceAccount's `imagePullSecrets`.
    pub fn account_written(&self, key: Key, resource_version: Option<&str>, entries: Vec<String>) {
        if let Some(resource_version) = resource_version.and_then(|v| v.parse().ok()) {
            self.accounts.lock().insert(&key.0, &key.1, OwnAccount { resource_version, entries });
        }
    }

    /// The cache shows a ServiceAccount at `resource_version`: regcred's own
    /// patch of it, if no newer, is no longer needed to see its entries.
    pub fn account_seen(&self, namespace: &str, name: &str, resource_version: u64) {
        let mut accounts = self.accounts.lock();
        if accounts.get(namespace, name).is_some_and(|w| w.resource_version <= resource_version) {
            accounts.remove(namespace, name);
        }
    }

    /// A ServiceAccount was deleted.
    pub fn account_gone(&self, key: &Key) {
        self.accounts.lock().remove(&key.0, &key.1);
    }
}

pub fn owner_hash(owner: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    owner.hash(&mut h);
    h.finish()
}

/// A ServiceAccount as regcred sees it: the cache, or regcred's own last
/// patch if the cache has not caught up with it yet.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountView {
    pub name: String,
    pub resource_version: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub entries: Vec<String>,
}

impl AccountView {
    pub fn has(&self, secret: &str) -> bool {
        self.entries.iter().any(|e| e == secret)
    }

    pub fn selected_by(&self, selector: Option<&ServiceAccountSelector>) -> bool {
        service_account_selected(selector, &self.name, &self.labels)
    }
}

/// A credential's say over the ServiceAccounts of one namespace.
#[derive(Clone, Debug)]
pub struct Claim {
    pub secret: String,
    pub selector: Option<ServiceAccountSelector>,
}

/// A credential of either kind, to wake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialRef {
    Namespaced(ObjectRef<RegistryCredential>),
    Cluster(ObjectRef<ClusterRegistryCredential>),
}

/// A change to a related object, reduced to what routing needs.
#[derive(Clone, Debug)]
pub enum Related {
    Namespace,
    ServiceAccount { namespace: String, name: String },
    Secret { namespace: String, name: String, owner: Option<String>, resource_version: Option<u64> },
}

/// What a change asks for: credentials to reconcile, and a namespace whose
/// ServiceAccounts need a look.
#[derive(Debug, Default, PartialEq)]
pub struct Routed {
    pub credentials: Vec<CredentialRef>,
    pub accounts: Option<String>,
}

/// The stores of both credential kinds.
#[derive(Clone)]
pub struct Credentials {
    pub namespaced: Store<RegistryCredential>,
    pub cluster: Store<ClusterRegistryCredential>,
}

/// The cluster an index sees: the one regcred runs in, or a spoke of its
/// fleet, whose name and kubeconfig Secret labels decide which
/// ClusterRegistryCredentials write there.
pub enum Scope {
    Local,
    Spoke(Arc<SpokeIdentity>),
}

/// A spoke's name and the labels of its kubeconfig Secret (which can change
/// while it runs).
pub struct SpokeIdentity {
    pub name: String,
    pub labels: parking_lot::RwLock<BTreeMap<String, String>>,
}

/// See the module documentation.
pub struct Index {
    pub scope: Scope,
    pub namespaces: Cache<NamespaceEntry>,
    pub service_accounts: Cache<AccountEntry>,
    /// Secrets labelled as managed by regcred.
    pub managed: Cache<ManagedEntry>,
    /// Every other Secret (metadata only), to see name clashes and source
    /// Secret changes. The two watches split the Secrets by label, so each
    /// Secret reaches regcred once.
    pub others: Cache<SecretEntry>,
    pub ledger: Ledger,
    pub credentials: Credentials,
    /// Where ClusterRegistryCredentials read their sources.
    pub cluster_resource_namespace: Option<String>,
}

fn key_of<K: Resource>(obj: &K) -> Key {
    (obj.meta().namespace.clone().unwrap_or_default(), obj.meta().name.clone().unwrap_or_default())
}

fn rv_of(meta: &kube::api::ObjectMeta) -> Option<u64> {
    meta.resource_version.as_deref()?.parse().ok()
}

/// The owner annotation of an object regcred manages.
fn owner_of(meta: &kube::api::ObjectMeta) -> Option<String> {
    let managed = meta.labels.as_ref().and_then(|l| l.get(MANAGED_BY_LABEL)).is_some_and(|v| v == MANAGED_BY);
    if !managed {
        return None;
    }
    meta.annotations.as_ref().and_then(|a| a.get(OWNER_ANNOTATION)).cloned()
}

/// The change a watch event of a Secret makes, for routing.
pub fn secret_related<K: Resource>(s: &K) -> Related {
    Related::Secret {
        namespace: s.meta().namespace.clone().unwrap_or_default(),
        name: s.meta().name.clone().unwrap_or_default(),
        owner: owner_of(s.meta()),
        resource_version: s.meta().resource_version.as_deref().and_then(|v| v.parse().ok()),
    }
}

impl Index {
    pub fn new(credentials: Credentials, cluster_resource_namespace: Option<String>) -> Self {
        Index {
            scope: Scope::Local,
            namespaces: Cache::default(),
            service_accounts: Cache::default(),
            managed: Cache::default(),
            others: Cache::default(),
            ledger: Ledger::default(),
            credentials,
            cluster_resource_namespace,
        }
    }

    /// The index of a spoke: credentials are routed and planned only if
    /// they select it.
    pub fn spoke(credentials: Credentials, identity: Arc<SpokeIdentity>) -> Self {
        Index { scope: Scope::Spoke(identity), ..Index::new(credentials, None) }
    }

    /// Whether this is the cluster regcred runs in (where RegistryCredentials
    /// write).
    pub fn is_local(&self) -> bool {
        matches!(self.scope, Scope::Local)
    }

    /// Whether a ClusterRegistryCredential with this cluster selection writes
    /// to this cluster.
    pub fn selected_by(&self, clusters: Option<&ClusterSelector>) -> bool {
        match &self.scope {
            Scope::Local => local_selected(clusters),
            Scope::Spoke(id) => cluster_selected(clusters, &id.name, &id.labels.read()),
        }
    }

    pub fn apply_namespace(&self, event: &Event<PartialObjectMeta<Namespace>>) {
        self.namespaces.apply(event, key_of, NamespaceEntry::of);
    }

    pub fn apply_account(&self, event: &Event<ServiceAccount>) {
        self.service_accounts.apply(event, key_of, AccountEntry::of);
        if let Event::Apply(sa) | Event::InitApply(sa) = event
            && let (Some(namespace), Some(name), Some(rv)) =
                (sa.metadata.namespace.as_deref(), sa.metadata.name.as_deref(), rv_of(&sa.metadata))
        {
            self.ledger.account_seen(namespace, name, rv);
        }
    }

    pub fn apply_managed(&self, event: &Event<PartialObjectMeta<Secret>>) {
        self.managed.apply(event, key_of, ManagedEntry::of);
    }

    pub fn apply_other(&self, event: &Event<PartialObjectMeta<Secret>>) {
        self.others.apply(event, key_of, SecretEntry::of);
    }

    /// Waits until every cache holds its first complete list.
    pub async fn wait_until_ready(&self) {
        self.namespaces.wait_until_ready().await;
        self.service_accounts.wait_until_ready().await;
        self.managed.wait_until_ready().await;
        self.others.wait_until_ready().await;
    }

    /// Labels of a namespace, or `None` if it does not exist or is terminating.
    pub fn live_namespace_labels(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces.with("", name, |ns| (!ns.terminating).then(|| ns.labels.clone())).flatten()
    }

    /// The resourceVersion of any Secret in the caches.
    pub fn secret_resource_version(&self, namespace: &str, name: &str) -> Option<String> {
        self.others
            .with(namespace, name, |s| s.resource_version.as_deref().map(String::from))
            .or_else(|| self.managed.with(namespace, name, |s| s.resource_version.map(|rv| rv.to_string())))
            .flatten()
    }

    /// The digest of what a managed Secret holds at `resource_version`, if
    /// known.
    pub fn content_at(&self, namespace: &str, name: &str, resource_version: Option<u64>) -> Option<[u8; 32]> {
        let own = self.ledger.secret(namespace, name)?;
        (Some(own.resource_version) == resource_version).then_some(own.digest)
    }

    /// Whether `owner`'s pull Secret `name` is in `namespace`: in the cache,
    /// or just written and not in the cache yet.
    pub fn secret_in_place(&self, namespace: &str, name: &str, owner: &str) -> bool {
        let cached = self.managed.with(namespace, name, |s| (s.resource_version, s.owner() == Some(owner)));
        if let Some(own) = self.ledger.secret(namespace, name)
            && let Some(w) = own.written
            && cached.is_none_or(|(rv, _)| Some(own.resource_version) > rv)
        {
            return w.owner == owner_hash(owner);
        }
        cached.is_some_and(|(_, ours)| ours)
    }

    /// Whether a ServiceAccount of `namespace` needs a pass of the writer
    /// for Secret `secret`: selected and without the entry, or not selected
    /// and listing it. Reads the caches in place: the plan asks this of
    /// every target namespace.
    pub fn accounts_need_pass(&self, namespace: &str, secret: &str, selector: Option<&ServiceAccountSelector>) -> bool {
        self.service_accounts.with_namespace(namespace, |accounts| {
            let written = self.ledger.accounts.lock();
            let mut needing = accounts.filter(|(name, sa)| {
                let entries = match written.get(namespace, name) {
                    Some(w) if Some(w.resource_version) > sa.resource_version => &w.entries,
                    _ => &sa.image_pull_secrets,
                };
                service_account_selected(selector, name, &sa.labels) != entries.iter().any(|e| e == secret)
            });
            needing.next().is_some()
        })
    }

    /// The ServiceAccounts of a namespace, newest known version of each.
    pub fn accounts_in(&self, namespace: &str) -> Vec<AccountView> {
        let cached = self.service_accounts.in_namespace(namespace);
        let written = self.ledger.accounts.lock();
        cached
            .into_iter()
            .map(|(name, sa)| {
                let mut view = AccountView {
                    resource_version: sa.resource_version.map(|rv| rv.to_string()),
                    labels: sa.labels,
                    entries: sa.image_pull_secrets,
                    name,
                };
                if let Some(w) = written.get(namespace, &view.name)
                    && Some(w.resource_version) > sa.resource_version
                {
                    view.resource_version = Some(w.resource_version.to_string());
                    view.entries = w.entries.clone();
                }
                view
            })
            .collect()
    }

    /// Credentials that target `namespace`, are not being deleted, and whose
    /// pull Secret is in place there: their say over its ServiceAccounts.
    pub fn claims(&self, namespace: &str) -> Vec<Claim> {
        let claim = |c: &dyn ClaimSource| {
            if c.deleting() || !c.targets(self, namespace) {
                return None;
            }
            let spec = c.spec();
            self.secret_in_place(namespace, &spec.secret.name, &c.owner())
                .then(|| Claim { secret: spec.secret.name.clone(), selector: spec.service_accounts.clone() })
        };
        let mut out = Vec::new();
        for c in self.credentials.namespaced.state() {
            out.extend(claim(&*c));
        }
        for c in self.credentials.cluster.state() {
            out.extend(claim(&*c));
        }
        out
    }

    /// Which credentials a change of a related object concerns. A deleted
    /// object leaves the ledger here too.
    pub fn route(&self, change: &Related, deleted: bool) -> Routed {
        let mut routed = Routed::default();
        match change {
            // Selection depends on namespace labels and phase: every cluster
            // credential re-evaluates (in memory, no API calls).
            Related::Namespace => {
                routed.credentials = self.credentials.cluster.state().iter().map(cluster_ref).collect();
            }
            // The ServiceAccount writer handles every credential at once.
            Related::ServiceAccount { namespace, name } => {
                if deleted {
                    self.ledger.account_gone(&(namespace.clone(), name.clone()));
                }
                routed.accounts = Some(namespace.clone());
            }
            Related::Secret { namespace, name, owner, resource_version } => {
                let key = (namespace.clone(), name.clone());
                if deleted {
                    self.ledger.secret_gone(&key);
                }
                // The watch bringing back what regcred itself just wrote
                // wakes no one for it: the reconcile that wrote it counted it.
                let echo = !deleted && self.ledger.is_own_write(&key, owner.as_deref(), *resource_version);
                let interested = |spec: &CredentialSpec| {
                    spec.secret.name == *name || spec.provider.secret_names().contains(&&**name)
                };
                for c in self.credentials.namespaced.state() {
                    let mine = owner.as_deref() == Some(c.owner_key().as_str());
                    if mine && echo {
                        continue;
                    }
                    if mine || (c.namespace().as_deref() == Some(namespace.as_str()) && interested(c.credential())) {
                        routed.credentials.push(namespaced_ref(&c));
                    }
                }
                let source_ns = self.cluster_resource_namespace.as_deref();
                for c in self.credentials.cluster.state() {
                    let spec = c.credential();
                    let mine = owner.as_deref() == Some(c.owner_key().as_str());
                    if mine && echo {
                        continue;
                    }
                    let in_source_ns = source_ns == Some(namespace.as_str());
                    // Its fleet carrier deleted: written again at once.
                    let carrier = deleted && in_source_ns && *name == super::fleet::carrier_name(&c.name_any());
                    let source = (in_source_ns && spec.provider.secret_names().contains(&&**name)) || carrier;
                    let target = spec.secret.name == *name && c.targets_namespace(self, namespace);
                    if mine || source || target {
                        routed.credentials.push(cluster_ref(&c));
                    }
                }
            }
        }
        routed
    }

    /// Credentials whose owner key is `owner`.
    pub fn credentials_owned_by(&self, owner: &str) -> Vec<CredentialRef> {
        self.select(|c| c.owner() == owner)
    }

    /// Credentials with injection enabled.
    pub fn credentials_injecting(&self) -> Vec<CredentialRef> {
        self.select(|c| c.spec().injection_enabled())
    }

    /// Every credential that targets `namespace`.
    pub fn credentials_targeting(&self, namespace: &str) -> Vec<CredentialRef> {
        self.select(|c| c.targets(self, namespace))
    }

    fn select(&self, keep: impl Fn(&dyn ClaimSource) -> bool) -> Vec<CredentialRef> {
        let namespaced = self.credentials.namespaced.state();
        let cluster = self.credentials.cluster.state();
        let namespaced = namespaced.iter().filter(|c| keep(&***c)).map(|c| namespaced_ref(c));
        namespaced.chain(cluster.iter().filter(|c| keep(&***c)).map(cluster_ref)).collect()
    }
}

fn namespaced_ref(c: &RegistryCredential) -> CredentialRef {
    CredentialRef::Namespaced(ObjectRef::from_obj(c))
}

fn cluster_ref(c: &std::sync::Arc<ClusterRegistryCredential>) -> CredentialRef {
    CredentialRef::Cluster(ObjectRef::from_obj(&**c))
}

/// Either kind, as routing and claims see it (object-safe).
trait ClaimSource {
    fn spec(&self) -> &CredentialSpec;
    fn owner(&self) -> String;
    fn deleting(&self) -> bool;
    fn targets(&self, index: &Index, namespace: &str) -> bool;
}

impl<K: CredentialKind> ClaimSource for K {
    fn spec(&self) -> &CredentialSpec {
        self.credential()
    }
    fn owner(&self) -> String {
        self.owner_key()
    }
    fn deleting(&self) -> bool {
        self.meta().deletion_timestamp.is_some()
    }
    fn targets(&self, index: &Index, namespace: &str) -> bool {
        self.targets_namespace(index, namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_account_patches_are_kept_only_until_the_cache_shows_them() {
        let ledger = Ledger::default();
        let key = || ("a".to_string(), "default".to_string());
        ledger.account_written(key(), Some("10"), vec!["pull".into()]);
        ledger.account_seen("a", "default", 9);
        assert!(ledger.accounts.lock().get("a", "default").is_some(), "an older version in the cache needs it");
        ledger.account_seen("a", "default", 10);
        assert!(ledger.accounts.lock().get("a", "default").is_none(), "the cache has caught up");
        ledger.account_written(key(), Some("12"), vec![]);
        ledger.account_seen("a", "default", 14);
        assert!(ledger.accounts.lock().get("a", "default").is_none(), "a newer version supersedes it");
    }
}
