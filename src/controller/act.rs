//! Acting on a [`Plan`]: Secret writes and removals with a bounded number in
//! flight, and the ServiceAccount passes the plan asks for, whose results
//! come back here. Every outcome lands in one [`Report`].

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use futures::channel::oneshot;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};

use super::cluster::Cluster;
use super::plan::{DesiredSecret, Plan, Removal, WriteKind};
use super::{FIELD_MANAGER, accounts};
use crate::api::TargetFailure;
use crate::reasons;

/// What one reconcile did and found.
#[derive(Default, Debug, PartialEq)]
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

    /// Adds what happened in one namespace.
    fn add(&mut self, namespace: String, outcome: Outcome) {
        match outcome {
            Outcome::Created => {
                self.created += 1;
                self.created_in.push(namespace.clone());
                self.synced.insert(namespace);
            }
            Outcome::Updated => {
                self.updated += 1;
                self.synced.insert(namespace);
            }
            Outcome::Gone => {}
            Outcome::Raced => self.retry = true,
            Outcome::Failed(message) => {
                self.retry = true;
                self.fail(&namespace, reasons::WRITE_FAILED, message);
            }
        }
    }
}

/// How one Secret write ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    Created,
    Updated,
    /// The namespace went away or is terminating.
    Gone,
    /// Created by someone between the cache and the write, or throttled:
    /// look again soon.
    Raced,
    Failed(String),
}

/// Carries out `plan` for `owner`; `desired` is what its writes write.
pub async fn act(ctx: &Arc<Cluster>, owner: &str, desired: Option<Arc<DesiredSecret>>, plan: Plan) -> Report {
    let mut report = Report::default();
    report.synced.extend(plan.in_place);
    for (namespace, message) in plan.conflicts {
        report.fail(&namespace, reasons::SECRET_CONFLICT, message);
    }
    let mut passes = Vec::new();
    if let Some(desired) = desired {
        for (namespace, outcome, pass) in write_secrets(ctx, owner, &desired, plan.writes).await {
            passes.extend(pass.map(|p| (namespace.clone(), p)));
            report.add(namespace, outcome);
        }
    }
    for (namespace, result) in remove_secrets(ctx, plan.removals).await {
        match result {
            Ok(()) => report.deleted += 1,
            Err(message) => {
                report.retry = true;
                report.fail(&namespace, reasons::WRITE_FAILED, message);
            }
        }
    }
    // Namespaces where a Secret was created have their pass already.
    for namespace in plan.accounts {
        if report.synced.contains(&namespace) && !report.created_in.contains(&namespace) {
            passes.push((namespace.clone(), ctx.accounts.pass(&namespace)));
        }
    }
    for (namespace, pass) in passes {
        match pass.await {
            Ok(accounts::PassResult::Done) => {}
            Ok(accounts::PassResult::Failed(message)) => {
                report.retry = true;
                report.fail(&namespace, reasons::WRITE_FAILED, message);
            }
            // The writer stopped (shutdown): the next reconcile looks again.
            Err(oneshot::Canceled) => report.retry = true,
        }
    }
    report
}

type Pass = oneshot::Receiver<accounts::PassResult>;

/// Writes the Secret wherever the plan says. A created Secret asks for a
/// pass over its namespace's ServiceAccounts at once.
async fn write_secrets(
    ctx: &Arc<Cluster>,
    owner: &str,
    desired: &Arc<DesiredSecret>,
    writes: Vec<super::plan::SecretWrite>,
) -> Vec<(String, Outcome, Option<Pass>)> {
    // The namespace's ServiceAccounts wait until the write is done.
    let writes: Vec<_> = writes.into_iter().map(|w| (ctx.accounts.begin_write(&w.namespace), w)).collect();
    // Each write is a task of its own, so encoding requests and decoding
    // answers spreads over every runtime thread.
    futures::stream::iter(writes)
        .map(|(pending, write)| {
            let (ctx, owner, desired) = (ctx.clone(), owner.to_string(), desired.clone());
            let task = tokio::spawn(async move {
                let outcome = write_secret(&ctx, &owner, &desired, &write.namespace, write.kind).await;
                let pass = matches!(outcome, Outcome::Created).then(|| ctx.accounts.pass(&write.namespace));
                drop(pending);
                (write.namespace, outcome, pass)
            });
            async move { task.await.expect("a Secret write does not panic") }
        })
        .buffer_unordered(ctx.write_concurrency.max(1))
        .collect()
        .await
}

