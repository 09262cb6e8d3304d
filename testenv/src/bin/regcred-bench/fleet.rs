//! `--scenario fleet`: one regcred (the hub) writing one
//! ClusterRegistryCredential's pull Secret into `--spokes` other control
//! planes (4), each with `--namespaces` (1,000) labelled namespaces. Half the
//! spokes are registered as Cluster API kubeconfig Secrets, half as Argo CD
//! cluster Secrets; the credential (`basic`) selects every spoke, every
//! labelled namespace, and not the hub itself (`local: false`).
//!
//! Measured (docs/benchmarks.md, "Scenario: fleet"): convergence from the
//! apply, and a rotation of the source Secret, against the limit (the same
//! writes sent by a plain client to every spoke at once, at regcred's
//! concurrency); provider calls per mint; new-namespace latency in the
//! spokes; regcred's RSS per 1,000 spoke namespaces; idle writes; and a
//! spoke whose apiserver is killed: the others' rotation time against the
//! healthy one, then the spoke's own convergence once it is back.
//!
//! Every figure comes from the bench's own watches of each spoke (full
//! Secrets, so each change is stamped with the password it carries) and
//! regcred's `/metrics`. The run fails on behaviour (no convergence, more
//! than one provider call per mint, idle writes), never on a time.

use std::collections::BTreeMap;

use super::*;
use regcred_testenv::fleet;

const REGISTRY: &str = "fleet.registry.example";
const CREDENTIAL: &str = "bench-fleet";
const PULL: &str = "bench-fleet-pull";
const SOURCE: &str = "bench-fleet-login";
const USERNAME: &str = "bench-fleet";
/// Label on the kubeconfig Secrets the credential selects the spokes by.
const FLEET_LABEL: &str = "regcred-bench/fleet";
/// Where the hub's identity lives in each spoke.
/// The limit's Secret in each namespace.
const LIMIT_PULL: &str = "bench-limit-0";
/// The longest the bench waits for regcred to serve the spokes once they
/// are registered, and a spoke that came back once it is.
const SPOKE_TIMEOUT: Duration = Duration::from_secs(180);

/// The pull Secret's password for generation `g` of the source Secret (fake,
/// recorded for the leak check).
fn password(g: u32) -> String {
    format!("bench-fleet-password-{g}")
}

/// What the bench's watches of one spoke saw, stamped on arrival.
#[derive(Default)]
struct SpokeSeen {
    /// The pull Secret, by namespace.
    secrets: HashMap<String, Held>,
    /// `default` ServiceAccounts, by namespace: since when it lists the pull
    /// Secret (`None`: it does not).
    accounts: HashMap<String, Option<Instant>>,
}

/// A pull Secret as last seen.
struct Held {
    /// When the password it holds arrived.
    changed: Instant,
    password: String,
}

/// One spoke control plane and the bench's view of it.
struct Spoke {
    name: String,
    cp: ControlPlane,
    client: Client,
    seen: Arc<Mutex<SpokeSeen>>,
    watches: Vec<tokio::task::AbortHandle>,
    /// Namespaces the credential selects here.
    targets: Vec<String>,
}

impl Spoke {
    /// (Re)starts the bench's watches of this spoke with an empty view.
    fn watch(&mut self) {
        for w in self.watches.drain(..) {
            w.abort();
        }
        self.seen = Arc::default();
        self.watches = spawn_spoke_watches(&self.client, &self.seen, &self.name);
    }
}

/// The password in a pull Secret for [`REGISTRY`].
fn password_in(secret: &Secret) -> Option<String> {
    let data = secret.data.as_ref()?.get(".dockerconfigjson")?;
    let v: serde_json::Value = serde_json::from_slice(&data.0).ok()?;
    Some(v["auths"][REGISTRY]["password"].as_str()?.to_string())
}

/// Watches a spoke's pull Secrets (with their passwords) and `default`
/// ServiceAccounts into `seen`; returns the tasks, to stop them.
fn spawn_spoke_watches(client: &Client, seen: &Arc<Mutex<SpokeSeen>>, spoke: &str) -> Vec<tokio::task::AbortHandle> {
    // regcred's Secrets and the limit's, so the apiserver feeds the same
    // watchers in both runs; only the pull Secret is recorded.
    let secrets =
        watcher::watcher(Api::<Secret>::all(client.clone()), watcher::Config::default().labels(WATCHED).any_semantic())
            .default_backoff();
    let s = seen.clone();
    let what = format!("Secrets in {spoke}");
    let secrets = tokio::spawn(async move {
        let mut stream = std::pin::pin!(secrets);
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            match event {
                Ok(Event::Apply(o)) | Ok(Event::InitApply(o)) if o.name_any() == PULL => {
                    let Some(pw) = password_in(&o) else { continue };
                    let ns = o.namespace().unwrap_or_default();
                    let mut seen = s.lock().unwrap();
                    match seen.secrets.get_mut(&ns) {
                        Some(h) if h.password == pw => {}
                        Some(h) => *h = Held { changed: now, password: pw },
                        None => {
                            seen.secrets.insert(ns, Held { changed: now, password: pw });
                        }
                    }
                }
                Ok(Event::Delete(o)) if o.name_any() == PULL => {
                    s.lock().unwrap().secrets.remove(&o.namespace().unwrap_or_default());
                }
                Ok(_) => {}
                Err(e) => watch_error(&what, &e),
            }
        }
    });
    let sas = watcher::watcher(
        Api::<ServiceAccount>::all(client.clone()),
        watcher::Config::default().fields("metadata.name=default"),
    )
    .default_backoff();
    let s = seen.clone();
    let what = format!("ServiceAccounts in {spoke}");
    let sas = tokio::spawn(async move {
        let mut stream = std::pin::pin!(sas);
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            match event {
                Ok(Event::Apply(sa)) | Ok(Event::InitApply(sa)) => {
                    let lists = sa.image_pull_secrets.iter().flatten().any(|r| r.name == PULL);
                    let mut seen = s.lock().unwrap();
                    let entry = seen.accounts.entry(sa.namespace().unwrap_or_default()).or_default();
                    match (lists, *entry) {
                        (true, None) => *entry = Some(now),
                        (false, Some(_)) => *entry = None,
                        _ => {}
                    }
                }
                Ok(Event::Delete(sa)) => {
                    s.lock().unwrap().accounts.remove(&sa.namespace().unwrap_or_default());
                }
                Ok(_) => {}
                Err(e) => watch_error(&what, &e),
            }
        }
    });
    vec![secrets.abort_handle(), sas.abort_handle()]
}

