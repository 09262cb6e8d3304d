//! ServiceAccount `imagePullSecrets`: one writer for every credential.
//!
//! Every credential that targets a namespace may add its pull Secret to the
//! ServiceAccounts there. Patching per credential would send one write per
//! ServiceAccount per credential, and credentials fanning out at the same time
//! would collide on the same `default` ServiceAccounts. Instead credentials
//! (and ServiceAccount changes) queue the namespace here, and one worker
//! computes each ServiceAccount's whole list from every credential and writes
//! it once. A namespace waits while Secret writes headed for it are in
//! flight, so the entries of credentials fanning out together land in one
//! patch.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures::channel::oneshot;
use k8s_openapi::api::core::v1::{LocalObjectReference, ServiceAccount};
use kube::api::{Api, Patch, PatchParams};
use parking_lot::Mutex;

use super::FIELD_MANAGER;
use super::cluster::Cluster;
use super::index::{AccountView, Claim};

/// Patches tried per ServiceAccount before giving up until the next change.
const ATTEMPTS: usize = 3;

#[derive(Default)]
struct NamespaceState {
    /// Secret writes planned or in flight for this namespace.
    pending: usize,
    /// Asked for and not yet started.
    queued: bool,
    /// Sent to the worker and not yet taken.
    sent: bool,
    /// Being processed.
    running: bool,
    /// Waiting for the next pass's result.
    waiting: Vec<oneshot::Sender<PassResult>>,
    /// Waiting for the running pass's result.
    served: Vec<oneshot::Sender<PassResult>>,
    /// Secrets being removed, whose entries the next pass takes out.
    removing: Vec<String>,
}

/// How a pass over a namespace's ServiceAccounts ended.
#[derive(Clone, Debug, PartialEq)]
pub enum PassResult {
    Done,
    /// A patch failed for a reason other than a race, with the message.
    Failed(String),
}

impl NamespaceState {
    fn idle(&self) -> bool {
        self.pending == 0
            && !self.queued
            && !self.sent
            && !self.running
            && self.waiting.is_empty()
            && self.removing.is_empty()
    }
}

/// Namespaces asked for, and the channel to the worker.
struct Queue {
    state: Mutex<HashMap<String, NamespaceState>>,
    tx: UnboundedSender<String>,
}

impl Queue {
    fn send_if_due(&self, state: &mut HashMap<String, NamespaceState>, namespace: &str) {
        let Some(s) = state.get_mut(namespace) else { return };
        if s.queued && !s.sent && !s.running && s.pending == 0 {
            s.sent = true;
            let _ = self.tx.unbounded_send(namespace.to_string());
        }
        if s.idle() {
            state.remove(namespace);
        }
    }
}

/// The queue of namespaces whose ServiceAccounts need a look.
pub struct Accounts {
    queue: Arc<Queue>,
    rx: Mutex<Option<UnboundedReceiver<String>>>,
}

impl Default for Accounts {
    fn default() -> Self {
        let (tx, rx) = unbounded();
        Accounts { queue: Arc::new(Queue { state: Mutex::default(), tx }), rx: Mutex::new(Some(rx)) }
    }
}

/// Releases one pending Secret write when dropped, even if the write was
/// cancelled.
pub struct PendingWrite {
    queue: Arc<Queue>,
    namespace: String,
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        let mut state = self.queue.state.lock();
        if let Some(s) = state.get_mut(&self.namespace) {
            s.pending = s.pending.saturating_sub(1);
        }
        self.queue.send_if_due(&mut state, &self.namespace);
    }
}

impl Accounts {
    /// Asks for the ServiceAccounts of `namespace` to be brought up to date.
    pub fn enqueue(&self, namespace: &str) {
        let mut state = self.queue.state.lock();
        state.entry(namespace.to_string()).or_default().queued = true;
        self.queue.send_if_due(&mut state, namespace);
    }

    /// Asks for a pass over the ServiceAccounts of `namespace` and returns
    /// its result when it is done: a pass that starts after this call, so it
    /// sees every Secret in place by now.
    pub fn pass(&self, namespace: &str) -> oneshot::Receiver<PassResult> {
        self.ask(namespace, None)
    }