/// Writes one Secret the way its [`WriteKind`] says: a plain create, a
/// JSON merge patch of the data (a rotation: about a third cheaper for the
/// apiserver than an apply, which computes field sets), or a forced
/// server-side apply when the metadata drifted, so fields another manager
/// changed are taken back and labels regcred no longer sets go.
async fn write_secret(
    ctx: &Cluster,
    owner: &str,
    desired: &DesiredSecret,
    namespace: &str,
    kind: WriteKind,
) -> Outcome {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let exists = kind != WriteKind::Create;
    let result = match kind {
        WriteKind::Create => {
            let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            api.create(&params, &desired.object(namespace)).await
        }
        WriteKind::Data => {
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            api.patch(&desired.name, &params, &Patch::Merge(desired.data_patch())).await
        }
        WriteKind::Apply => {
            let params = PatchParams::apply(FIELD_MANAGER).force();
            api.patch(&desired.name, &params, &Patch::Apply(desired.object(namespace))).await
        }
    };
    match result {
        Ok(written) => {
            let key = (namespace.to_string(), desired.name.clone());
            let rv = written.metadata.resource_version.as_deref();
            ctx.index.ledger.secret_written(key, owner, desired.hash, desired.digest, rv);
            if exists { Outcome::Updated } else { Outcome::Created }
        }
        Err(kube::Error::Api(e)) if e.code == 409 && !exists => Outcome::Raced,
        // Still throttled after the client's own retries (which honour
        // Retry-After): not a failure of the credential, try again soon.
        Err(kube::Error::Api(e)) if e.code == 429 => Outcome::Raced,
        Err(kube::Error::Api(e))
            if (e.code == 403 || e.code == 404) && ctx.index.live_namespace_labels(namespace).is_none() =>
        {
            Outcome::Gone
        }
        // Deleted since the cache saw it: the watch brings the deletion,
        // and the next reconcile creates it again.
        Err(kube::Error::Api(e)) if e.code == 404 && kind == WriteKind::Data => Outcome::Raced,
        Err(e) => Outcome::Failed(format!("writing Secret {namespace}/{}: {e}", desired.name)),
    }
}

/// Removes the Secrets the plan says are no longer wanted.
pub async fn remove_secrets(ctx: &Arc<Cluster>, removals: Vec<Removal>) -> Vec<(String, Result<(), String>)> {
    futures::stream::iter(removals)
        .map(|removal| async move {
            let namespace = removal.namespace.clone();
            (namespace, remove_secret(ctx, removal).await)
        })
        .buffer_unordered(ctx.write_concurrency.max(1))
        .collect()
        .await
}

async fn remove_secret(ctx: &Cluster, removal: Removal) -> Result<(), String> {
    let Removal { namespace: ns, name, uid, accounts } = removal;
    // First the ServiceAccount entries, through the writer, so no
    // ServiceAccount points at a missing Secret.
    if !accounts.is_empty() {
        match ctx.accounts.remove(&ns, &name).await {
            Ok(accounts::PassResult::Done) => {}
            Ok(accounts::PassResult::Failed(message)) => return Err(message),
            Err(oneshot::Canceled) => return Err(format!("removing {name} from ServiceAccounts in {ns}: stopped")),
        }
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let params = DeleteParams {
        // Never delete a Secret that replaced ours in the meantime.
        preconditions: Some(Preconditions { uid: uid.map(String::from), resource_version: None }),
        ..Default::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => return Err(format!("deleting Secret {ns}/{name}: {e}")),
    }
    ctx.index.ledger.secret_gone(&(ns, name));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_add_up_in_the_report() {
        let mut report = Report::default();
        report.add("a".into(), Outcome::Created);
        report.add("b".into(), Outcome::Updated);
        report.add("c".into(), Outcome::Gone);
        assert!(!report.retry, "a namespace that went away is no failure");
        report.add("d".into(), Outcome::Raced);
        assert!(report.retry && report.failed.is_empty(), "a race is retried, not reported");
        report.add("e".into(), Outcome::Failed("writing Secret e/pull: boom".into()));
        assert_eq!((report.created, report.updated), (1, 1));
        assert_eq!(report.created_in, ["a"]);
        assert_eq!(report.synced.iter().map(String::as_str).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].reason, reasons::WRITE_FAILED);
    }
}
