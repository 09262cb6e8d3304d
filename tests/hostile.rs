//! Hostile conditions every production cluster sees, each on a control
//! plane of its own: an apiserver that throttles (HTTP 429), watches that
//! expire (etcd compaction, 410 Gone), a node clock that lies (libfaketime).
//! One test binary with a module per condition, to keep link time down.
//!
//! Figures are printed (`HOSTILE | ...`) for docs/operations.md; no
//! assertion is timed.

mod common;

/// The operator's write count once it stopped moving (the ServiceAccount
/// patches follow the Secrets) for three seconds.
async fn settled_writes(op: &regcred_testenv::operator::Operator) -> u64 {
    let mut last = (op.write_requests().unwrap(), 0);
    while last.1 < 3 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = op.write_requests().unwrap();
        last = if now == last.0 { (now, last.1 + 1) } else { (now, 0) };
    }
    last.0
}

mod throttle {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use futures::StreamExt;
    use k8s_openapi::api::core::v1::{Namespace, Secret};
    use kube::api::{Api, DeleteParams, ListParams, PostParams};
    use kube::{Client, ResourceExt};
    use regcred::api::ClusterRegistryCredential;
    use regcred_testenv::operator::Operator;
    use regcred_testenv::{ControlPlane, Options};
    use serde_json::json;

    use super::common::{CLUSTER_NS, apply_crcred, basic_spec, create_namespace, login_in, poll_logged, put_login};
    use super::settled_writes;

    const REGISTRY: &str = "registry.example.com";
    const N: usize = 1000;
    const CONVERGE: Duration = Duration::from_secs(600);
    const PASSWORD: &str = "hostile-throttle-pw-8e21";

    /// Sum of a counter family in the operator's /metrics, restricted to
    /// lines for which `keep` holds.
    fn metric(op: &Operator, name: &str, keep: impl Fn(&str) -> bool) -> u64 {
        let text = op.metrics().unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && keep(l))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    async fn managed(client: &Client, pull: &str) -> usize {
        let lp = ListParams::default().labels("app.kubernetes.io/managed-by=regcred");
        let Ok(list) = Api::<Secret>::all(client.clone()).list(&lp).await else { return 0 };
        list.items
            .iter()
            .filter(|s| s.name_any() == pull && login_in(s, REGISTRY).is_some_and(|(_, p)| p == PASSWORD))
            .count()
    }

    /// Applies a credential fanning out to the N namespaces and waits until
    /// every Secret is there and the status says N/N Synced; returns the
    /// time taken and every Ready reason seen on the way.
    async fn fan_out(client: &Client, op: &Operator, name: &str, pull: &str) -> (Duration, Vec<String>) {
        let mut spec = basic_spec(REGISTRY, "throttle-login", pull);
        spec["namespaceSelector"] = json!({"matchLabels": {"throttle": "yes"}});
        let start = Instant::now();
        apply_crcred(client, name, spec).await;
        let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
        let reasons = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        poll_logged(
            &format!("{name}: {N} Secrets and status {N}/{N} Synced"),
            CONVERGE,
            Duration::from_millis(250),
            Some(op),
            || {
                let crcreds = crcreds.clone();
                let reasons = reasons.clone();
                async move {
                    let status = crcreds.get(name).await.ok()?.status?;
                    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
                    if ready.status == "False" {
                        reasons.lock().unwrap().push(format!("{}: {}", ready.reason, ready.message));
                    }
                    let t = status.targets.as_ref()?;
                    (t.synced == N as i32 && ready.reason == "Synced" && managed(client, pull).await == N).then_some(())
                }
            },
        )
        .await;
        let reasons = reasons.lock().unwrap().clone();
        (start.elapsed(), reasons)
    }