    /// Asks for a pass that also takes `secret` out of every ServiceAccount
    /// of `namespace` that no other credential's claim keeps it in (the
    /// Secret is about to be deleted), and returns its result.
    pub fn remove(&self, namespace: &str, secret: &str) -> oneshot::Receiver<PassResult> {
        self.ask(namespace, Some(secret))
    }

    fn ask(&self, namespace: &str, removing: Option<&str>) -> oneshot::Receiver<PassResult> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.queue.state.lock();
        let s = state.entry(namespace.to_string()).or_default();
        s.queued = true;
        s.waiting.push(tx);
        s.removing.extend(removing.map(String::from));
        self.queue.send_if_due(&mut state, namespace);
        rx
    }

    /// A Secret write for `namespace` is about to start; the namespace waits
    /// until the returned guard is dropped.
    pub fn begin_write(&self, namespace: &str) -> PendingWrite {
        self.queue.state.lock().entry(namespace.to_string()).or_default().pending += 1;
        PendingWrite { queue: self.queue.clone(), namespace: namespace.to_string() }
    }

    /// Starts a pass; returns the Secrets whose entries it removes.
    fn start(&self, namespace: &str) -> Vec<String> {
        let mut state = self.queue.state.lock();
        let s = state.entry(namespace.to_string()).or_default();
        s.sent = false;
        s.queued = false;
        s.running = true;
        s.served = std::mem::take(&mut s.waiting);
        std::mem::take(&mut s.removing)
    }

    /// Ends a pass; returns whether anyone waited for its result.
    fn finish(&self, namespace: &str, result: PassResult) -> bool {
        let mut state = self.queue.state.lock();
        let mut waited = false;
        if let Some(s) = state.get_mut(namespace) {
            s.running = false;
            for tx in s.served.drain(..) {
                waited |= tx.send(result.clone()).is_ok();
            }
        }
        self.queue.send_if_due(&mut state, namespace);
        waited
    }
}

/// The list a ServiceAccount should have: every entry it has, plus the
/// Secrets of credentials that select it, minus those of credentials that
/// do not and those being removed (unless a claim keeps them). Entries of
/// others keep their place.
fn desired_entries(view: &AccountView, claims: &[Claim], removing: &[String]) -> Vec<String> {
    let kept = |secret: &str| claims.iter().any(|c| c.secret == secret && view.selected_by(c.selector.as_ref()));
    let mut entries = view.entries.clone();
    entries.retain(|e| !removing.contains(e) || kept(e));
    for c in claims {
        let want = view.selected_by(c.selector.as_ref());
        let has = entries.contains(&c.secret);
        if want && !has {
            entries.push(c.secret.clone());
        } else if !want && has && !claims.iter().any(|o| o.secret == c.secret && view.selected_by(o.selector.as_ref()))
        {
            entries.retain(|e| *e != c.secret);
        }
    }
    entries
}

/// Runs the worker until the process stops. Call once, after the caches are
/// filled.
pub async fn run(ctx: Arc<Cluster>) {
    let Some(rx) = ctx.accounts.rx.lock().take() else { return };
    let concurrency = ctx.write_concurrency.max(1);
    rx.for_each_concurrent(concurrency, |namespace| {
        let ctx = ctx.clone();
        // A task per namespace, so the work spreads over every thread.
        let task = tokio::spawn(async move {
            let removing = ctx.accounts.start(&namespace);
            let result = match sync_namespace(&ctx, &namespace, &removing).await {
                Some(message) => PassResult::Failed(message),
                None => PassResult::Done,
            };
            let failed = result != PassResult::Done;
            // Credentials report failures in their status: a pass no
            // reconcile waited for (a ServiceAccount changed) wakes them,
            // and their own pass brings them the message.
            if !ctx.accounts.finish(&namespace, result) && failed {
                ctx.wake(ctx.index.credentials_targeting(&namespace));
            }
        });
        async move {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a ServiceAccount update task failed");
            }
        }
    })
    .await;
}