/// When every target namespace of the spokes `which` held `password` in its
/// pull Secret (the latest arrival); `None` while one does not.
fn secrets_hold(spokes: &[Spoke], which: &[usize], password: &str) -> Option<Instant> {
    let mut last: Option<Instant> = None;
    for &i in which {
        let spoke = &spokes[i];
        let seen = spoke.seen.lock().unwrap();
        for ns in &spoke.targets {
            let held = seen.secrets.get(ns)?;
            if held.password != password {
                return None;
            }
            last = last.max(Some(held.changed));
        }
    }
    last
}

/// When every target namespace's `default` ServiceAccount in `which` listed
/// the pull Secret (the latest); `None` while one does not.
fn accounts_list(spokes: &[Spoke], which: &[usize]) -> Option<Instant> {
    let mut last: Option<Instant> = None;
    for &i in which {
        let spoke = &spokes[i];
        let seen = spoke.seen.lock().unwrap();
        for ns in &spoke.targets {
            last = last.max(Some((*seen.accounts.get(ns)?)?));
        }
    }
    last
}

/// Whether no pull Secret and no ServiceAccount entry of it is left in any
/// spoke (after the credential's deletion).
fn all_removed(spokes: &[Spoke]) -> bool {
    spokes.iter().all(|s| {
        let seen = s.seen.lock().unwrap();
        seen.secrets.is_empty() && seen.accounts.values().all(Option::is_none)
    })
}

/// Registers spoke `i` in the hub: even ones in Cluster API's format, odd
/// ones in Argo CD's (`regcred_testenv::fleet`).
async fn register(hub: &Client, i: usize, cluster: &str, kubeconfig: &str) -> Result<()> {
    let labels = json!({FLEET_LABEL: "yes"});
    let secret = if i.is_multiple_of(2) {
        fleet::capi_secret(CLUSTER_NS, cluster, kubeconfig, &labels)
    } else {
        fleet::argo_secret(CLUSTER_NS, cluster, kubeconfig, &labels)?
    };
    fleet::apply_secret(hub, &secret).await.map(drop)
}

async fn apply_hub_secret(hub: &Client, mut s: serde_json::Value) -> Result<()> {
    s["apiVersion"] = json!("v1");
    s["kind"] = json!("Secret");
    let name = s["metadata"]["name"].as_str().context("a name")?.to_string();
    Api::<Secret>::namespaced(hub.clone(), CLUSTER_NS)
        .patch(&name, &PatchParams::apply("regcred-bench").force(), &Patch::Apply(&s))
        .await
        .with_context(|| format!("writing Secret {CLUSTER_NS}/{name} in the hub"))?;
    Ok(())
}

/// Writes generation `g` of the source Secret (a rotation, for `g` > 1).
async fn put_source(hub: &Client, g: u32) -> Result<()> {
    let pw = password(g);
    record_secret(&pw);
    let s = json!({"metadata": {"name": SOURCE, "namespace": CLUSTER_NS},
                   "stringData": {"username": USERNAME, "password": pw}});
    apply_hub_secret(hub, s).await
}

fn crcred_api(hub: &Client) -> Api<kube::api::DynamicObject> {
    Api::all_with(
        hub.clone(),
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("regcred.dev", "v1beta1", "ClusterRegistryCredential"),
            "clusterregistrycredentials",
        ),
    )
}

async fn apply_credential(hub: &Client) -> Result<()> {
    let obj = json!({
        "apiVersion": "regcred.dev/v1beta1", "kind": "ClusterRegistryCredential",
        "metadata": {"name": CREDENTIAL},
        "spec": {
            "provider": {"basic": {"registry": REGISTRY, "secretRef": {"name": SOURCE}}},
            "secret": {"name": PULL},
            "namespaceSelector": {"matchLabels": {(TARGET_LABEL): "yes"}},
            "clusters": {"selector": {"matchLabels": {(FLEET_LABEL): "yes"}}, "local": false}
        }
    });
    crcred_api(hub)
        .patch(CREDENTIAL, &PatchParams::apply("regcred-bench").force(), &Patch::Apply(&obj))
        .await
        .context("applying the ClusterRegistryCredential")?;
    Ok(())
}

/// `status.clusters` summed over shards: (desired, synced, namespaces,
/// failed clusters with their reasons).
async fn clusters_status(hub: &Client) -> Result<Option<(i64, i64, i64, Vec<String>)>> {
    let Some(obj) = crcred_api(hub).get_opt(CREDENTIAL).await? else { return Ok(None) };
    let Some(shards) = obj.data["status"]["clusters"].as_object().cloned() else { return Ok(None) };
    let sum = |field: &str| shards.values().map(|s| s[field].as_i64().unwrap_or(0)).sum::<i64>();
    let failed = shards
        .values()
        .flat_map(|s| s["failed"].as_array().cloned().unwrap_or_default())
        .map(|f| format!("{} ({})", f["cluster"].as_str().unwrap_or("?"), f["reason"].as_str().unwrap_or("?")))
        .collect();
    Ok(Some((sum("desired"), sum("synced"), sum("namespaces"), failed)))
}

