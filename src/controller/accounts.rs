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
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use k8s_openapi::api::core::v1::{LocalObjectReference, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use super::{Context, CredentialKind, FIELD_MANAGER};
use crate::api::ServiceAccountSelector;
use crate::targets::service_account_selected;

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
}

impl NamespaceState {
    fn idle(&self) -> bool {
        self.pending == 0 && !self.queued && !self.sent && !self.running
    }
}

/// What regcred's own last patch left on a ServiceAccount, until the cache
/// catches up.
struct WrittenAccount {
    resource_version: u64,
    entries: Vec<String>,
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

/// The queue of namespaces whose ServiceAccounts need a look, and what the
/// worker learnt.
pub struct Accounts {
    queue: Arc<Queue>,
    rx: Mutex<Option<UnboundedReceiver<String>>>,
    written: Mutex<HashMap<(String, String), WrittenAccount>>,
    /// Namespaces where a patch failed, with the message.
    failures: Mutex<HashMap<String, String>>,
}

impl Default for Accounts {
    fn default() -> Self {
        let (tx, rx) = unbounded();
        Accounts {
            queue: Arc::new(Queue { state: Mutex::default(), tx }),
            rx: Mutex::new(Some(rx)),
            written: Mutex::default(),
            failures: Mutex::default(),
        }
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
        let mut state = self.queue.state.lock().expect("not poisoned");
        if let Some(s) = state.get_mut(&self.namespace) {
            s.pending = s.pending.saturating_sub(1);
        }
        self.queue.send_if_due(&mut state, &self.namespace);
    }
}

impl Accounts {
    /// Asks for the ServiceAccounts of `namespace` to be brought up to date.
    pub fn enqueue(&self, namespace: &str) {
        let mut state = self.queue.state.lock().expect("not poisoned");
        state.entry(namespace.to_string()).or_default().queued = true;
        self.queue.send_if_due(&mut state, namespace);
    }

    /// A Secret write for `namespace` is about to start; the namespace waits
    /// until the returned guard is dropped.
    pub fn begin_write(&self, namespace: &str) -> PendingWrite {
        self.queue.state.lock().expect("not poisoned").entry(namespace.to_string()).or_default().pending += 1;
        PendingWrite { queue: self.queue.clone(), namespace: namespace.to_string() }
    }

    fn start(&self, namespace: &str) {
        let mut state = self.queue.state.lock().expect("not poisoned");
        let s = state.entry(namespace.to_string()).or_default();
        s.sent = false;
        s.queued = false;
        s.running = true;
    }

    fn finish(&self, namespace: &str) {
        let mut state = self.queue.state.lock().expect("not poisoned");
        if let Some(s) = state.get_mut(namespace) {
            s.running = false;
        }
        self.queue.send_if_due(&mut state, namespace);
    }

    /// Forgets what was written to a deleted ServiceAccount.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.written.lock().expect("not poisoned").remove(&(namespace.to_string(), name.to_string()));
    }

    /// The message of the last failed patch in `namespace`, if it still fails.
    pub fn failure(&self, namespace: &str) -> Option<String> {
        self.failures.lock().expect("not poisoned").get(namespace).cloned()
    }
}