    /// The fan-out to 1,000 namespaces through an apiserver limited to two
    /// reads and one write in flight (`--max-requests-inflight=2`,
    /// `--max-mutating-requests-inflight=1`; priority and fairness is off on
    /// the test control plane, so the limits answer plain 429s with
    /// `Retry-After: 1`). `system:masters` is exempt from those limits, so
    /// the same control plane gives the unthrottled baseline with the
    /// operator running as admin, and the throttled run with the operator
    /// running as a ServiceAccount.
    #[tokio::test]
    async fn a_throttling_apiserver_slows_a_fan_out_but_never_fails_it() {
        let cp = ControlPlane::start(Options {
            apiserver_args: vec!["--max-requests-inflight=2".into(), "--max-mutating-requests-inflight=1".into()],
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        let client = cp.client().await.unwrap();
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": CLUSTER_NS}})).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
        let t = Instant::now();
        futures::stream::iter(0..N)
            .for_each_concurrent(8, |i| {
                let client = client.clone();
                async move { create_namespace(&client, &format!("throttle-{i}"), &[("throttle", "yes")]).await }
            })
            .await;
        eprintln!("created {N} namespaces in {:.1?}", t.elapsed());
        regcred_testenv::operator::record_secret(PASSWORD);
        put_login(&client, CLUSTER_NS, "throttle-login", "throttle", PASSWORD).await;
        let binary = Path::new(env!("CARGO_BIN_EXE_regcred"));

        // Baseline: regcred as admin, not throttled.
        let op = Operator::start(&cp, binary, CLUSTER_NS, &[]).unwrap_or_else(|e| panic!("{e:#}"));
        let (base_took, base_reasons) = fan_out(&client, &op, "throttle-base", "base-pull").await;
        let base_writes = settled_writes(&op).await;
        let base_throttled = metric(&op, "regcred_kube_throttled_total", |_| true);
        eprintln!("baseline: {N} namespaces in {base_took:.1?}, {base_writes} writes, {base_throttled} throttled");
        assert_eq!(base_throttled, 0, "admin is exempt from the inflight limits");
        assert!(base_reasons.is_empty(), "{base_reasons:?}");
        Api::<ClusterRegistryCredential>::all(client.clone())
            .delete("throttle-base", &DeleteParams::default())
            .await
            .unwrap();
        poll_logged("the baseline's Secrets removed", CONVERGE, Duration::from_millis(500), Some(&op), || async {
            (managed(&client, "base-pull").await == 0
                && Api::<ClusterRegistryCredential>::all(client.clone()).get_opt("throttle-base").await.ok()?.is_none())
            .then_some(())
        })
        .await;
        drop(op);

        // Throttled: regcred as a ServiceAccount bound to cluster-admin.
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "regcred", "namespace": CLUSTER_NS}});
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), CLUSTER_NS);
        sas.create(&PostParams::default(), &serde_json::from_value(sa).unwrap()).await.unwrap();
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "regcred-throttled"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "regcred", "namespace": CLUSTER_NS}]});
        Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(client.clone())
            .create(&PostParams::default(), &serde_json::from_value(binding).unwrap())
            .await
            .unwrap();
        let kubeconfig = cp.dir().join("regcred-throttled.kubeconfig");
        std::fs::write(&kubeconfig, cp.service_account_kubeconfig(CLUSTER_NS, "regcred").await.unwrap()).unwrap();
        let op = Operator::start_as(&cp, binary, &kubeconfig, CLUSTER_NS, &[], &[]).unwrap_or_else(|e| panic!("{e:#}"));
        let startup_writes = op.write_requests().unwrap();
        let (took, reasons) = fan_out(&client, &op, "throttle", "throttled-pull").await;
        let writes = settled_writes(&op).await - startup_writes;
        let throttled = metric(&op, "regcred_kube_throttled_total", |_| true);
        let throttled_writes = metric(&op, "regcred_kube_throttled_total", |l| !l.contains("method=\"GET\""));
        let accepted = writes.saturating_sub(throttled_writes);
        eprintln!(
            "throttled: {N} namespaces in {took:.1?}, {writes} writes sent of which {throttled_writes} answered 429, \
             {accepted} accepted; {throttled} 429s in all"
        );
        eprintln!(
            "HOSTILE | fan-out to {N} namespaces, apiserver --max-requests-inflight=2 --max-mutating-requests-inflight=1 \
             | {:.1}s throttled vs {:.1}s unthrottled | {throttled} 429s",
            took.as_secs_f64(),
            base_took.as_secs_f64()
        );
        assert!(throttled > 0, "the apiserver never throttled regcred: the test tests nothing");
        assert!(reasons.is_empty(), "throttling surfaced as Ready=False: {reasons:?}");
        // No duplicate writes: what the apiserver accepted is what the
        // unthrottled run wrote, give or take a few status updates.
        assert!(
            accepted <= base_writes + 10,
            "{accepted} writes accepted under throttling against {base_writes} without"
        );
        let log = op.log_text();
        assert!(!log.contains(PASSWORD), "the password is in the operator log");
    }
}