/// Polls `status.clusters` every 250 ms until it says `synced` of `desired`
/// clusters hold the Secret in `namespaces` namespaces with no failure.
async fn wait_status(hub: &Client, desired: i64, namespaces: i64, timeout: Duration) -> Result<Instant> {
    let start = Instant::now();
    loop {
        if let Some((d, s, n, failed)) = clusters_status(hub).await?
            && (d, s, n) == (desired, desired, namespaces)
            && failed.is_empty()
        {
            return Ok(Instant::now());
        }
        if start.elapsed() > timeout {
            bail!(
                "status.clusters did not report {desired} of {desired} clusters synced in {namespaces} namespaces \
                 within {timeout:?}: {:?}",
                clusters_status(hub).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The sum of a metric's samples whose line passes `filter`.
fn metric_sum(text: &str, name: &str, filter: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| filter(l))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Provider calls so far (`regcred_refreshes_total`, every result).
fn provider_calls(operator: &Operator) -> Result<u64> {
    Ok(metric_sum(&operator.metrics()?, "regcred_refreshes_total", |_| true) as u64)
}

/// `regcred_kube_requests_total` by method (hub and spokes together).
fn requests_by_method(operator: &Operator) -> Result<BTreeMap<String, u64>> {
    let text = operator.metrics()?;
    let mut out = BTreeMap::new();
    for l in text.lines().filter(|l| l.starts_with("regcred_kube_requests_total{")) {
        let Some(method) = l.split("method=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
        let v = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        *out.entry(method.to_string()).or_insert(0) += v as u64;
    }
    Ok(out)
}

/// The write requests (every method but GET) between two readings, total
/// and by method.
fn writes_between(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> (u64, String) {
    let mut total = 0;
    let mut parts = Vec::new();
    for (method, v) in after.iter().filter(|(m, _)| *m != "GET") {
        let d = v - before.get(method).copied().unwrap_or(0);
        if d > 0 {
            total += d;
            parts.push(format!("{method} {d}"));
        }
    }
    (total, if parts.is_empty() { "none".into() } else { parts.join(", ") })
}

/// Lines logged at ERROR so far.
fn error_lines(operator: &Operator) -> usize {
    operator.log_text().lines().filter(|l| l.contains(" ERROR ")).count()
}

/// `regcred_cluster_up{cluster}` and the sum of
/// `regcred_cluster_managed_secrets` over clusters.
fn cluster_metrics(operator: &Operator, clusters: &[String]) -> Result<(Vec<Option<i64>>, u64)> {
    let text = operator.metrics()?;
    let up = clusters.iter().map(|c| cluster_up_in(&text, c)).collect();
    let managed = metric_sum(&text, "regcred_cluster_managed_secrets", |_| true) as u64;
    Ok((up, managed))
}

/// `regcred_cluster_up{cluster}` in a `/metrics` text.
fn cluster_up_in(text: &str, cluster: &str) -> Option<i64> {
    let label = format!("cluster=\"{cluster}\"");
    text.lines()
        .find(|l| l.starts_with("regcred_cluster_up{") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as i64)
}

/// Polls every 250 ms, from now, until `status.clusters` lists `cluster` as
/// failed and `regcred_cluster_up` is 0 for it (at most 120 s): when it saw
/// both, and the failures listed then.
fn reported_down(
    hub: Client,
    metrics_url: String,
    cluster: String,
) -> tokio::task::JoinHandle<Option<(Instant, String)>> {
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let up = regcred_testenv::operator::http_get(&format!("{metrics_url}/metrics"))
                .ok()
                .and_then(|(_, text)| cluster_up_in(&text, &cluster));
            if up == Some(0)
                && let Ok(Some((_, _, _, failed))) = clusters_status(&hub).await
                && failed.iter().any(|f| f.starts_with(&format!("{cluster} (")))
            {
                return Some((Instant::now(), failed.join(", ")));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        None
    })
}

/// CPU seconds of every process of the fleet run.
#[derive(Clone, Copy, Default)]
struct FleetCpu {
    apiservers: f64,
    etcds: f64,
    controller_managers: f64,
    operator: f64,
    bench: f64,
}

impl FleetCpu {
    /// Now; a process that is not running (a killed apiserver) counts 0.
    fn now(planes: &[&ControlPlane], operator: u32) -> FleetCpu {
        let of = |cp: &ControlPlane, name: &str| cp.pid(name).and_then(|p| cpu_seconds(p).ok()).unwrap_or(0.0);
        let sum = |name: &str| planes.iter().map(|&cp| of(cp, name)).sum::<f64>();
        FleetCpu {
            apiservers: sum("kube-apiserver"),
            etcds: sum("etcd"),
            controller_managers: sum("kube-controller-manager"),
            operator: cpu_seconds(operator).unwrap_or(0.0),
            bench: cpu_seconds(std::process::id()).unwrap_or(0.0),
        }
    }

    fn since(self, b: FleetCpu) -> FleetCpu {
        FleetCpu {
            apiservers: self.apiservers - b.apiservers,
            etcds: self.etcds - b.etcds,
            controller_managers: self.controller_managers - b.controller_managers,
            operator: self.operator - b.operator,
            bench: self.bench - b.bench,
        }
    }

    fn busy(self) -> f64 {
        self.apiservers + self.etcds + self.controller_managers + self.operator
    }

    fn show(self, with_operator: bool) -> String {
        let operator = if with_operator { format!(", regcred {:.1} s", self.operator) } else { String::new() };
        format!(
            "apiservers {:.1} s, etcds {:.1} s, controller-managers {:.1} s{operator}, bench {:.1} s",
            self.apiservers, self.etcds, self.controller_managers, self.bench
        )
    }
}

fn planes<'a>(hub: &'a ControlPlane, spokes: &'a [Spoke]) -> Vec<&'a ControlPlane> {
    std::iter::once(hub).chain(spokes.iter().map(|s| &s.cp)).collect()
}

/// Waits until every control plane and regcred are quiet together (under
/// `per_plane` CPU-seconds per control plane in half a second; at most 30 s),
/// so a timed phase does not pay for what the previous one left behind.
async fn wait_for_quiet_fleet(planes: &[&ControlPlane], operator: u32) {
    // Five idle control planes use more than one does: the threshold is per
    // control plane (2 % of a core each).
    let threshold = 0.01 * planes.len() as f64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let before = FleetCpu::now(planes, operator);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let used = FleetCpu::now(planes, operator).since(before).busy();
        if used < threshold {
            return;
        }
        if Instant::now() > deadline {
            println!("    (the machine did not settle within 30 s: {used:.2} CPU-s in the last 0.5 s)");
            return;
        }
    }
}

/// One limit request.
enum Work {
    /// Create the limit's Secret in a namespace.
    Create(String),
    /// List it in the namespace's `default` ServiceAccount.
    Account(String),
    /// Update its data (a rotation).
    Update(String),
}

/// Runs the streams `work(spoke)` returns on every spoke at once, each
/// stream with `concurrency` requests in flight, and returns how long the
/// slowest took.
async fn on_every_spoke(
    spokes: &[Spoke],
    concurrency: usize,
    work: impl Fn(&Spoke) -> Vec<Vec<Work>>,
) -> Result<Duration> {
    let t = Instant::now();
    let runs = spokes.iter().flat_map(|spoke| work(spoke).into_iter().map(move |items| (spoke, items))).map(
        |(spoke, items)| {
            let client = spoke.client.clone();
            for_each_concurrent(items, concurrency, move |w| {
                let client = client.clone();
                async move {
                    match w {
                        Work::Create(ns) => {
                            Api::<Secret>::namespaced(client, &ns)
                                .create(&PostParams::default(), &limit_secret(&ns, LIMIT_PULL))
                                .await
                                .with_context(|| format!("creating Secret {ns}/{LIMIT_PULL}"))?;
                        }
                        Work::Account(ns) => {
                            let patch = json!({"imagePullSecrets": [{"name": LIMIT_PULL}]});
                            Api::<ServiceAccount>::namespaced(client, &ns)
                                .patch("default", &PatchParams::default(), &Patch::Merge(&patch))
                                .await
                                .with_context(|| format!("patching ServiceAccount {ns}/default"))?;
                        }
                        Work::Update(ns) => {
                            let mut secret = limit_secret(&ns, LIMIT_PULL);
                            let data =
                                secret.data.as_mut().and_then(|d| d.get_mut(".dockerconfigjson")).context("no data")?;
                            // The same size, other bytes: a new token.
                            let rotated =
                                String::from_utf8_lossy(&data.0).replace("0123456789abcdef", "fedcba9876543210");
                            let patch = json!({"data": {".dockerconfigjson": ByteString(rotated.into_bytes())}});
                            Api::<Secret>::namespaced(client, &ns)
                                .patch(LIMIT_PULL, &PatchParams::default(), &Patch::Merge(&patch))
                                .await
                                .with_context(|| format!("updating Secret {ns}/{LIMIT_PULL}"))?;
                        }
                    }
                    Ok(())
                }
            })
        },
    );
    futures::future::try_join_all(runs).await?;
    Ok(t.elapsed())
}

/// Removes what the limit wrote: its Secrets and ServiceAccount entries.
async fn limit_cleanup(spokes: &[Spoke], accounts: bool) -> Result<()> {
    let runs = spokes.iter().map(|spoke| {
        let client = spoke.client.clone();
        for_each_concurrent(spoke.targets.clone(), 32, move |ns| {
            let client = client.clone();
            async move {
                if accounts {
                    let patch = json!({"imagePullSecrets": null});
                    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
                        .patch("default", &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .with_context(|| format!("restoring ServiceAccount {ns}/default"))?;
                }
                match Api::<Secret>::namespaced(client, &ns).delete(LIMIT_PULL, &DeleteParams::default()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(e) => Err(e).with_context(|| format!("deleting Secret {ns}/{LIMIT_PULL}")),
                }
            }
        })
    });
    futures::future::try_join_all(runs).await?;
    Ok(())
}

/// The limit for convergence: in every spoke at once, a Secret create and a
/// `default` ServiceAccount patch per namespace (the writes regcred makes),
/// as two streams of `concurrency` requests in flight per spoke, as regcred
/// writes (a credential's Secret writes, and its ServiceAccount writer,
/// each `--write-concurrency` per cluster). Then removed.
async fn limit_converge(
    hub: &ControlPlane,
    spokes: &[Spoke],
    concurrency: usize,
    operator: u32,
) -> Result<(Duration, FleetCpu)> {
    let all = planes(hub, spokes);
    let before = FleetCpu::now(&all, operator);
    let took = on_every_spoke(spokes, concurrency, |s| {
        vec![
            s.targets.iter().map(|ns| Work::Create(ns.clone())).collect(),
            s.targets.iter().map(|ns| Work::Account(ns.clone())).collect(),
        ]
    })
    .await?;
    let cpu = FleetCpu::now(&all, operator).since(before);
    limit_cleanup(spokes, true).await?;
    Ok((took, cpu))
}

/// The limit for a rotation: in every spoke at once, one merge patch of a
/// Secret's data per namespace (what a rotation sends), `concurrency` in
/// flight per spoke; the Secrets are created before (untimed) and removed
/// after.
async fn limit_rotate(spokes: &[Spoke], concurrency: usize) -> Result<Duration> {
    on_every_spoke(spokes, concurrency, |s| vec![s.targets.iter().map(|ns| Work::Create(ns.clone())).collect()])
        .await?;
    let took =
        on_every_spoke(spokes, concurrency, |s| vec![s.targets.iter().map(|ns| Work::Update(ns.clone())).collect()])
            .await?;
    limit_cleanup(spokes, false).await?;
    Ok(took)
}

/// One convergence round.
struct Round {
    limit: Duration,
    limit_cpu: FleetCpu,
    convergence: Duration,
    secrets: Duration,
    status: Duration,
    cpu: FleetCpu,
    calls: u64,
    writes: u64,
    writes_by_method: String,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    let mid = v.len() / 2;
    if v.is_empty() {
        Duration::ZERO
    } else if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2
    } else {
        v[mid]
    }
}

/// Runs the scenario (see the module documentation) and prints its table.
pub(super) async fn run(args: Args) -> Result<()> {
    let n = args.namespaces;
    let s = args.spokes;
    let limit_concurrency = args.limit_concurrency.unwrap_or(args.write_concurrency.max(1));
    let started = Instant::now();
    let total = s * n;

    phase(&format!("starting the hub and {s} spoke control planes (each etcd, kube-apiserver, controller-manager)"));
    let hub_start = tokio::task::spawn_blocking(|| ControlPlane::start(Options::default()));
    let spoke_starts: Vec<_> = (0..s)
        .map(|_| tokio::task::spawn_blocking(|| ControlPlane::start(Options { crd_dir: None, ..Options::default() })))
        .collect();
    let hub_cp = Arc::new(hub_start.await??);
    let mut spokes = Vec::new();
    for (i, start) in spoke_starts.into_iter().enumerate() {
        let cp = start.await??;
        let client = cp.client().await?;
        let name = format!("spoke-{i}");
        let targets = (0..n).map(target_ns).collect();
        let mut spoke = Spoke { name, cp, client, seen: Arc::default(), watches: Vec::new(), targets };
        spoke.watch();
        spokes.push(spoke);
    }
    // Dropped before the control planes: their watches failing then is expected.
    let _stopping = Stopping;
    let hub = hub_cp.client().await?;
    let names: Vec<String> = spokes.iter().map(|s| s.name.clone()).collect();
    let every: Vec<usize> = (0..s).collect();

    phase(&format!("creating {n} namespaces in each spoke and waiting for their default ServiceAccounts"));
    create_namespace(&hub, CLUSTER_NS).await?;
    let creates = spokes.iter().map(|spoke| {
        let client = spoke.client.clone();
        for_each_concurrent(spoke.targets.clone(), 32, move |ns| {
            let client = client.clone();
            async move { create_namespace(&client, &ns).await }
        })
    });
    futures::future::try_join_all(creates).await?;
    until_every("the default ServiceAccounts", Duration::from_secs(600), Duration::from_millis(200), || {
        spokes
            .iter()
            .all(|spoke| {
                let seen = spoke.seen.lock().unwrap();
                spoke.targets.iter().all(|ns| seen.accounts.contains_key(ns))
            })
            .then_some(())
    })
    .await?;
    let mut kubeconfigs = Vec::new();
    for spoke in &spokes {
        kubeconfigs.push(fleet::hub_identity(&spoke.cp).await?);
    }

    phase("starting regcred in the hub");
    put_source(&hub, 1).await?;
    let regcred = args.regcred.clone();
    let operator_args = operator_args(&args);
    let cp2 = hub_cp.clone();
    let operator = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = operator_args.iter().map(String::as_str).collect();
        Operator::start(&cp2, &regcred, CLUSTER_NS, &a)
    })
    .await??;
    let pid = operator.pid();
    wait_for_quiet_fleet(&planes(&hub_cp, &spokes), pid).await;
    let (_, rss_alone) = memory_kib(pid)?;

    phase(&format!(
        "registering the {s} spokes ({} Cluster API, {} Argo CD) and waiting until regcred serves them",
        s.div_ceil(2),
        s / 2
    ));
    let t = Instant::now();
    for (i, (spoke, kubeconfig)) in spokes.iter().zip(&kubeconfigs).enumerate() {
        register(&hub, i, &spoke.name, kubeconfig).await?;
    }
    until_every("regcred_cluster_up = 1 for every spoke", SPOKE_TIMEOUT, Duration::from_millis(100), || {
        let (up, _) = cluster_metrics(&operator, &names).ok()?;
        up.iter().all(|u| *u == Some(1)).then_some(())
    })
    .await
    .with_context(|| {
        format!("regcred did not connect to every spoke; operator log: {}", operator.log_path().display())
    })?;
    let connect = t.elapsed();
    println!("    every spoke up (caches filled) {} after registration", secs(connect));
    wait_for_quiet_fleet(&planes(&hub_cp, &spokes), pid).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, rss_caches) = memory_kib(pid)?;

    phase(&format!(
        "for comparison: {n} Secret updates in each spoke at once, {limit_concurrency} in flight per spoke"
    ));
    wait_for_quiet_fleet(&planes(&hub_cp, &spokes), pid).await;
    let limit_update = limit_rotate(&spokes, limit_concurrency).await?;
    println!("    {total} Secret updates in {}", secs(limit_update));

    let converge_timeout = Duration::from_secs(120) + Duration::from_millis(30 * total as u64);
    let crcreds = crcred_api(&hub);
    let mut rounds: Vec<Round> = Vec::new();
    for r in 1..=args.rounds {
        phase(&format!(
            "round {r}/{}: the limit ({n} Secret creates and {n} ServiceAccount patches in each of {s} spokes at once), \
             then regcred converges",
            args.rounds
        ));
        wait_for_quiet_fleet(&planes(&hub_cp, &spokes), pid).await;
        let (limit, limit_cpu) = limit_converge(&hub_cp, &spokes, limit_concurrency, pid).await?;
        println!("    limit: {total} Secrets and {total} ServiceAccount patches in {}", secs(limit));
        wait_until_still(&operator).await?;
        wait_for_quiet_fleet(&planes(&hub_cp, &spokes), pid).await;
        let calls_before = provider_calls(&operator)?;
        let requests_before = requests_by_method(&operator)?;
        let cpu_before = FleetCpu::now(&planes(&hub_cp, &spokes), pid);
        let t0 = Instant::now();
        apply_credential(&hub).await?;
        let pw = password(1);
        let converged = until_every("convergence in every spoke", converge_timeout, Duration::from_millis(100), || {
            let secrets = secrets_hold(&spokes, &every, &pw)?;
            Some((secrets, accounts_list(&spokes, &every)?))
        })
        .await
        .with_context(|| format!("regcred did not converge; operator log: {}", operator.log_path().display()))?;
        let cpu = FleetCpu::now(&planes(&hub_cp, &spokes), pid).since(cpu_before);
        let status_at = wait_status(&hub, s as i64, total as i64, converge_timeout).await?;
        let (secrets_at, accounts_at) = converged;
        let convergence = secrets_at.max(accounts_at).saturating_duration_since(t0);
        wait_until_still(&operator).await?;
        let calls = provider_calls(&operator)? - calls_before;
        let (writes, writes_by_method) = writes_between(&requests_before, &requests_by_method(&operator)?);
        println!(
            "    regcred: {total} Secrets and {total} ServiceAccounts in {} (ratio {:.2}); status synced at {}; \
             {calls} provider call(s); {writes} write requests ({writes_by_method})",
            secs(convergence),
            convergence.as_secs_f64() / limit.as_secs_f64(),
            secs(status_at - t0)
        );
        // Cross-check with the apiservers, not only the watches.
        for spoke in &spokes {
            let listed =
                Api::<Secret>::all(spoke.client.clone()).list_metadata(&ListParams::default().labels(MANAGED)).await?;
            let pulls = listed.items.iter().filter(|o| o.name_any() == PULL).count();
            if pulls != spoke.targets.len() {
                bail!("{} lists {pulls} pull Secrets, expected {}", spoke.name, spoke.targets.len());
            }
        }
        rounds.push(Round {
            limit,
            limit_cpu,
            convergence,
            secrets: secrets_at.saturating_duration_since(t0),
            status: status_at.saturating_duration_since(t0),
            cpu,
            calls,
            writes,
            writes_by_method,
        });
        if r < args.rounds {
            // deletionPolicy Delete: the next round starts from scratch.
            crcreds.delete(CREDENTIAL, &DeleteParams::default()).await?;
            until_every(
                "regcred to remove its Secrets and entries",
                converge_timeout,
                Duration::from_millis(100),
                || all_removed(&spokes).then_some(()),
            )
            .await
            .with_context(|| format!("regcred did not clean up; operator log: {}", operator.log_path().display()))?;
            wait_gone(&crcreds, CREDENTIAL, converge_timeout).await?;
        }
    }
    wait_for_quiet_fleet(&planes(&hub_cp, &spokes), pid).await;
    let (_, rss_converged) = memory_kib(pid)?;
    let (_, managed_secrets) = cluster_metrics(&operator, &names)?;

    phase("rotation: the source Secret changes");
    wait_until_still(&operator).await?;
    wait_for_quiet_fleet(&planes(&hub_cp, &spokes), pid).await;
    let calls_before = provider_calls(&operator)?;
    let requests_before = requests_by_method(&operator)?;
    let t0 = Instant::now();
    put_source(&hub, 2).await?;
    let pw2 = password(2);
    let rotated = until_every("the rotation in every spoke", converge_timeout, Duration::from_millis(100), || {
        secrets_hold(&spokes, &every, &pw2)
    })
    .await
    .with_context(|| format!("the rotation did not roll out; operator log: {}", operator.log_path().display()))?;
    let rotation = rotated.saturating_duration_since(t0);
    let others: Vec<usize> = (0..s - 1).collect();
    let rotation_others = secrets_hold(&spokes, &others, &pw2).map(|t| t.saturating_duration_since(t0));
    wait_until_still(&operator).await?;
    let rotation_calls = provider_calls(&operator)? - calls_before;
    let (rotation_writes, rotation_by_method) = writes_between(&requests_before, &requests_by_method(&operator)?);
    println!(
        "    {total} Secrets rotated in {}, {rotation_calls} provider call(s), {rotation_writes} write requests \
         ({rotation_by_method})",
        secs(rotation)
    );

    phase(&format!("new-namespace latency: {} namespaces created one by one, spread over the spokes", args.samples));
    let mut ns_latency = Vec::new();
    for i in 0..args.samples {
        let k = i % s;
        let ns = format!("bench-new-{i:04}");
        let t = Instant::now();
        create_namespace(&spokes[k].client, &ns).await?;
        let seen = spokes[k].seen.clone();
        let done =
            until(&format!("the Secret in new namespace {}/{ns}", spokes[k].name), Duration::from_secs(30), || {
                let seen = seen.lock().unwrap();
                seen.secrets.get(&ns).filter(|h| h.password == pw2).map(|h| h.changed)
            })
            .await
            .with_context(|| format!("operator log: {}", operator.log_path().display()))?;
        ns_latency.push(done.saturating_duration_since(t));
        spokes[k].targets.push(ns);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ns_latency.sort();

    phase(&format!("idle: regcred's write requests during {}s with nothing changing", args.idle.as_secs()));
    wait_until_still(&operator).await?;
    let idle_calls_before = provider_calls(&operator)?;
    let idle_before = requests_by_method(&operator)?;
    let idle_cpu_before = cpu_seconds(pid)?;
    tokio::time::sleep(args.idle).await;
    let (idle_writes, idle_by_method) = writes_between(&idle_before, &requests_by_method(&operator)?);
    let idle_reads =
        requests_by_method(&operator)?.get("GET").copied().unwrap_or(0) - idle_before.get("GET").copied().unwrap_or(0);
    let idle_cpu = cpu_seconds(pid)? - idle_cpu_before;
    let idle_calls = provider_calls(&operator)? - idle_calls_before;

    let down = s - 1;
    phase(&format!("spoke down: {}'s apiserver killed, then a rotation", spokes[down].name));
    wait_for_quiet_fleet(&planes(&hub_cp, &spokes), pid).await;
    for w in spokes[down].watches.drain(..) {
        w.abort();
    }
    let requests_at_kill = requests_by_method(&operator)?;
    let errors_at_kill = error_lines(&operator);
    let stopped = spokes[down].cp.kill_apiserver()?;
    let killed_at = Instant::now();
    let reported = reported_down(hub.clone(), operator.metrics_url.clone(), spokes[down].name.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls_before = provider_calls(&operator)?;
    let t0 = Instant::now();
    put_source(&hub, 3).await?;
    let pw3 = password(3);
    let others_done =
        until_every("the rotation in the spokes that are up", converge_timeout, Duration::from_millis(100), || {
            secrets_hold(&spokes, &others, &pw3)
        })
        .await
        .with_context(|| {
            format!(
                "the rotation did not reach the spokes that are up; operator log: {}",
                operator.log_path().display()
            )
        })?;
    let rotation_down = others_done.saturating_duration_since(t0);
    let (reported_at, reported_failed) =
        reported.await?.context("status.clusters and regcred_cluster_up did not report the spoke that is down")?;
    let reported_after = reported_at.saturating_duration_since(killed_at);
    println!(
        "    the other {} spokes rotated in {} (before: {}); reported down after {} ({reported_failed})",
        s - 1,
        secs(rotation_down),
        rotation_others.map(secs).unwrap_or_default(),
        secs(reported_after)
    );

    // A blip of some seconds, not a lost cluster: long enough for regcred's
    // watches and writes to that spoke to have failed and backed off.
    tokio::time::sleep((killed_at + args.down).saturating_duration_since(Instant::now())).await;
    let down_for = killed_at.elapsed();
    let (down_writes, down_by_method) = writes_between(&requests_at_kill, &requests_by_method(&operator)?);
    let down_errors = error_lines(&operator) - errors_at_kill;

    phase(&format!("{} comes back after {}", spokes[down].name, secs(down_for)));
    let back = Instant::now();
    spokes[down].cp.start_again(stopped).await?;
    let ready = back.elapsed();
    spokes[down].client = spokes[down].cp.client().await?;
    spokes[down].watch();
    // A namespace created as soon as the spoke is back: served once
    // regcred's watches of the spoke run again.
    let back_ns = "bench-back";
    let back_ns_created = Instant::now();
    create_namespace(&spokes[down].client, back_ns).await?;
    let returned = until_every(
        "the returning spoke to hold the rotated Secret",
        SPOKE_TIMEOUT + converge_timeout,
        Duration::from_millis(100),
        || secrets_hold(&spokes, &[down], &pw3),
    )
    .await
    .with_context(|| {
        format!("the returning spoke did not converge; operator log: {}", operator.log_path().display())
    })?;
    let return_convergence = returned.saturating_duration_since(back);
    let back_seen = spokes[down].seen.clone();
    let back_ns_served = until_every(
        "the Secret in the namespace created in the returning spoke",
        SPOKE_TIMEOUT,
        Duration::from_millis(50),
        || back_seen.lock().unwrap().secrets.get(back_ns).filter(|h| h.password == pw3).map(|h| h.changed),
    )
    .await
    .with_context(|| format!("operator log: {}", operator.log_path().display()))?
    .saturating_duration_since(back_ns_created);
    spokes[down].targets.push(back_ns.to_string());
    let all_ns: i64 = spokes.iter().map(|s| s.targets.len() as i64).sum();
    let status_back = wait_status(&hub, s as i64, all_ns, SPOKE_TIMEOUT).await?.saturating_duration_since(back);
    wait_until_still(&operator).await?;
    let down_calls = provider_calls(&operator)? - calls_before;
    println!(
        "    {} converged {} after its apiserver was started again (ready after {}); status synced after {}; \
         a namespace created when it was ready served after {}; {down_calls} provider call(s)",
        spokes[down].name,
        secs(return_convergence),
        secs(ready),
        secs(status_back),
        secs(back_ns_served)
    );

    let (hwm, rss_now) = memory_kib(pid)?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let per_1000 = |kib: u64| mib(kib) * 1000.0 / total as f64;

    println!();
    println!(
        "regcred-bench fleet: a hub and {s} spokes ({} Cluster API, {} Argo CD) x {n} namespaces, one basic \
         ClusterRegistryCredential (local: false), --write-concurrency {}, --concurrency {}; {} cores, {:.1} GiB RAM; \
         total run {}",
        s.div_ceil(2),
        s / 2,
        args.write_concurrency,
        args.concurrency,
        std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0),
        total_memory_gib(),
        secs(started.elapsed())
    );
    println!();
    let convergence = median(rounds.iter().map(|r| r.convergence).collect());
    let limit = median(rounds.iter().map(|r| r.limit).collect());
    let ratio = convergence.as_secs_f64() / limit.as_secs_f64();
    let all = |f: &dyn Fn(&Round) -> String| rounds.iter().map(f).collect::<Vec<_>>().join(", ");
    let last = rounds.last().context("at least one round")?;
    let p = |v: &[Duration]| (percentile(v, 50.0), percentile(v, 99.0), *v.last().unwrap_or(&Duration::ZERO));
    let (np50, np99, nmax) = p(&ns_latency);
    let rows = vec![
        row(
            format!(
                "Initial convergence ({total} Secrets, {total} ServiceAccounts in {s} spokes), median of {}",
                rounds.len()
            ),
            format!("{} (rounds: {})", secs(convergence), all(&|r: &Round| secs(r.convergence))),
            "",
            None,
        ),
        row(
            format!(
                "Limit: {total} creates + {total} patches, {s} spokes at once, {limit_concurrency} + \
                 {limit_concurrency} in flight each"
            ),
            format!("{} (rounds: {})", secs(limit), all(&|r: &Round| secs(r.limit))),
            "",
            None,
        ),
        row(
            "Convergence ratio regcred/limit (medians)",
            format!(
                "{ratio:.2} (rounds: {})",
                all(&|r: &Round| format!("{:.2}", r.convergence.as_secs_f64() / r.limit.as_secs_f64()))
            ),
            "",
            None,
        ),
        row(
            "  last Secret; status.clusters synced (each round)",
            all(&|r: &Round| format!("{} ; {}", secs(r.secrets), secs(r.status))),
            "",
            None,
        ),
        row(
            "  write requests to converge, hub and spokes (last round)",
            format!("{} ({})", last.writes, last.writes_by_method),
            "",
            None,
        ),
        row("  CPU used by the limit (last round)", last.limit_cpu.show(false), "", None),
        row("  CPU used while regcred converged (last round)", last.cpu.show(true), "", None),
        row(
            "Provider calls for the initial mint (each round)",
            all(&|r: &Round| r.calls.to_string()),
            "1",
            Some(rounds.iter().all(|r| r.calls == 1)),
        ),
        row(
            format!("Rotation rollout to {total} Secrets (limit: {total} updates in {})", secs(limit_update)),
            format!("{} ({:.2} x the limit)", secs(rotation), rotation.as_secs_f64() / limit_update.as_secs_f64()),
            "",
            None,
        ),
        row("  write requests of the rotation", format!("{rotation_writes} ({rotation_by_method})"), "", None),
        row("Provider calls per rotation", rotation_calls.to_string(), "1", Some(rotation_calls == 1)),
        row(
            format!("New namespace in a spoke -> Secret (p50 / p99 / max, {} samples)", ns_latency.len()),
            format!("{} / {} / {}", ms(np50), ms(np99), ms(nmax)),
            "",
            None,
        ),
        row(
            format!(
                "Idle write requests in {}s (reads; regcred CPU){}",
                args.idle.as_secs(),
                if idle_calls > 0 { "; a refresh fell in the window" } else { "" }
            ),
            format!("{idle_writes} ({idle_by_method}; {idle_reads} GETs; {idle_cpu:.2} CPU-s)"),
            "0",
            Some(idle_writes == 0),
        ),
        row(
            "regcred RSS: alone; spokes' caches filled; converged",
            format!("{:.1} MiB; {:.1} MiB; {:.1} MiB", mib(rss_alone), mib(rss_caches), mib(rss_converged)),
            "",
            None,
        ),
        row(
            "  RSS per 1,000 spoke namespaces: caches; converged (from alone)",
            format!(
                "{:.2} MiB; {:.2} MiB",
                per_1000(rss_caches.saturating_sub(rss_alone)),
                per_1000(rss_converged.saturating_sub(rss_alone))
            ),
            "",
            None,
        ),
        row("  peak RSS (VmHWM; VmRSS at the end)", format!("{:.1} MiB ({:.1} MiB)", mib(hwm), mib(rss_now)), "", None),
        row(
            "  regcred_cluster_managed_secrets (sum) after convergence",
            managed_secrets.to_string(),
            &total.to_string(),
            Some(managed_secrets == total as u64),
        ),
        row(
            format!("Spoke down: rotation in the other {} spokes (healthy rotation, same spokes)", s - 1),
            format!(
                "{} ({}; {:.2} x)",
                secs(rotation_down),
                rotation_others.map(secs).unwrap_or_default(),
                rotation_down.as_secs_f64() / rotation_others.unwrap_or(rotation).as_secs_f64()
            ),
            "not slower",
            None,
        ),
        row(
            "  spoke reported down (status.clusters, regcred_cluster_up) after the kill",
            secs(reported_after),
            "",
            None,
        ),
        row(
            "  while it was down: write requests (hub and spokes); ERROR lines in regcred's log",
            format!("{down_writes} ({down_by_method}); {down_errors}"),
            "",
            None,
        ),
        row(
            format!(
                "  the spoke back after {}: its {} Secrets rotated, from the restart (apiserver ready; status synced)",
                secs(down_for),
                spokes[down].targets.len() - 1
            ),
            format!("{} ({}; {})", secs(return_convergence), secs(ready), secs(status_back)),
            "",
            None,
        ),
        row("  a namespace created in it once its apiserver was ready -> Secret", secs(back_ns_served), "", None),
        row("  provider calls for that rotation", down_calls.to_string(), "1", Some(down_calls == 1)),
    ];
    print_table(&rows);
    println!();
    println!(
        "operator log: {} (removed with the hub's control plane unless REGCRED_TEST_LOG_DIR is set)",
        operator.log_path().display()
    );
    drop(operator);
    // Behaviour, not speed: these fail the run (and `make bench-smoke`).
    if rounds.iter().any(|r| r.calls != 1) || rotation_calls != 1 || down_calls != 1 {
        bail!(
            "expected exactly 1 provider call per mint: {} initially, {rotation_calls} for the rotation, \
             {down_calls} for the rotation with a spoke down",
            all(&|r: &Round| r.calls.to_string())
        );
    }
    if idle_writes != 0 && idle_calls == 0 {
        bail!("regcred made {idle_writes} write requests while idle ({idle_by_method})");
    }
    if managed_secrets != total as u64 {
        bail!("regcred_cluster_managed_secrets says {managed_secrets}, expected {total}");
    }
    Ok(())
}
