//! One cluster regcred writes to: its client, its [`Index`] and its
//! ServiceAccount writer. The cluster regcred runs in is one; each spoke of a
//! fleet ([`crate::fleet`]) is another, with the same plan and act.

use std::sync::Arc;

use kube::Client;

use super::accounts::Accounts;
use super::index::{CredentialRef, Index};

/// What wakes the credentials a failed ServiceAccount pass concerns.
pub type Waker = Box<dyn Fn(Vec<CredentialRef>) + Send + Sync>;

/// See the module documentation.
pub struct Cluster {
    pub client: Client,
    pub index: Arc<Index>,
    pub accounts: Accounts,
    /// Writes in flight per credential during a fan-out, and ServiceAccount
    /// patches in flight.
    pub write_concurrency: usize,
    wake: Waker,
}

impl Cluster {
    pub fn new(client: Client, index: Arc<Index>, write_concurrency: usize, wake: Waker) -> Self {
        Cluster { client, index, accounts: Accounts::default(), write_concurrency, wake }
    }

    /// Wakes credentials (the local controller, or a spoke's worker).
    pub fn wake(&self, credentials: Vec<CredentialRef>) {
        if !credentials.is_empty() {
            (self.wake)(credentials);
        }
    }
}
