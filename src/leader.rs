//! Lease-based leader election: with several replicas, only the holder of
//! the Lease reconciles and writes.
//!
//! Standbys wait for the Lease. The leader renews it in the background; if a
//! renewal fails and the Lease is lost, the process exits at once, so a
//! former leader can never write next to a new one. A new leader takes over
//! within the Lease duration; its first reconciles compare before writing,
//! so a takeover causes no write storm.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;

use crate::metrics::Metrics;

/// Where the Lease lives and how long it is held.
#[derive(Clone, Debug)]
pub struct Election {
    pub namespace: String,
    pub lease_name: String,
    /// Unique per replica (the Pod name).
    pub identity: String,
    pub duration_seconds: u64,
}

/// Runs `work` once this replica holds the Lease. Returns when `work`
/// returns (after releasing the Lease); ends the process if the Lease is
/// lost while `work` runs.
pub async fn run_as_leader<F>(client: Client, election: Election, metrics: Arc<Metrics>, work: F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    // Renew well before expiry; the grace also absorbs clock skew.
    let grace = (election.duration_seconds / 3).max(1);
    let manager = LeaseManagerBuilder::new(client, &election.lease_name)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(election.duration_seconds)
        .with_grace(grace)
        .with_field_manager("regcred-leader-election")
        .build()
        .await
        .with_context(|| format!("setting up Lease {}/{}", election.namespace, election.lease_name))?;
    let (mut leading, task) = manager.watch().await;
    tracing::info!(lease = %election.lease_name, namespace = %election.namespace, identity = %election.identity, "waiting to become the leader");
    // A standby is healthy: it answers /readyz while it waits.
    metrics.set_ready();
    while !*leading.borrow_and_update() {
        leading.changed().await.context("leader election stopped")?;
    }
    metrics.leader.set(1);
    tracing::info!(identity = %election.identity, "became the leader");

    let lost = async {
        loop {
            if leading.changed().await.is_err() || !*leading.borrow_and_update() {
                return;
            }
        }
    };
    tokio::select! {
        result = work => {
            metrics.leader.set(0);
            drop(leading);
            // Closing the channel makes the manager release the Lease, so a
            // standby takes over without waiting for it to expire.
            match task.await {
                Ok(Ok(manager)) => {
                    if let Err(e) = manager.release().await {
                        tracing::warn!(error = %e, "releasing the Lease failed; it expires by itself");
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election ended with an error"),
                Err(e) => tracing::warn!(error = %e, "leader election task failed"),
            }
            result
        }
        _ = lost => {
            tracing::error!("lost the leader Lease; exiting so that only the leader writes");
            std::process::exit(1);
        }
    }
}
