//! Several hub replicas share the fleet's clusters on shard Leases: each
//! spoke is served by exactly one replica; when that replica dies, another
//! takes its shards over within a Lease period, and no Secret is written
//! twice (by the dying and the new replica) or rewritten by the takeover.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use regcred_testenv::ControlPlane;
use regcred_testenv::fleet;
use regcred_testenv::operator::{Operator, record_secret};
use serde_json::json;

const NS: &str = "regcred-system";
const LEASE_SECONDS: u64 = 6;
const REGISTRY: &str = "shards.registry.example";
/// Shards 3, 0 and 5 of 8 (`shard_of`): the first replica keeps shards 0-3
/// and gives 4-7 to the second, so both serve a spoke.
const SPOKES: [&str; 3] = ["east", "west", "alpha"];
const NAMESPACES: [&str; 2] = ["app-1", "app-2"];

fn start(name: &str) -> Operator {
    let cp = regcred_testenv::shared();
    let args = [
        "--leader-elect",
        "--leader-election-namespace",
        NS,
        "--lease-duration-seconds",
        "6",
        "--fleet-shards",
        "8",
        "--log-level",
        "info,regcred=debug",
    ];
    Operator::start_with_env(cp, Path::new(env!("CARGO_BIN_EXE_regcred")), NS, &args, &[("POD_NAME", name)])
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The spokes `op` serves (its `regcred_cluster_up` series).
fn served(op: &Operator) -> Vec<String> {
    let metrics = op.metrics().unwrap_or_default();
    SPOKES
        .iter()
        .filter(|s| metrics.lines().any(|l| l.starts_with(&format!("regcred_cluster_up{{cluster=\"{s}\"}} 1"))))
        .map(|s| s.to_string())
        .collect()
}

async fn wait_until<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(v) = f().await {
            return (v, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn password_in(secret: &Secret) -> Option<String> {
    let data = secret.data.as_ref()?.get(".dockerconfigjson")?;
    let v: serde_json::Value = serde_json::from_slice(&data.0).ok()?;
    v["auths"][REGISTRY]["password"].as_str().map(String::from)
}

async fn all_hold(spokes: &BTreeMap<&str, Client>, password: &str) -> bool {
    for client in spokes.values() {
        for ns in NAMESPACES {
            let s = Api::<Secret>::namespaced(client.clone(), ns).get_opt("shards-pull").await.unwrap();
            if s.as_ref().and_then(password_in).as_deref() != Some(password) {
                return false;
            }
        }
    }
    true
}

async fn put_login(hub: &Client, password: &str) {
    record_secret(password);
    let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shards-login", "namespace": NS},
        "stringData": {"username": "shards", "password": password}});
    Api::<Secret>::namespaced(hub.clone(), NS)
        .patch("shards-login", &PatchParams::apply("regcred-test").force(), &Patch::Apply(&s))
        .await
        .unwrap();
}

/// Counts the writes each spoke's pull Secrets see, from watches started now.
fn count_writes(spokes: &BTreeMap<&str, Client>) -> Vec<tokio::task::JoinHandle<BTreeMap<String, usize>>> {
    spokes
        .iter()
        .map(|(name, client)| {
            let api = Api::<Secret>::all(client.clone());
            let cfg = watcher::Config::default().fields("metadata.name=shards-pull");
            let name = name.to_string();
            tokio::spawn(async move {
                let mut counts = BTreeMap::new();
                let mut stream = watcher::watcher(api, cfg).boxed();
                let deadline = tokio::time::sleep(Duration::from_secs(25));
                tokio::pin!(deadline);
                let mut listed = false;
                loop {
                    tokio::select! {
                        _ = &mut deadline => return counts,
                        event = stream.try_next() => match event {
                            Ok(Some(Event::InitDone)) => listed = true,
                            Ok(Some(Event::Apply(s))) if listed => {
                                *counts.entry(format!("{name}/{}", s.namespace().unwrap_or_default())).or_default() += 1;
                            }
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => return counts,
                        }
                    }
                }
            })
        })
        .collect()
}

#[tokio::test]
async fn shards_fail_over_within_a_lease_period_without_duplicate_writes() {
    let cp = regcred_testenv::shared();
    let hub = cp.client().await.unwrap();
    Api::<Namespace>::all(hub.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap())
        .await
        .unwrap();
    let mut planes: Vec<ControlPlane> = Vec::new();
    let mut spokes = BTreeMap::new();
    for (i, name) in SPOKES.iter().enumerate() {
        let spoke = fleet::start_spoke().unwrap_or_else(|e| panic!("{e:#}"));
        let client = spoke.client().await.unwrap();
        for ns in NAMESPACES {
            Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
                .await
                .unwrap();
        }
        let kubeconfig = fleet::hub_identity(&spoke).await.unwrap();
        let secret = if i % 2 == 0 {
            fleet::capi_secret(NS, name, &kubeconfig, &json!({"shards": "yes"}))
        } else {
            fleet::argo_secret(NS, name, &kubeconfig, &json!({"shards": "yes"})).unwrap()
        };
        fleet::apply_secret(&hub, &secret).await.unwrap();
        spokes.insert(*name, client);
        planes.push(spoke);
    }
    put_login(&hub, "shards-password-1").await;
    let cred = json!({
        "apiVersion": "regcred.dev/v1beta1", "kind": "ClusterRegistryCredential",
        "metadata": {"name": "shards"},
        "spec": {
            "provider": {"basic": {"registry": REGISTRY, "secretRef": {"name": "shards-login"}}},
            "secret": {"name": "shards-pull"},
            "namespaces": NAMESPACES,
            "clusters": {"local": false, "selector": {"matchLabels": {"shards": "yes"}}}
        }
    });
    Api::<regcred::api::ClusterRegistryCredential>::all(hub.clone())
        .patch("shards", &PatchParams::apply("regcred-test"), &Patch::Apply(&cred))
        .await
        .unwrap();

    let mut replicas = [Some(start("replica-a")), Some(start("replica-b"))];
    wait_until("every spoke served", Duration::from_secs(60), async || {
        all_hold(&spokes, "shards-password-1").await.then_some(())
    })
    .await;
    // The shards are shared: each spoke is served by exactly one replica,
    // and each replica holds its fair share of the 8 shards.
    let op = |replicas: &[Option<Operator>; 2], i: usize| served(replicas[i].as_ref().unwrap());
    let shards = |r: &Operator| {
        let m = r.metrics().unwrap_or_default();
        m.lines().find(|l| l.starts_with("regcred_fleet_shards ")).and_then(|l| l.rsplit(' ').next().map(String::from))
    };
    let (serving, _) = wait_until("the shards split between the replicas", Duration::from_secs(60), async || {
        if replicas.iter().flatten().any(|r| shards(r).as_deref() != Some("4")) {
            return None;
        }
        let serving = [op(&replicas, 0), op(&replicas, 1)];
        let mut all: Vec<&String> = serving.iter().flatten().collect();
        all.sort();
        all.dedup();
        (all.len() == SPOKES.len() && serving[0].len() + serving[1].len() == SPOKES.len()).then_some(serving)
    })
    .await;
    println!("replica-a serves {:?}, replica-b serves {:?}", serving[0], serving[1]);
    assert!(serving.iter().all(|s| !s.is_empty()), "both replicas serve spokes: {serving:?}");
    // The replica serving the most spokes dies; the other takes them over.
    let victim = if serving[0].len() >= serving[1].len() { 0 } else { 1 };
    let survivor = 1 - victim;
    let writes = count_writes(&spokes);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    drop(replicas[victim].take());
    let survivor_op = replicas[survivor].as_ref().unwrap();
    wait_until("the survivor serves every spoke", Duration::from_secs(30), async || {
        (served(survivor_op).len() == SPOKES.len()).then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    println!(
        "the survivor took over {:?} {:.1}s after the other replica died (Lease {LEASE_SECONDS}s)",
        serving[victim],
        takeover.as_secs_f64()
    );
    assert!(
        takeover <= Duration::from_secs(LEASE_SECONDS + 3),
        "taken over within a Lease period (and a renewal tick): {takeover:?}"
    );
    // Nothing was rewritten by the takeover.
    let mut counts = BTreeMap::new();
    for w in writes {
        counts.extend(w.await.unwrap());
    }
    assert!(counts.is_empty(), "the takeover rewrote Secrets: {counts:?}");

    // A rotation after the takeover: every Secret written exactly once.
    let writes = count_writes(&spokes);
    tokio::time::sleep(Duration::from_secs(1)).await;
    put_login(&hub, "shards-password-2").await;
    wait_until("the rotation everywhere", Duration::from_secs(30), async || {
        all_hold(&spokes, "shards-password-2").await.then_some(())
    })
    .await;
    let mut counts = BTreeMap::new();
    for w in writes {
        counts.extend(w.await.unwrap());
    }
    assert_eq!(counts.len(), SPOKES.len() * NAMESPACES.len(), "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "each Secret written once: {counts:?}");
    drop(planes);
}
