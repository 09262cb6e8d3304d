//! Shards on Kubernetes Leases: with several hub replicas, each serves the
//! spokes of the shards whose Lease it holds.
//!
//! Every replica keeps a member Lease (`regcred-fleet-member-<hash>`) and
//! competes for shard Leases (`regcred-fleet-shard-<n>`) up to its fair
//! share, `ceil(shards / live members)`, releasing any above it so a new
//! replica gets its part. Each tick (a fifth of the Lease duration) renews
//! what it holds. A replica stops serving a shard when its last successful
//! renewal is two thirds of the duration old, before any other replica may
//! take the Lease (only once it has expired), so two replicas never write
//! to the same spoke. When a replica dies, its Leases expire and the others
//! take its shards within a Lease duration and a tick.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::FleetSettings;

/// Label on the fleet's Leases: `shard` or `member`.
pub const LEASE_LABEL: &str = "regcred.dev/fleet-lease";

/// Where the Leases live and how long they are held.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub identity: String,
    pub shards: u32,
    pub duration: Duration,
}

impl LeaseSettings {
    pub fn new(fleet: &FleetSettings, seconds: u64) -> Self {
        LeaseSettings {
            namespace: fleet.namespace.clone(),
            identity: fleet.identity.clone(),
            shards: fleet.shards,
            duration: Duration::from_secs(seconds),
        }
    }
}

/// A shard Lease as the decision sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardLease {
    pub holder: Option<String>,
    /// Whether it expired (no renewal within its duration).
    pub expired: bool,
}

/// What a replica does with the shard Leases this tick.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Held, and renewed.
    pub renew: BTreeSet<u32>,
    /// Free or expired, taken.
    pub acquire: BTreeSet<u32>,
    /// Held above the fair share, given back.
    pub release: BTreeSet<u32>,
}

/// The decision of replica `me` among `members` (live replicas, `me`
/// included), given the shard Leases (absent: never created). Pure.
pub fn decide(me: &str, members: usize, shards: u32, leases: &BTreeMap<u32, ShardLease>) -> Decision {
    let fair = (shards as usize).div_ceil(members.max(1));
    let mine: Vec<u32> =
        (0..shards).filter(|s| leases.get(s).is_some_and(|l| !l.expired && l.holder.as_deref() == Some(me))).collect();
    let mut d = Decision::default();
    for (i, s) in mine.iter().enumerate() {
        if i < fair {
            d.renew.insert(*s)
        } else {
            d.release.insert(*s)
        };
    }
    let free = |s: &u32| leases.get(s).is_none_or(|l| l.expired || l.holder.is_none());
    // A replica-specific order, so replicas starting together reach for
    // different shards first.
    let mut candidates: Vec<u32> = (0..shards).filter(free).collect();
    candidates.sort_by_key(|s| preference(me, *s));
    let wanted = fair.saturating_sub(d.renew.len());
    d.acquire.extend(candidates.into_iter().take(wanted));
    d
}

fn preference(me: &str, shard: u32) -> [u8; 8] {
    let d = Sha256::digest(format!("{me}/{shard}").as_bytes());
    d[..8].try_into().expect("8 bytes")
}

fn shard_lease_name(shard: u32) -> String {
    format!("regcred-fleet-shard-{shard}")
}

fn member_lease_name(identity: &str) -> String {
    let d = Sha256::digest(identity.as_bytes());
    let hash: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("regcred-fleet-member-{hash}")
}

/// When a Lease expires unless renewed (`None`: never held).
fn expires_at(lease: &Lease) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    renewed.0.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(duration)).ok()
}

fn expired(lease: &Lease, now: Timestamp) -> bool {
    expires_at(lease).is_none_or(|t| t <= now)
}

/// Holds this replica's member Lease and its shard Leases until the
/// process stops, telling `owned` which shards it may serve.
pub async fn run(client: Client, settings: LeaseSettings, owned: watch::Sender<BTreeSet<u32>>) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let tick = settings.duration / 5;
    // When each held shard was last renewed (the request's start).
    let mut held: BTreeMap<u32, Instant> = BTreeMap::new();
    let safe = settings.duration * 2 / 3;
    loop {
        let started = Instant::now();
        // A Lease another replica stopped renewing is looked at again as
        // soon as it expires, not at the next tick.
        let mut next = tick;
        match step(&api, &settings, &mut held, started).await {
            Ok(Some(expiry)) => next = next.min(expiry + Duration::from_millis(50)),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "renewing the fleet's shard Leases failed"),
        }
        held.retain(|_, renewed| renewed.elapsed() < safe);
        let now: BTreeSet<u32> = held.keys().copied().collect();
        owned.send_if_modified(|o| {
            let changed = *o != now;
            if changed {
                tracing::info!(shards = ?now, "serving fleet shards");
                *o = now;
            }
            changed
        });
        tokio::time::sleep(next.saturating_sub(started.elapsed())).await;
        // Drop what went stale while sleeping before anything else.
        held.retain(|_, renewed| renewed.elapsed() < safe);
    }
}

