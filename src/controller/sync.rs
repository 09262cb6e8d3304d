//! Writing pull Secrets and ServiceAccount entries, and removing them.
//!
//! Everything here compares the cached state with the desired state first and
//! writes only the difference, with a bounded number of writes in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use sha2::{Digest, Sha256};

use super::accounts::{accounts_in, remove_entry};
use super::cache::Pairs;
use super::{Context, FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, ManagedEntry, OWNER_ANNOTATION, data_digest};
use crate::api::{CredentialSpec, TargetFailure};
use crate::provider::Minted;
use crate::reasons;
use crate::render::dockerconfigjson;

pub(super) const SECRET_TYPE: &str = "kubernetes.io/dockerconfigjson";
pub(super) const DATA_KEY: &str = ".dockerconfigjson";

/// The pull Secret a credential should have in every target namespace.
pub struct DesiredSecret {
    pub name: String,
    data: Vec<u8>,
    /// What the cache holds in place of `data`.
    digest: [u8; 32],
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
    /// Namespaces where this reconcile created the Secret (first served).
    pub created_in: Vec<String>,
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

enum Plan {
    InSync,
    Write { exists: bool },
    Conflict(String),
}

fn plan_secret(ctx: &Context, owner: &str, desired: &DesiredSecret, namespace: &str) -> Plan {
    let written = ctx.written(&(namespace.into(), desired.name.clone()));
    let ours_in_flight = written.is_some_and(|w| w.content == desired.hash);
    let not_ours = || {
        Plan::Conflict(format!(
            "Secret {namespace}/{} exists and is not managed by regcred; it is left alone",
            desired.name
        ))
    };
    if ctx.other_secrets.with(namespace, &desired.name, |_| ()).is_some() {
        return not_ours();
    }
    let cached = ctx.managed_secrets.with(namespace, &desired.name, |s| {
        (s.owner().map(String::from), desired.metadata_matches(s), s.resource_version)
    });
    // The data counts only if it is known at the cached resourceVersion.
    let cached = cached.map(|(owner, metadata_matches, rv)| {
        let data_matches = ctx.content_at(namespace, &desired.name, rv) == Some(desired.digest);
        (owner, metadata_matches && data_matches, rv)
    });
    match cached {
        // Not in the cache: absent, or just written by us and not seen yet.
        None if ours_in_flight => Plan::InSync,
        None => Plan::Write { exists: false },
        Some((Some(o), _, _)) if o != owner => {
            Plan::Conflict(format!("Secret {namespace}/{} is managed by regcred for {o}", desired.name))
        }
        Some((None, _, _)) => not_ours(),
        Some((_, true, _)) => Plan::InSync,
        // The cache still shows an older version than our own last write.
        Some((_, false, rv)) if ours_in_flight && written.is_some_and(|w| Some(w.resource_version) > rv) => {
            Plan::InSync
        }
        Some(_) => Plan::Write { exists: true },
    }
}

enum Outcome {
    Synced,
    Created,
    Updated,
    /// The namespace went away or is terminating.
    Gone,
    /// Someone created it between the cache and the write: look again.
    Raced,
    Conflict(String),
    Failed(String),
}

/// Writes the Secret wherever it is missing or differs.
pub async fn write_secrets(
    ctx: &Arc<Context>,
    owner: &str,
    desired: &Arc<DesiredSecret>,
    targets: &BTreeSet<String>,
    report: &mut Report,
) {
    let mut outcomes = Vec::new();
    let mut writes = Vec::new();
    for namespace in targets {
        match plan_secret(ctx, owner, desired, namespace) {
            Plan::InSync => outcomes.push((namespace.clone(), Outcome::Synced)),
            Plan::Conflict(msg) => outcomes.push((namespace.clone(), Outcome::Conflict(msg))),
            // The namespace's ServiceAccounts wait until the write is done.
            Plan::Write { exists } => writes.push((namespace.clone(), exists, ctx.accounts.begin_write(namespace))),
        }
    }
    // Each write is a task of its own, so encoding requests and decoding
    // answers spreads over every runtime thread.
    let written: Vec<(String, Outcome)> = futures::stream::iter(writes)
        .map(|(namespace, exists, pending)| {
            let (ctx, owner, desired) = (ctx.clone(), owner.to_string(), desired.clone());
            let task = tokio::spawn(async move {
                let outcome = write_secret(&ctx, &owner, &desired, &namespace, exists).await;
                if matches!(outcome, Outcome::Created) {
                    ctx.accounts.enqueue(&namespace);
                }
                drop(pending);
                (namespace, outcome)
            });
            async move { task.await.expect("a Secret write does not panic") }
        })
        .buffer_unordered(ctx.settings.write_concurrency.max(1))
        .collect()
        .await;
    outcomes.extend(written);
    for (namespace, outcome) in outcomes {
        match outcome {
            Outcome::Synced => {
                report.synced.insert(namespace);
            }
            Outcome::Created => {
                report.created += 1;
                report.created_in.push(namespace.clone());
                report.synced.insert(namespace);
            }
            Outcome::Updated => {
                report.updated += 1;
                report.synced.insert(namespace);
            }
            Outcome::Gone => {}
            Outcome::Raced => report.retry = true,
            Outcome::Conflict(msg) => report.fail(&namespace, reasons::SECRET_CONFLICT, msg),
            Outcome::Failed(msg) => {
                report.retry = true;
                report.fail(&namespace, reasons::WRITE_FAILED, msg);
            }
        }
    }
}

/// Creates a missing Secret with a plain create (the cheapest write: a
/// Secret created in the meantime by someone else makes it fail instead of
/// being taken over), and updates one of regcred's own by server-side apply,
/// forced, so fields another manager changed are taken back.
async fn write_secret(ctx: &Context, owner: &str, desired: &DesiredSecret, namespace: &str, exists: bool) -> Outcome {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let result = if exists {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&desired.name, &params, &Patch::Apply(desired.object(namespace))).await
    } else {
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        api.create(&params, &desired.object(namespace)).await
    };
    match result {
        Ok(written) => {
            ctx.remember_content(
                (namespace.into(), desired.name.clone()),
                written.metadata.resource_version.as_deref(),
                desired.digest,
            );
            ctx.remember_written(
                (namespace.into(), desired.name.clone()),
                owner,
                desired.hash,
                written.metadata.resource_version.as_deref(),
            );
            if exists { Outcome::Updated } else { Outcome::Created }
        }
        Err(kube::Error::Api(e)) if e.code == 409 && !exists => Outcome::Raced,
        // Still throttled after the client's own retries (which honour
        // Retry-After): not a failure of the credential, try again soon.
        Err(kube::Error::Api(e)) if e.code == 429 => Outcome::Raced,
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
        if ctx.managed_secrets.with(namespace, name, |s| s.owner() == Some(owner)).unwrap_or(false) {
            report.synced.insert(namespace.clone());
        }
    }
}