mod compaction {
    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
    use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
    use kube::{Client, ResourceExt};
    use regcred::api::ClusterRegistryCredential;
    use regcred_testenv::operator::Operator;
    use regcred_testenv::{ControlPlane, Options};
    use serde_json::{Value, json};

    use super::common::{
        CLUSTER_NS, apply_crcred, basic_spec, create_namespace, label_namespace, login_in, poll_logged, put_login,
    };
    use super::settled_writes;

    const REGISTRY: &str = "registry.example.com";
    const PULL: &str = "gap-pull";
    const K: usize = 20;
    const WAIT: Duration = Duration::from_secs(180);
    const PASSWORD: &str = "hostile-compaction-pw-51c3";

    /// A TCP proxy between the operator and kube-apiserver that can be
    /// switched off: off cuts every open connection (the watches) and
    /// closes new ones at once, as a network partition or an apiserver
    /// restart would.
    struct Gap {
        on: Arc<tokio::sync::watch::Sender<bool>>,
        port: u16,
    }

    impl Gap {
        fn start(upstream: String) -> Gap {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let port = listener.local_addr().unwrap().port();
            let on = Arc::new(tokio::sync::watch::Sender::new(true));
            let switch = on.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    loop {
                        let Ok((mut conn, _)) = listener.accept().await else { continue };
                        let mut on = switch.subscribe();
                        if !*on.borrow_and_update() {
                            continue;
                        }
                        let upstream = upstream.clone();
                        tokio::spawn(async move {
                            let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut conn, &mut up) => {}
                                _ = on.wait_for(|on| !*on) => {}
                            }
                        });
                    }
                })
            });
            Gap { on, port }
        }

        fn set(&self, on: bool) {
            self.on.send_replace(on);
        }
    }

    /// POSTs a JSON body to etcd's JSON gateway and returns the answer.
    fn etcd_post(etcd_url: &str, path: &str, body: &Value) -> Value {
        let addr = etcd_url.strip_prefix("http://").unwrap();
        let body = body.to_string();
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        write!(
            conn,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "etcd {path}: {head}\n{body}");
        // The gateway may answer chunked; the JSON object is the one line
        // that starts with '{'.
        let json = body.lines().find(|l| l.starts_with('{')).unwrap_or(body);
        serde_json::from_str(json).unwrap_or_else(|e| panic!("etcd {path}: {e}: {body}"))
    }

    /// etcd's current revision.
    fn etcd_revision(etcd_url: &str) -> i64 {
        let answer = etcd_post(etcd_url, "/v3/kv/range", &json!({"key": "AA==", "count_only": true}));
        answer["header"]["revision"].as_str().unwrap().parse().unwrap()
    }

    /// The operator's write requests by label set (method, resource, ...).
    fn writes_by_kind(op: &Operator) -> BTreeMap<String, f64> {
        let text = op.metrics().unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("regcred_kube_requests_total{") && !l.contains("method=\"GET\""))
            .filter_map(|l| {
                let (labels, n) = l.rsplit_once(' ')?;
                Some((labels.trim_start_matches("regcred_kube_requests_total").to_string(), n.parse().ok()?))
            })
            .collect()
    }

    /// Namespace -> resourceVersion of every managed pull Secret carrying
    /// the login.
    async fn managed(client: &Client) -> BTreeMap<String, String> {
        let lp = ListParams::default().labels("app.kubernetes.io/managed-by=regcred");
        let Ok(list) = Api::<Secret>::all(client.clone()).list(&lp).await else { return BTreeMap::new() };
        list.items
            .iter()
            .filter(|s| s.name_any() == PULL && login_in(s, REGISTRY).is_some_and(|(_, p)| p == PASSWORD))
            .map(|s| (s.namespace().unwrap_or_default(), s.resource_version().unwrap_or_default()))
            .collect()
    }

    /// Whether every namespace's default ServiceAccount exists and lists the
    /// pull Secret.
    async fn accounts_list_the_secret(client: &Client) -> bool {
        for i in 0..K {
            let ns = format!("gap-{i}");
            let Ok(Some(sa)) = Api::<ServiceAccount>::namespaced(client.clone(), &ns).get_opt("default").await else {
                return false;
            };
            if !sa.image_pull_secrets.iter().flatten().any(|r| r.name == PULL) {
                return false;
            }
        }
        true
    }

    /// Namespace -> resourceVersion of the default ServiceAccount of each
    /// namespace served before the gap.
    async fn service_accounts(client: &Client) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for i in 0..K {
            let ns = format!("gap-{i}");
            let sa = Api::<ServiceAccount>::namespaced(client.clone(), &ns).get("default").await.unwrap();
            out.insert(ns, sa.resource_version().unwrap_or_default());
        }
        out
    }

    /// Completed write requests in an operator log (at debug level), by
    /// method and path, for the figures.
    fn writes_in_log(log: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for l in log.lines().filter(|l| l.contains("http.status_code=") && l.contains("kube_client::client::builder")) {
            let Some((_, rest)) = l.split_once("http.method=") else { continue };
            let Some((method, rest)) = rest.split_once(" http.url=") else { continue };
            if method == "GET" {
                continue;
            }
            let url = rest.split(['?', ' ']).next().unwrap_or_default();
            let path = url.splitn(4, '/').nth(3).unwrap_or(url);
            *out.entry(format!("{method} /{path}")).or_default() += 1;
        }
        out
    }

    async fn synced(client: &Client, n: usize) -> Option<()> {
        let status = Api::<ClusterRegistryCredential>::all(client.clone()).get("gap").await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        (status.targets.as_ref()?.synced == n as i32 && ready.reason == "Synced").then_some(())
    }

    /// The operator loses the apiserver; while it is away objects change and
    /// etcd is compacted past every revision its watches had seen, so each
    /// resumed watch gets 410 Gone (the watch cache is off, so the resume
    /// goes to etcd) and the watcher lists again. The relist must not turn
    /// into a write storm, and must not miss what changed in the gap.
    #[tokio::test]
    async fn expired_watches_relist_without_a_write_storm_and_miss_nothing() {
        let cp =
            ControlPlane::start(Options { apiserver_args: vec!["--watch-cache=false".into()], ..Default::default() })
                .unwrap_or_else(|e| panic!("{e:#}"));
        let client = cp.client().await.unwrap();
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": CLUSTER_NS}})).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
        for i in 0..K {
            create_namespace(&client, &format!("gap-{i}"), &[("gap", "yes")]).await;
        }
        regcred_testenv::operator::record_secret(PASSWORD);
        put_login(&client, CLUSTER_NS, "gap-login", "gap", PASSWORD).await;

        let gap = Gap::start(cp.server.strip_prefix("https://").unwrap().to_string());
        let kubeconfig = cp.dir().join("regcred-gap.kubeconfig");
        let admin = std::fs::read_to_string(cp.kubeconfig_path()).unwrap();
        std::fs::write(&kubeconfig, admin.replace(&cp.server, &format!("https://127.0.0.1:{}", gap.port))).unwrap();
        let binary = Path::new(env!("CARGO_BIN_EXE_regcred"));
        let op = Operator::start_as(&cp, binary, &kubeconfig, CLUSTER_NS, &[], &[]).unwrap_or_else(|e| panic!("{e:#}"));

        let mut spec = basic_spec(REGISTRY, "gap-login", PULL);
        spec["namespaceSelector"] = json!({"matchLabels": {"gap": "yes"}});
        apply_crcred(&client, "gap", spec).await;
        // The namespaces' default ServiceAccounts come from the
        // controller-manager, asynchronously: wait for each to exist and
        // list the Secret, so the snapshot below is of a settled world.
        poll_logged(&format!("{K} Secrets, {K}/{K} Synced"), WAIT, Duration::from_millis(250), Some(&op), || async {
            let settled = managed(&client).await.len() == K && synced(&client, K).await.is_some();
            (settled && accounts_list_the_secret(&client).await).then_some(())
        })
        .await;
        let before = managed(&client).await;
        let accounts_before = service_accounts(&client).await;
        let writes_before = settled_writes(&op).await;
        let metrics_before = writes_by_kind(&op);
        let log_before = op.log_text().len();

        // The gap.
        gap.set(false);
        let revision_before = etcd_revision(cp.etcd_url());
        tokio::time::sleep(Duration::from_secs(2)).await;
        // What changes: one namespace regcred must serve (its Secret; its
        // default ServiceAccount, which kube-controller-manager creates),
        // one it must not, a label on a served namespace, and churn
        // regcred does not care about, so that etcd moves on.
        create_namespace(&client, "gap-new", &[("gap", "yes")]).await;
        create_namespace(&client, "gap-other", &[]).await;
        label_namespace(&client, "gap-0", json!({"unrelated": "changed"})).await;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "gap-other");
        for i in 0..20 {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "churn"}, "data": {"i": i.to_string()}});
            cms.patch("churn", &PatchParams::apply("hostile-test").force(), &Patch::Apply(&cm)).await.unwrap();
        }
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "gap-new");
        poll_logged("the default ServiceAccount in gap-new", WAIT, Duration::from_millis(200), None, || async {
            sas.get_opt("default").await.ok()?.map(|_| ())
        })
        .await;
        let revision = etcd_revision(cp.etcd_url());
        let compacted =
            etcd_post(cp.etcd_url(), "/v3/kv/compaction", &json!({"revision": revision.to_string(), "physical": true}));
        eprintln!("compacted etcd at revision {revision} (the gap began at {revision_before}): {compacted}");
        // A resumed watch is now answered "too old resource version".
        gap.set(true);

        poll_logged(
            "a Secret in gap-new, status back to Synced",
            WAIT,
            Duration::from_millis(250),
            Some(&op),
            || async {
                (managed(&client).await.contains_key("gap-new") && synced(&client, K + 1).await.is_some()).then_some(())
            },
        )
        .await;
        let writes = settled_writes(&op).await - writes_before;
        for (kind, n) in writes_by_kind(&op) {
            let n = n - metrics_before.get(&kind).copied().unwrap_or(0.0);
            if n > 0.0 {
                eprintln!("  after the gap: {n} {kind}");
            }
        }
        let after = managed(&client).await;
        let log = op.log_text();
        let relists: Vec<&str> =
            log[log_before..].lines().filter(|l| l.contains("too old") || l.contains("code: 410")).collect();
        for (write, n) in writes_in_log(&log[log_before..]) {
            eprintln!("  after the gap: {n} x {write}");
        }
        for l in relists.iter().take(3) {
            eprintln!("  {l}");
        }
        eprintln!(
            "HOSTILE | watches expired (etcd compacted at revision {revision} during a gap, --watch-cache=false) \
             | {} 410 answers logged | {writes} writes after the relist for 1 new namespace of {} served",
            relists.len(),
            K + 1
        );
        assert!(!relists.is_empty(), "no watch was answered 410: the test tests nothing");
        // What changed needs two writes: the gap-new Secret and the patch
        // of its default ServiceAccount. The allowance is bookkeeping: the
        // watches relist one after the other (each on its own backoff), and
        // the reconcile after each may patch status as the view converges
        // (20 -> 21 targets, pending -> synced), plus the Event. A storm
        // would be 21 writes or more.
        const BOOKKEEPING_ALLOWANCE: u64 = 6;
        assert!(writes <= 2 + BOOKKEEPING_ALLOWANCE, "{writes} writes after the relist, for one new namespace");
        for (ns, rv) in &before {
            assert_eq!(after.get(ns), Some(rv), "the Secret in {ns} was rewritten or removed by the relist");
        }
        assert_eq!(accounts_before, service_accounts(&client).await, "a ServiceAccount was rewritten by the relist");
        assert!(!after.contains_key("gap-other"), "a namespace the selector does not match got a Secret");
        assert!(!log.contains(PASSWORD), "the password is in the operator log");
    }
}