async fn step(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    held: &mut BTreeMap<u32, Instant>,
    started: Instant,
) -> Result<Option<Duration>, kube::Error> {
    let now = Timestamp::now();
    let seconds = settings.duration.as_secs() as i32;
    write_lease(api, &member_lease_name(&settings.identity), "member", &settings.identity, seconds, now, None).await?;
    let all = api.list(&ListParams::default().labels(LEASE_LABEL)).await?;
    let mut members = BTreeSet::from([settings.identity.clone()]);
    let mut leases = BTreeMap::new();
    let mut objects = BTreeMap::new();
    // The soonest another replica's live Lease expires.
    let mut next_expiry: Option<Duration> = None;
    for lease in all.items {
        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty());
        if holder.as_ref().is_some_and(|h| *h != settings.identity)
            && let Some(at) = expires_at(&lease).filter(|at| *at > now)
        {
            let left = Duration::try_from(at.duration_since(now)).unwrap_or_default();
            next_expiry = Some(next_expiry.map_or(left, |n| n.min(left)));
        }
        match lease.labels().get(LEASE_LABEL).map(String::as_str) {
            Some("member") if !expired(&lease, now) => members.extend(holder),
            Some("shard") => {
                let Some(shard) = lease.name_any().strip_prefix("regcred-fleet-shard-").and_then(|s| s.parse().ok())
                else {
                    continue;
                };
                leases.insert(shard, ShardLease { holder, expired: expired(&lease, now) });
                objects.insert(shard, lease);
            }
            _ => {}
        }
    }
    let decision = decide(&settings.identity, members.len(), settings.shards, &leases);
    // Stop serving before giving back.
    for shard in &decision.release {
        held.remove(shard);
    }
    for shard in decision.renew.iter().chain(&decision.acquire) {
        let name = shard_lease_name(*shard);
        match write_lease(api, &name, "shard", &settings.identity, seconds, now, objects.get(shard)).await {
            Ok(()) => {
                held.insert(*shard, started);
            }
            // Another replica got there first.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                held.remove(shard);
            }
            Err(e) => tracing::warn!(shard, error = %e, "writing a shard Lease failed"),
        }
    }
    for shard in &decision.release {
        if let Some(lease) = objects.get(shard) {
            let mut lease = lease.clone();
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
            }
            if let Err(e) = api.replace(&lease.name_any(), &PostParams::default(), &lease).await {
                tracing::warn!(shard, error = %e, "giving back a shard Lease failed; it expires by itself");
            }
        }
    }
    Ok(next_expiry)
}

/// Creates or renews a Lease held by `identity`; `current` (as listed)
/// makes the update conditional on its resourceVersion.
async fn write_lease(
    api: &Api<Lease>,
    name: &str,
    kind: &str,
    identity: &str,
    seconds: i32,
    now: Timestamp,
    current: Option<&Lease>,
) -> Result<(), kube::Error> {
    let current = match current {
        Some(c) => Some(c.clone()),
        None if kind == "member" => api.get_opt(name).await?,
        None => None,
    };
    match current {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(identity) {
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.holder_identity = Some(identity.into());
            spec.lease_duration_seconds = Some(seconds);
            spec.renew_time = Some(MicroTime(now));
            api.replace(name, &PostParams::default(), &lease).await.map(drop)
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(BTreeMap::from([(LEASE_LABEL.to_string(), kind.to_string())])),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(identity.into()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await.map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: &str) -> ShardLease {
        ShardLease { holder: Some(by.into()), expired: false }
    }

    #[test]
    fn a_lone_replica_takes_every_shard() {
        let d = decide("a", 1, 4, &BTreeMap::new());
        assert_eq!(d.acquire, BTreeSet::from([0, 1, 2, 3]));
        assert!(d.renew.is_empty() && d.release.is_empty());
    }

    #[test]
    fn a_new_replica_makes_the_holder_give_back_above_its_share() {
        let leases: BTreeMap<u32, ShardLease> = (0..4).map(|s| (s, held("a"))).collect();
        let a = decide("a", 2, 4, &leases);
        assert_eq!(a.renew.len(), 2);
        assert_eq!(a.release.len(), 2, "{a:?}");
        let b = decide("b", 2, 4, &leases);
        assert!(b.acquire.is_empty(), "nothing is free until a gives back");
        let after: BTreeMap<u32, ShardLease> = leases
            .into_iter()
            .map(|(s, l)| (s, if a.release.contains(&s) { ShardLease { holder: None, expired: false } } else { l }))
            .collect();
        assert_eq!(decide("b", 2, 4, &after).acquire, a.release);
    }

    #[test]
    fn expired_shards_of_a_dead_replica_are_taken_and_live_ones_are_not() {
        let mut leases: BTreeMap<u32, ShardLease> = BTreeMap::new();
        leases.insert(0, held("a"));
        leases.insert(1, held("a"));
        leases.insert(2, ShardLease { holder: Some("dead".into()), expired: true });
        leases.insert(3, ShardLease { holder: Some("dead".into()), expired: true });
        let d = decide("a", 1, 4, &leases);
        assert_eq!(d.renew, BTreeSet::from([0, 1]));
        assert_eq!(d.acquire, BTreeSet::from([2, 3]));
        let b = decide("b", 2, 4, &BTreeMap::from([(0, held("a")), (1, held("a")), (2, held("c")), (3, held("c"))]));
        assert!(b.acquire.is_empty(), "live Leases are never taken");
    }
}