/// Secrets this credential wrote that are no longer wanted: the namespace left
/// the selection, or the Secret name changed. `keep` returns whether a
/// `(namespace, name)` is still wanted.
pub async fn remove_secrets(ctx: &Arc<Context>, owner: &str, keep: impl Fn(&str, &str) -> bool, report: &mut Report) {
    let stale: Vec<(String, String, Option<Box<str>>)> = ctx.managed_secrets.with_all(|all| {
        all.filter(|(ns, name, s)| s.owner() == Some(owner) && !keep(ns, name))
            .map(|(ns, name, s)| (ns.to_string(), name.to_string(), s.uid.clone()))
            .collect()
    });
    // A terminating namespace takes its Secrets with it.
    let stale: Vec<_> = stale.into_iter().filter(|(ns, _, _)| ctx.live_namespace_labels(ns).is_some()).collect();
    let results: Vec<(String, Result<(), String>)> = futures::stream::iter(stale)
        .map(|(ns, name, uid)| async move {
            let result = remove_secret(ctx, uid, &ns, &name).await;
            (ns, result)
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

async fn remove_secret(ctx: &Context, uid: Option<Box<str>>, ns: &str, name: &str) -> Result<(), String> {
    // First the ServiceAccount entries, so no ServiceAccount points at a
    // missing Secret.
    for sa in accounts_in(ctx, ns) {
        let sa_name = sa.name.clone();
        remove_entry(ctx, ns, sa, name)
            .await
            .map_err(|e| format!("removing {name} from ServiceAccount {ns}/{sa_name}: {e}"))?;
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let params = DeleteParams {
        // Never delete a Secret that replaced ours in the meantime.
        preconditions: Some(Preconditions { uid: uid.map(String::from), resource_version: None }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => return Err(format!("deleting Secret {ns}/{name}: {e}")),
    }
    ctx.forget_written(&(ns.into(), name.into()));
    Ok(())
}

/// Asks the ServiceAccount writer to look at every synced namespace where a
/// selected ServiceAccount lacks the pull Secret or an unselected one has it,
/// and reports the namespaces where its last patch failed.
pub fn sync_service_accounts(ctx: &Context, spec: &CredentialSpec, report: &mut Report) {
    let secret = spec.secret.name.as_str();
    let selector = spec.service_accounts.as_ref();
    let mut failed = Vec::new();
    for ns in &report.synced {
        if accounts_in(ctx, ns).iter().any(|sa| sa.selected_by(selector) != sa.has(secret)) {
            ctx.accounts.enqueue(ns);
        }
        if let Some(message) = ctx.accounts.failure(ns) {
            failed.push((ns.clone(), message));
        }
    }
    for (ns, message) in failed {
        report.retry = true;
        report.fail(&ns, reasons::WRITE_FAILED, message);
    }
}