/// A ServiceAccount as the worker sees it: the cache, or regcred's own last
/// patch if the cache has not caught up with it yet.
pub struct AccountView {
    pub name: String,
    pub resource_version: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
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

fn rv_number(rv: Option<&str>) -> Option<u64> {
    rv?.parse().ok()
}

/// The ServiceAccounts of a namespace, newest known version of each.
pub fn accounts_in(ctx: &Context, namespace: &str) -> Vec<AccountView> {
    let cached = ctx.service_accounts.in_namespace(namespace);
    let written = ctx.accounts.written.lock().expect("not poisoned");
    cached
        .into_iter()
        .map(|(name, sa)| {
            let mut view = AccountView {
                resource_version: sa.resource_version.map(|rv| rv.to_string()),
                labels: sa.labels,
                entries: sa.image_pull_secrets,
                name,
            };
            if let Some(w) = written.get(&(namespace.to_string(), view.name.clone()))
                && Some(w.resource_version) > sa.resource_version
            {
                view.resource_version = Some(w.resource_version.to_string());
                view.entries = w.entries.clone();
            }
            view
        })
        .collect()
}

/// A credential's say over the ServiceAccounts of one namespace.
struct Claim {
    secret: String,
    selector: Option<ServiceAccountSelector>,
}

/// Credentials that target `namespace`, are not being deleted, and whose
/// pull Secret is in place there.
fn claims(ctx: &Context, namespace: &str) -> Vec<Claim> {
    fn claim<K: CredentialKind>(ctx: &Context, c: &K, namespace: &str) -> Option<Claim> {
        if c.meta().deletion_timestamp.is_some() || !c.targets_namespace(ctx, namespace) {
            return None;
        }
        let spec = c.credential();
        ctx.secret_in_place(namespace, &spec.secret.name, &c.owner_key())
            .then(|| Claim { secret: spec.secret.name.clone(), selector: spec.service_accounts.clone() })
    }
    let mut out = Vec::new();
    for c in ctx.credentials.namespaced.state() {
        if c.namespace().as_deref() == Some(namespace) {
            out.extend(claim(ctx, &*c, namespace));
        }
    }
    for c in ctx.credentials.cluster.state() {
        out.extend(claim(ctx, &*c, namespace));
    }
    out
}

/// The list a ServiceAccount should have: every entry it has, plus the
/// Secrets of credentials that select it, minus those of credentials that
/// do not. Entries of others keep their place.
fn desired_entries(view: &AccountView, claims: &[Claim]) -> Vec<String> {
    let mut entries = view.entries.clone();
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
pub async fn run(ctx: Arc<Context>) {
    let Some(rx) = ctx.accounts.rx.lock().expect("not poisoned").take() else { return };
    let concurrency = ctx.settings.write_concurrency.max(1);
    rx.for_each_concurrent(concurrency, |namespace| {
        let ctx = ctx.clone();
        // A task per namespace, so the work spreads over every thread.
        let task = tokio::spawn(async move {
            ctx.accounts.start(&namespace);
            let failure = sync_namespace(&ctx, &namespace).await;
            let changed = {
                let mut failures = ctx.accounts.failures.lock().expect("not poisoned");
                match failure {
                    Some(message) => failures.insert(namespace.clone(), message).is_none(),
                    None => failures.remove(&namespace).is_some(),
                }
            };
            // Credentials report failures in their status: tell them.
            if changed {
                ctx.wake_credentials_targeting(&namespace);
            }
            ctx.accounts.finish(&namespace);
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
async fn sync_namespace(ctx: &Context, namespace: &str) -> Option<String> {
    let claims = claims(ctx, namespace);
    if claims.is_empty() {
        return None;
    }
    let mut failure = None;
    for view in accounts_in(ctx, namespace) {
        if let Err(message) = sync_account(ctx, namespace, view, &claims).await {
            failure = Some(message);
        }
    }
    failure
}

async fn sync_account(ctx: &Context, namespace: &str, mut view: AccountView, claims: &[Claim]) -> Result<(), String> {
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
    for _ in 0..ATTEMPTS {
        let entries = desired_entries(&view, claims);
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
    // Still racing with another writer: its change brings another pass.
    Ok(())
}

fn failure_message(namespace: &str, name: &str, e: &kube::Error) -> String {
    let message = format!("patching ServiceAccount {namespace}/{name}: {e}");
    tracing::warn!("{message}");
    message
}

/// Takes `secret` out of a ServiceAccount's `imagePullSecrets`, reading it
/// again when another writer changed it in the meantime (several
/// credentials deleted at once remove their entries from the same
/// ServiceAccounts).
pub async fn remove_entry(
    ctx: &Context,
    namespace: &str,
    mut view: AccountView,
    secret: &str,
) -> Result<(), kube::Error> {
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
    let mut attempt = 0;
    loop {
        if !view.has(secret) {
            return Ok(());
        }
        let entries = view.entries.iter().filter(|e| *e != secret).cloned().collect();
        match patch_entries(ctx, namespace, &view.name, view.resource_version.as_deref(), entries).await {
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt + 1 < ATTEMPTS => {
                attempt += 1;
                let Some(sa) = api.get_opt(&view.name).await? else { return Ok(()) };
                view.resource_version = sa.metadata.resource_version.clone();
                view.entries = sa.image_pull_secrets.iter().flatten().map(|r| r.name.clone()).collect();
            }
            other => return other,
        }
    }
}

/// Replaces the `imagePullSecrets` list, guarded by the resourceVersion it
/// was computed from, so a concurrent change fails (409) instead of losing
/// someone's entry.
pub async fn patch_entries(
    ctx: &Context,
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
    if let Some(rv) = rv_number(written.metadata.resource_version.as_deref()) {
        ctx.accounts
            .written
            .lock()
            .expect("not poisoned")
            .insert((namespace.to_string(), name.to_string()), WrittenAccount { resource_version: rv, entries });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(desired_entries(&v, &claims), ["theirs", "a", "b"]);
    }

    #[test]
    fn entries_of_credentials_that_no_longer_select_are_removed_others_stay() {
        let v = view("default", &["a", "theirs", "c"]);
        let claims = [claim("a", Some(&["builder"])), claim("c", None)];
        assert_eq!(desired_entries(&v, &claims), ["theirs", "c"]);
    }

    #[test]
    fn two_credentials_on_one_name_keep_it_if_either_selects() {
        let v = view("default", &["a"]);
        let claims = [claim("a", Some(&["builder"])), claim("a", None)];
        assert_eq!(desired_entries(&v, &claims), ["a"]);
    }

    #[test]
    fn a_namespace_waits_for_pending_writes_and_is_sent_once() {
        let accounts = Accounts::default();
        let mut rx = accounts.rx.lock().unwrap().take().unwrap();
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
        accounts.finish("ns");
        assert_eq!(rx.try_recv().ok().as_deref(), Some("ns"));
        accounts.start("ns");
        accounts.finish("ns");
        assert!(accounts.queue.state.lock().unwrap().is_empty(), "idle namespaces are forgotten");
    }
}