mod clock {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use k8s_openapi::api::core::v1::{Namespace, Secret};
    use k8s_openapi::jiff::Timestamp;
    use kube::api::{Api, DeleteParams, PostParams};
    use regcred::api::RegistryCredential;
    use regcred_testenv::aws::EcrPublicStandIn;
    use regcred_testenv::operator::Operator;
    use regcred_testenv::{ControlPlane, Options};
    use serde_json::json;

    use super::common::{CLUSTER_NS, apply_rcred, create_namespace, poll_logged};

    const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    /// Short enough to see two refreshes in a test, far shorter than the
    /// skew: without measuring the lifetime on the provider's clock, -10m
    /// would put the refresh 7 minutes after the real expiry, and +10m would
    /// make every token look expired on arrival.
    const LIFETIME: Duration = Duration::from_secs(45);
    const WAIT: Duration = Duration::from_secs(120);
    const SECRET_KEY: &str = "hostile-clock-secret-key-2f7a";

    /// regcred under libfaketime (`FAKETIME=-10m` / `+10m`, wall clock only;
    /// monotonic clocks, which tokio's timers use, untouched) against a real
    /// control plane and the ECR Public stand-in, which reports `expiresAt`
    /// as an absolute time on the real clock and sends `Date`.
    #[tokio::test]
    async fn a_node_clock_ten_minutes_off_still_refreshes_before_the_real_expiry() {
        assert!(
            Path::new(LIBFAKETIME).exists(),
            "{LIBFAKETIME} missing: install the Debian package faketime (hack/install-test-deps.sh)"
        );
        let cp = ControlPlane::start(Options::default()).unwrap_or_else(|e| panic!("{e:#}"));
        let client = cp.client().await.unwrap();
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": CLUSTER_NS}})).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
        create_namespace(&client, "clock", &[]).await;
        regcred_testenv::operator::record_secret(SECRET_KEY);
        let keys: Secret = serde_json::from_value(json!({
            "metadata": {"name": "aws", "namespace": "clock"},
            "stringData": {"access-key-id": "AKIACLOCKSKEW0000001", "secret-access-key": SECRET_KEY}
        }))
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), "clock").create(&PostParams::default(), &keys).await.unwrap();
        let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "clock");
        let binary = Path::new(env!("CARGO_BIN_EXE_regcred"));

        for skew in [-600i64, 600] {
            let faketime = format!("{:+}m", skew / 60);
            let standin = EcrPublicStandIn::start(LIFETIME).unwrap();
            let op = Operator::start_with_env(
                &cp,
                binary,
                CLUSTER_NS,
                &[],
                &[
                    ("LD_PRELOAD", LIBFAKETIME),
                    ("FAKETIME", &faketime),
                    ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
                    ("AWS_EC2_METADATA_DISABLED", "true"),
                ],
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
            let spec = json!({
                "provider": {"ecrPublic": {"auth": {"secretRef": {"name": "aws"}}, "endpoint": standin.endpoint()}},
                "secret": {"name": "clock-pull"}
            });
            apply_rcred(&client, "clock", "clock", spec).await;
            poll_logged("the first token", WAIT, Duration::from_millis(100), Some(&op), || async {
                (standin.calls() >= 1).then_some(())
            })
            .await;
            let first = Instant::now();
            let real_mint = Timestamp::now();
            let status = poll_logged("Ready=True, Synced", WAIT, Duration::from_millis(250), Some(&op), || async {
                let status = rcreds.get("clock").await.ok()?.status?;
                let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
                (ready.reason == "Synced" && status.expires_at.is_some()).then_some(status)
            })
            .await;
            let message = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap().message.clone();
            let last = status.last_refresh_time.clone().unwrap().0;
            let next = status.next_refresh_time.clone().unwrap().0;
            let expires = status.expires_at.clone().unwrap().0;
            let clock_offset = last.duration_since(real_mint).as_secs();
            let lifetime = expires.duration_since(last).as_secs();
            let renew_in = next.duration_since(last).as_secs();

            // The refresh happens, on the real clock, before the real expiry.
            poll_logged("the refresh", LIFETIME + WAIT, Duration::from_millis(100), Some(&op), || async {
                (standin.calls() >= 2).then_some(())
            })
            .await;
            let refreshed_after = first.elapsed();
            // No hot loop: watch one more lifetime.
            tokio::time::sleep(LIFETIME).await;
            let window = first.elapsed();
            let calls = standin.calls();
            let status = rcreds.get("clock").await.unwrap().status.unwrap();
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
            eprintln!(
                "HOSTILE | node clock {faketime} (measured {clock_offset:+}s) | {}s token: status lifetime {lifetime}s, \
                 nextRefreshTime {renew_in}s after lastRefreshTime | refreshed {:.1}s (real) after the mint | \
                 {calls} tokens in {:.0}s | Ready {} {}",
                LIFETIME.as_secs(),
                refreshed_after.as_secs_f64(),
                window.as_secs_f64(),
                ready.reason,
                ready.message
            );
            assert!(
                (skew - 60..=skew + 60).contains(&clock_offset),
                "the operator's clock is off by {clock_offset}s, not about {skew}s: libfaketime did not apply"
            );
            assert!(!message.contains("in the past"), "a valid token reported as expired: {message}");
            let l = LIFETIME.as_secs() as i64;
            assert!((l - 3..=l + 3).contains(&lifetime), "status lifetime {lifetime}s for a {l}s token");
            assert!(renew_in <= l * 2 / 3 + 1, "next refresh {renew_in}s after the mint for a {l}s token");
            assert!(refreshed_after < LIFETIME, "refreshed {refreshed_after:?} after the mint: after the real expiry");
            // At 2/3 of the lifetime, less up to 10 % jitter: at most one
            // token per 27 s, plus the first.
            let most = 1 + (window.as_secs_f64() / (LIFETIME.as_secs_f64() * 2.0 / 3.0 * 0.9)) as usize;
            assert!(calls <= most, "{calls} tokens in {window:?}: a hot loop");
            assert_eq!(ready.reason, "Synced", "{}", ready.message);

            rcreds.delete("clock", &DeleteParams::default()).await.unwrap();
            poll_logged("the credential deleted", WAIT, Duration::from_millis(250), Some(&op), || async {
                rcreds.get_opt("clock").await.ok()?.is_none().then_some(())
            })
            .await;
            let log = op.log_text();
            assert!(!log.contains(SECRET_KEY), "the secret key is in the operator log");
        }
    }
}
