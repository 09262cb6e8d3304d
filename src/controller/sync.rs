//! Writing pull Secrets and ServiceAccount entries, and removing them.
//!
//! Everything here compares the cached state with the desired state first and
//! writes only the difference, with a bounded number of writes in flight.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{LocalObjectReference, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Context, FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, OWNER_ANNOTATION, WrittenKey, owner_of};
use crate::api::{CredentialSpec, TargetFailure};
use crate::provider::Minted;
use crate::reasons;
use crate::render::dockerconfigjson;
use crate::targets::service_account_selected;

const SECRET_TYPE: &str = "kubernetes.io/dockerconfigjson";
const DATA_KEY: &str = ".dockerconfigjson";

/// The pull Secret a credential should have in every target namespace.
pub struct DesiredSecret {
    pub name: String,
    data: Vec<u8>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    /// Hash of all of the above, to recognise regcred's own writes.
    hash: u64,
}

impl DesiredSecret {
    pub fn new(spec: &CredentialSpec, owner: &str, minted: &Minted) -> Self {
        let mut labels = spec.secret.labels.clone().unwrap_or_default();
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        let mut annotations = spec.secret.annotations.clone().unwrap_or_default();
        annotations.insert(OWNER_ANNOTATION.into(), owner.into());
        let data = dockerconfigjson(&minted.auths);
        let mut h = Sha256::new();
        h.update(&data);
        for (k, v) in labels.iter().chain(annotations.iter()) {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        let hash = u64::from_be_bytes(h.finalize()[..8].try_into().expect("sha256 is 32 bytes"));
        DesiredSecret { name: spec.secret.name.clone(), data, labels, annotations, hash }
    }

    /// Whether an existing Secret already holds this content. Labels and
    /// annotations others added are left alone and do not count.
    fn matches(&self, s: &Secret) -> bool {
        let subset = |want: &BTreeMap<String, String>, have: Option<&BTreeMap<String, String>>| {
            want.iter().all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
        };
        s.type_.as_deref() == Some(SECRET_TYPE)
            && s.data.as_ref().and_then(|d| d.get(DATA_KEY)).is_some_and(|b| b.0 == self.data)
            && subset(&self.labels, s.metadata.labels.as_ref())
            && subset(&self.annotations, s.metadata.annotations.as_ref())
    }

    fn object(&self, namespace: &str) -> Secret {
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

/// What one reconcile did and found.
#[derive(Default, Debug)]
pub struct Report {
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    pub service_accounts_patched: usize,
    /// Target namespaces holding this credential's current Secret.
    pub synced: BTreeSet<String>,
    pub failed: Vec<TargetFailure>,
    /// A transient failure happened: try again soon.
    pub retry: bool,
}

impl Report {
    fn fail(&mut self, namespace: &str, reason: &str, message: String) {
        self.failed.push(TargetFailure { namespace: namespace.into(), reason: reason.into(), message: Some(message) });
    }
}

fn rv_number(obj: &impl Resource) -> Option<u64> {
    obj.meta().resource_version.as_deref()?.parse().ok()
}

enum Plan {
    InSync,
    Write { exists: bool },
    Conflict(String),
}

fn plan_secret(ctx: &Context, owner: &str, desired: &DesiredSecret, namespace: &str) -> Plan {
    let key = ObjectRef::<Secret>::new(&desired.name).within(namespace);
    let meta_key = ObjectRef::<kube::api::PartialObjectMeta<Secret>>::new(&desired.name).within(namespace);
    let written = ctx.written(&WrittenKey::Secret(namespace.into(), desired.name.clone()));
    let ours_in_flight = written.is_some_and(|w| w.content == desired.hash);
    let Some(meta) = ctx.all_secrets.get(&meta_key) else {
        // Not in the cache: absent, or just written by us and not seen yet.
        return if ours_in_flight { Plan::InSync } else { Plan::Write { exists: false } };
    };
    match owner_of(&meta.metadata) {
        Some(o) if o == owner => {}
        Some(other) => {
            return Plan::Conflict(format!("Secret {namespace}/{} is managed by regcred for {other}", desired.name));
        }
        None => {
            return Plan::Conflict(format!(
                "Secret {namespace}/{} exists and is not managed by regcred; it is left alone",
                desired.name
            ));
        }
    }
    match ctx.managed_secrets.get(&key) {
        Some(actual) if desired.matches(&actual) => Plan::InSync,
        // The cache still shows an older version than our own last write.
        Some(actual) if ours_in_flight && written.is_some_and(|w| Some(w.resource_version) > rv_number(&*actual)) => {
            Plan::InSync
        }
        None if ours_in_flight => Plan::InSync,
        _ => Plan::Write { exists: true },
    }
}

enum Outcome {
    Synced,
    Created,
    Updated,
    /// The namespace went away or is terminating.
    Gone,
    Conflict(String),
    Failed(String),
}

/// Writes the Secret wherever it is missing or differs.
pub async fn write_secrets(
    ctx: &Arc<Context>,
    owner: &str,
    desired: &DesiredSecret,
    targets: &BTreeSet<String>,
    report: &mut Report,
) {
    let outcomes: Vec<(String, Outcome)> = futures::stream::iter(targets.iter().cloned())
        .map(|namespace| async move {
            let outcome = match plan_secret(ctx, owner, desired, &namespace) {
                Plan::InSync => Outcome::Synced,
                Plan::Conflict(msg) => Outcome::Conflict(msg),
                Plan::Write { exists } => apply_secret(ctx, desired, &namespace, exists).await,
            };
            (namespace, outcome)
        })
        .buffer_unordered(ctx.settings.write_concurrency.max(1))
        .collect()
        .await;
    for (namespace, outcome) in outcomes {
        match outcome {
            Outcome::Synced => {
                report.synced.insert(namespace);
            }
            Outcome::Created => {
                report.created += 1;
                report.synced.insert(namespace);
            }
            Outcome::Updated => {
                report.updated += 1;
                report.synced.insert(namespace);
            }
            Outcome::Gone => {}
            Outcome::Conflict(msg) => report.fail(&namespace, reasons::SECRET_CONFLICT, msg),
            Outcome::Failed(msg) => {
                report.retry = true;
                report.fail(&namespace, reasons::WRITE_FAILED, msg);
            }
        }
    }
}

async fn apply_secret(ctx: &Context, desired: &DesiredSecret, namespace: &str, exists: bool) -> Outcome {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    // Force only over a Secret that is ours (someone edited it: take it
    // back). Creating without force makes an apply over a Secret someone
    // else just created fail with a conflict instead of taking it over.
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.force = exists;
    match api.patch(&desired.name, &params, &Patch::Apply(desired.object(namespace))).await {
        Ok(written) => {
            ctx.remember_written(
                WrittenKey::Secret(namespace.into(), desired.name.clone()),
                desired.hash,
                written.metadata.resource_version.as_deref(),
            );
            if exists { Outcome::Updated } else { Outcome::Created }
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Outcome::Conflict(format!(
            "Secret {namespace}/{} exists and is owned by another field manager; it is left alone",
            desired.name
        )),
        Err(kube::Error::Api(e)) if e.code == 422 && !exists => Outcome::Conflict(format!(
            "Secret {namespace}/{} exists with another type and is not managed by regcred",
            desired.name
        )),
        Err(kube::Error::Api(e))
            if (e.code == 403 || e.code == 404) && ctx.live_namespace_labels(namespace).is_none() =>
        {
            Outcome::Gone
        }
        Err(e) => Outcome::Failed(format!("writing Secret {namespace}/{}: {e}", desired.name)),
    }
}

/// Counts where the Secret is already current, without writing (used while
/// the provider fails: what is in place stays).
pub fn count_in_place(ctx: &Context, owner: &str, name: &str, targets: &BTreeSet<String>, report: &mut Report) {
    for namespace in targets {
        let key = ObjectRef::new(name).within(namespace);
        if ctx.managed_secrets.get(&key).is_some_and(|s| owner_of(&s.metadata).as_deref() == Some(owner)) {
            report.synced.insert(namespace.clone());
        }
    }
}

/// Secrets this credential wrote that are no longer wanted: the namespace left
/// the selection, or the Secret name changed. `keep` returns whether a
/// `(namespace, name)` is still wanted.
pub async fn remove_secrets(ctx: &Arc<Context>, owner: &str, keep: impl Fn(&str, &str) -> bool, report: &mut Report) {
    let stale: Vec<Arc<Secret>> = ctx
        .managed_secrets
        .state()
        .into_iter()
        .filter(|s| owner_of(&s.metadata).as_deref() == Some(owner))
        .filter(|s| !keep(&s.namespace().unwrap_or_default(), &s.name_any()))
        // A terminating namespace takes its Secrets with it.
        .filter(|s| ctx.live_namespace_labels(&s.namespace().unwrap_or_default()).is_some())
        .collect();
    let results: Vec<(String, Result<(), String>)> = futures::stream::iter(stale)
        .map(|secret| async move {
            let ns = secret.namespace().unwrap_or_default();
            let name = secret.name_any();
            (ns.clone(), remove_secret(ctx, &secret, &ns, &name).await)
        })
        .buffer_unordered(ctx.settings.write_concurrency.max(1))
        .collect()
        .await;
    for (ns, r) in results {
        match r {
            Ok(()) => report.deleted += 1,
            Err(msg) => {
                report.retry = true;
                report.fail(&ns, reasons::WRITE_FAILED, msg);
            }
        }
    }
}

async fn remove_secret(ctx: &Context, secret: &Secret, ns: &str, name: &str) -> Result<(), String> {
    // First the ServiceAccount entries, so no ServiceAccount points at a
    // missing Secret.
    for sa in service_accounts_in(ctx, ns) {
        if has_entry(&sa, name) {
            patch_entry(ctx, &sa, name, false).await.map_err(|e| e.to_string())?;
        }
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let params = DeleteParams {
        // Never delete a Secret that replaced ours in the meantime.
        preconditions: Some(Preconditions { uid: secret.metadata.uid.clone(), resource_version: None }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => return Err(format!("deleting Secret {ns}/{name}: {e}")),
    }
    ctx.forget_written(&WrittenKey::Secret(ns.into(), name.into()));
    Ok(())
}

fn service_accounts_in(ctx: &Context, namespace: &str) -> Vec<Arc<ServiceAccount>> {
    ctx.service_accounts.state().into_iter().filter(|sa| sa.namespace().as_deref() == Some(namespace)).collect()
}

fn has_entry(sa: &ServiceAccount, secret: &str) -> bool {
    sa.image_pull_secrets.iter().flatten().any(|r| r.name == secret)
}

/// Adds or removes one `imagePullSecrets` entry, leaving the others as they
/// are. The patch carries the resourceVersion it was computed from, so a
/// concurrent change makes it fail (409) instead of dropping someone's entry.
async fn patch_entry(ctx: &Context, sa: &ServiceAccount, secret: &str, add: bool) -> Result<(), kube::Error> {
    let mut entries: Vec<LocalObjectReference> = sa.image_pull_secrets.clone().unwrap_or_default();
    if add {
        entries.push(LocalObjectReference { name: secret.into() });
    } else {
        entries.retain(|r| r.name != secret);
    }
    let ns = sa.namespace().unwrap_or_default();
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "metadata": {"resourceVersion": sa.metadata.resource_version},
        "imagePullSecrets": entries,
    });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let written = api.patch(&sa.name_any(), &params, &Patch::Merge(&patch)).await?;
    ctx.remember_written(
        WrittenKey::ServiceAccount(ns, sa.name_any()),
        0,
        written.metadata.resource_version.as_deref(),
    );
    Ok(())
}

/// Puts the Secret into the `imagePullSecrets` of the selected
/// ServiceAccounts of every synced namespace, and takes it out of the others.
pub async fn sync_service_accounts(ctx: &Arc<Context>, spec: &CredentialSpec, report: &mut Report) {
    let secret = spec.secret.name.as_str();
    let selector = spec.service_accounts.as_ref();
    let mut by_namespace: HashMap<String, Vec<Arc<ServiceAccount>>> = HashMap::new();
    for sa in ctx.service_accounts.state() {
        let ns = sa.namespace().unwrap_or_default();
        if report.synced.contains(&ns) {
            by_namespace.entry(ns).or_default().push(sa);
        }
    }
    let work: Vec<(Arc<ServiceAccount>, bool)> = by_namespace
        .into_values()
        .flatten()
        .filter_map(|sa| {
            let empty = BTreeMap::new();
            let want =
                service_account_selected(selector, &sa.name_any(), sa.metadata.labels.as_ref().unwrap_or(&empty));
            if want == has_entry(&sa, secret) {
                return None;
            }
            // The cache may not show our last patch yet.
            let written = ctx.written(&WrittenKey::ServiceAccount(sa.namespace().unwrap_or_default(), sa.name_any()));
            if written.is_some_and(|w| Some(w.resource_version) > rv_number(&*sa)) {
                return None;
            }
            Some((sa, want))
        })
        .collect();
    let results: Vec<(String, String, Result<(), kube::Error>)> = futures::stream::iter(work)
        .map(|(sa, add)| async move {
            let r = patch_entry(ctx, &sa, secret, add).await;
            (sa.namespace().unwrap_or_default(), sa.name_any(), r)
        })
        .buffer_unordered(ctx.settings.write_concurrency.max(1))
        .collect()
        .await;
    for (ns, name, r) in results {
        match r {
            Ok(()) => report.service_accounts_patched += 1,
            // Changed or deleted since it was cached: the watch brings the
            // new version and another reconcile.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => report.retry = true,
            Err(e) => {
                report.retry = true;
                report.fail(&ns, reasons::WRITE_FAILED, format!("patching ServiceAccount {ns}/{name}: {e}"));
            }
        }
    }
}