/// Brings every ServiceAccount of `namespace` up to date; returns a failure
/// message if a patch failed for a reason other than a race.
async fn sync_namespace(ctx: &Cluster, namespace: &str, removing: &[String]) -> Option<String> {
    let claims = ctx.index.claims(namespace);
    if claims.is_empty() && removing.is_empty() {
        return None;
    }
    let mut failure = None;
    for view in ctx.index.accounts_in(namespace) {
        if let Err(message) = sync_account(ctx, namespace, view, &claims, removing).await {
            failure = Some(message);
        }
    }
    failure
}

async fn sync_account(
    ctx: &Cluster,
    namespace: &str,
    mut view: AccountView,
    claims: &[Claim],
    removing: &[String],
) -> Result<(), String> {
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
    for _ in 0..ATTEMPTS {
        let entries = desired_entries(&view, claims, removing);
        if entries == view.entries {
            return Ok(());
        }
        match patch_entries(ctx, namespace, &view.name, view.resource_version.as_deref(), entries).await {
            Ok(()) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            // Changed since it was cached: read it and compute again.
            Err(kube::Error::Api(e)) if e.code == 409 => match api.get_opt(&view.name).await {
                Ok(Some(sa)) => {
                    view.resource_version = sa.metadata.resource_version.clone();
                    view.labels = sa.metadata.labels.clone().unwrap_or_default();
                    view.entries = sa.image_pull_secrets.iter().flatten().map(|r| r.name.clone()).collect();
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(failure_message(namespace, &view.name, &e)),
            },
            Err(e) => return Err(failure_message(namespace, &view.name, &e)),
        }
    }
    // Still racing with another writer: its change brings another pass,
    // unless an entry of a Secret about to be deleted is still there.
    if removing.iter().any(|r| view.has(r)) {
        return Err(format!(
            "patching ServiceAccount {namespace}/{}: it kept changing; tried {ATTEMPTS} times",
            view.name
        ));
    }
    Ok(())
}

fn failure_message(namespace: &str, name: &str, e: &kube::Error) -> String {
    let message = format!("patching ServiceAccount {namespace}/{name}: {e}");
    tracing::warn!("{message}");
    message
}

/// Replaces the `imagePullSecrets` list, guarded by the resourceVersion it
/// was computed from, so a concurrent change fails (409) instead of losing
/// someone's entry.
async fn patch_entries(
    ctx: &Cluster,
    namespace: &str,
    name: &str,
    resource_version: Option<&str>,
    entries: Vec<String>,
) -> Result<(), kube::Error> {
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
    let list: Vec<LocalObjectReference> = entries.iter().map(|n| LocalObjectReference { name: n.clone() }).collect();
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": resource_version},
        "imagePullSecrets": list,
    });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let written = api.patch(name, &params, &Patch::Merge(&patch)).await?;
    let key = (namespace.to_string(), name.to_string());
    ctx.index.ledger.account_written(key, written.metadata.resource_version.as_deref(), entries);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ServiceAccountSelector;

    fn view(name: &str, entries: &[&str]) -> AccountView {
        AccountView {
            name: name.into(),
            resource_version: Some("1".into()),
            labels: Default::default(),
            entries: entries.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn claim(secret: &str, names: Option<&[&str]>) -> Claim {
        Claim {
            secret: secret.into(),
            selector: names.map(|n| ServiceAccountSelector {
                names: Some(n.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn every_credential_selecting_an_account_is_added_in_one_list() {
        let v = view("default", &["theirs"]);
        let claims = [claim("a", None), claim("b", None), claim("c", Some(&["builder"]))];
        assert_eq!(desired_entries(&v, &claims, &[]), ["theirs", "a", "b"]);
    }

    #[test]
    fn entries_of_credentials_that_no_longer_select_are_removed_others_stay() {
        let v = view("default", &["a", "theirs", "c"]);
        let claims = [claim("a", Some(&["builder"])), claim("c", None)];
        assert_eq!(desired_entries(&v, &claims, &[]), ["theirs", "c"]);
    }

    #[test]
    fn two_credentials_on_one_name_keep_it_if_either_selects() {
        let v = view("default", &["a"]);
        let claims = [claim("a", Some(&["builder"])), claim("a", None)];
        assert_eq!(desired_entries(&v, &claims, &[]), ["a"]);
    }

    #[test]
    fn a_removed_secret_leaves_every_account_unless_a_claim_keeps_it() {
        let v = view("default", &["a", "theirs", "b"]);
        let removing = ["a".to_string(), "b".to_string()];
        assert_eq!(desired_entries(&v, &[], &removing), ["theirs"]);
        assert_eq!(desired_entries(&v, &[claim("b", None)], &removing), ["theirs", "b"], "b is still claimed here");
        let builder = view("builder", &["b"]);
        assert!(desired_entries(&builder, &[claim("b", None)], &removing).is_empty(), "not selected there");
    }

    #[test]
    fn removals_ride_on_the_next_pass() {
        let accounts = Accounts::default();
        let mut rx = accounts.rx.lock().take().unwrap();
        let mut first = accounts.remove("ns", "a");
        let _second = accounts.remove("ns", "b");
        assert_eq!(rx.try_recv().ok().as_deref(), Some("ns"));
        assert_eq!(accounts.start("ns"), ["a", "b"], "one pass removes both");
        assert!(accounts.finish("ns", PassResult::Done));
        assert_eq!(first.try_recv().unwrap(), Some(PassResult::Done));
        assert_eq!(accounts.start("other"), Vec::<String>::new());
    }

    #[test]
    fn a_namespace_waits_for_pending_writes_and_is_sent_once() {
        let accounts = Accounts::default();
        let mut rx = accounts.rx.lock().take().unwrap();
        let first = accounts.begin_write("ns");
        let second = accounts.begin_write("ns");
        accounts.enqueue("ns");
        accounts.enqueue("ns");
        assert!(rx.try_recv().is_err(), "nothing sent while writes are pending");
        drop(first);
        assert!(rx.try_recv().is_err());
        drop(second);
        assert_eq!(rx.try_recv().ok().as_deref(), Some("ns"));
        accounts.enqueue("ns");
        assert!(rx.try_recv().is_err(), "already sent and not taken: not sent twice");
        accounts.start("ns");
        accounts.enqueue("ns");
        assert!(rx.try_recv().is_err(), "running: sent again only when it finishes");
        accounts.finish("ns", PassResult::Done);
        assert_eq!(rx.try_recv().ok().as_deref(), Some("ns"));
        accounts.start("ns");
        assert!(!accounts.finish("ns", PassResult::Done), "nobody waited");
        assert!(accounts.queue.state.lock().is_empty(), "idle namespaces are forgotten");
    }

    #[test]
    fn a_pass_hands_its_result_to_those_who_asked_before_it_started() {
        let accounts = Accounts::default();
        let mut rx = accounts.rx.lock().take().unwrap();
        let mut early = accounts.pass("ns");
        assert_eq!(rx.try_recv().ok().as_deref(), Some("ns"));
        accounts.start("ns");
        // Asked while the pass runs: it may not see what this caller wrote,
        // so the answer comes from the next pass.
        let mut late = accounts.pass("ns");
        assert!(accounts.finish("ns", PassResult::Failed("patching ServiceAccount ns/default: 403".into())));
        assert_eq!(
            early.try_recv().unwrap(),
            Some(PassResult::Failed("patching ServiceAccount ns/default: 403".into()))
        );
        assert_eq!(late.try_recv().unwrap(), None, "not answered by the pass that was already running");
        assert_eq!(rx.try_recv().ok().as_deref(), Some("ns"), "a second pass is sent");
        accounts.start("ns");
        assert!(accounts.finish("ns", PassResult::Done));
        assert_eq!(late.try_recv().unwrap(), Some(PassResult::Done));
        assert!(accounts.queue.state.lock().is_empty());
    }
}
