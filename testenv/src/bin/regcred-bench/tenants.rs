//! `--scenario tenants`: N namespaces, each a tenant with a
//! `RegistryCredential` of its own. Even tenants use `basic`; odd ones are
//! short-lived, through one ECR Public stand-in whose tokens live
//! `--lifetime-seconds` (120), so refreshes recur all through the run. Every
//! request to the stand-in passes a counting front
//! ([`regcred_testenv::throttle::ThrottlingFront`], unlimited here) that
//! stamps it with its caller (each tenant has its own access key id), so
//! calls are counted per credential and per second.
//!
//! Measured: convergence against a minimal client minting (at the same
//! per-endpoint cap) and writing the same; new-tenant and new-ServiceAccount
//! latency; then `--steady-seconds` (300) of steady state: the peak calls to
//! the endpoint in any second, provider calls per rotation for each
//! credential, writes to objects that should not change, regcred's CPU per
//! 1,000 writes; RSS before any credential and with all N (the growth per
//! 1,000 credentials); and that deleting every credential leaves nothing.

use std::collections::VecDeque;
use std::io::{Read, Write};

use super::*;
use regcred_testenv::throttle::ThrottlingFront;

const PULL: &str = "tenant-pull";
const SOURCE: &str = "tenant-source";
/// regcred's `--provider-calls-per-second` default (src/cli.rs).
const REGCRED_DEFAULT_CALLS_PER_SECOND: u32 = 10;
/// The window regcred's cap counts calls in (src/pacing.rs).
const WINDOW: Duration = Duration::from_millis(1020);
const LIMIT_CALLER: &str = "AKIABENCHLIMIT000000";

fn tenant_ns(i: usize) -> String {
    format!("tenant-{i:05}")
}

fn short_lived(i: usize) -> bool {
    i % 2 == 1
}

/// Each short-lived tenant's own access key id: the front tells callers
/// apart by it.
fn key_id(i: usize) -> String {
    format!("AKIATENANT{i:010}")
}

/// The tenant a caller is, from its key id.
fn tenant_of(caller: &str) -> Option<usize> {
    caller.strip_prefix("AKIATENANT")?.parse().ok()
}

/// The minimal client's pacing: at most `cap` calls start in any
/// [`WINDOW`], callers in order, as regcred paces.
struct Limiter {
    cap: usize,
    starts: tokio::sync::Mutex<VecDeque<Instant>>,
}

impl Limiter {
    async fn acquire(&self) {
        let mut starts = self.starts.lock().await;
        loop {
            let now = Instant::now();
            while starts.front().is_some_and(|t| *t + WINDOW <= now) {
                starts.pop_front();
            }
            if starts.len() < self.cap {
                starts.push_back(now);
                return;
            }
            let wait = (starts[starts.len() - self.cap] + WINDOW).saturating_duration_since(now);
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}

/// One `GetAuthorizationToken` from the minimal client (the stand-in does
/// not check signatures; the `Authorization` header names the caller).
async fn mint_raw(endpoint: String) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        let addr = endpoint.trim_start_matches("http://").to_string();
        let mut tcp = std::net::TcpStream::connect(&addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let body = "{}";
        write!(
            tcp,
            "POST / HTTP/1.1\r\nHost: {addr}\r\nX-Amz-Target: SpencerFrontendService.GetAuthorizationToken\r\n\
             Content-Type: application/x-amz-json-1.1\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential={LIMIT_CALLER}/20260101/us-east-1/ecr-public/aws4_request\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut answer = String::new();
        tcp.read_to_string(&mut answer)?;
        if !answer.starts_with("HTTP/1.1 200") {
            bail!("the stand-in answered: {}", answer.lines().next().unwrap_or_default());
        }
        Ok(())
    })
    .await?
}

/// The minimal client: for each tenant, one mint (short-lived ones, paced
/// like regcred), one Secret create and one ServiceAccount patch, with
/// `concurrency` tenants in flight. Returns the time and CPU; then removes
/// what it wrote.
async fn limit_run(
    cp: &ControlPlane,
    client: &Client,
    n: usize,
    concurrency: usize,
    limiter: &Limiter,
    endpoint: &str,
) -> Result<(Duration, Cpu)> {
    let name = "bench-limit-0";
    let cpu_before = Cpu::now(cp, None)?;
    let t = Instant::now();
    for_each_concurrent((0..n).collect(), concurrency, |i| {
        let client = client.clone();
        let endpoint = endpoint.to_string();
        async move {
            let ns = tenant_ns(i);
            if short_lived(i) {
                limiter.acquire().await;
                mint_raw(endpoint).await?;
            }
            Api::<Secret>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &limit_secret(&ns, name))
                .await
                .with_context(|| format!("creating Secret {ns}/{name}"))?;
            let patch = json!({"imagePullSecrets": [{"name": name}]});
            Api::<ServiceAccount>::namespaced(client, &ns)
                .patch("default", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("patching ServiceAccount {ns}/default"))?;
            Ok(())
        }
    })
    .await?;
    let elapsed = t.elapsed();
    let cpu = Cpu::now(cp, None)?.since(cpu_before);
    for_each_concurrent((0..n).collect(), 32, |i| {
        let client = client.clone();
        async move {
            let ns = tenant_ns(i);
            let patch = json!({"imagePullSecrets": null});
            Api::<ServiceAccount>::namespaced(client.clone(), &ns)
                .patch("default", &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Api::<Secret>::namespaced(client, &ns).delete(name, &DeleteParams::default()).await?;
            Ok(())
        }
    })
    .await?;
    Ok((elapsed, cpu))
}

fn rcred_api() -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("regcred.dev", "v1beta1", "RegistryCredential"),
        "registrycredentials",
    )
}

/// Applies tenant `i`'s RegistryCredential.
async fn apply_tenant(client: &Client, i: usize, endpoint: &str) -> Result<()> {
    let ns = tenant_ns(i);
    let provider = if short_lived(i) {
        json!({"ecrPublic": {"auth": {"secretRef": {"name": SOURCE}}, "endpoint": endpoint}})
    } else {
        json!({"basic": {"registry": "registry.example.com", "secretRef": {"name": SOURCE}}})
    };
    let obj = json!({
        "apiVersion": "regcred.dev/v1beta1", "kind": "RegistryCredential",
        "metadata": {"name": "tenant", "namespace": ns},
        "spec": {"provider": provider, "secret": {"name": PULL}, "serviceAccounts": {"all": true}}
    });
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &ns, &rcred_api());
    api.patch("tenant", &PatchParams::apply("regcred-bench").force(), &Patch::Apply(&obj))
        .await
        .with_context(|| format!("applying the RegistryCredential in {ns}"))?;
    Ok(())
}

/// Creates tenant `i`'s namespace and source Secret.
async fn create_tenant(client: &Client, i: usize) -> Result<()> {
    let ns = tenant_ns(i);
    create_namespace(client, &ns).await?;
    let data = if short_lived(i) {
        json!({"access-key-id": key_id(i), "secret-access-key": AWS_SECRET_KEY})
    } else {
        json!({"username": "tenant-user", "password": BASIC_PASSWORD})
    };
    let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SOURCE, "namespace": ns}, "stringData": data});
    Api::<Secret>::namespaced(client.clone(), &ns)
        .patch(SOURCE, &PatchParams::apply("regcred-bench").force(), &Patch::Apply(&s))
        .await
        .with_context(|| format!("writing the source Secret in {ns}"))?;
    Ok(())
}

/// When tenant `ns` was served: its pull Secret there and its `default`
/// ServiceAccount listing it.
fn served(seen: &Seen, ns: &str) -> Option<Instant> {
    let secret = seen.secrets.get(&(ns.to_string(), PULL.to_string()))?.0;
    let sa = (*seen.service_accounts.get(&(ns.to_string(), "default".to_string()))?)?;
    Some(secret.max(sa))
}

/// Watches RegistryCredentials and stamps each new resourceVersion.
fn watch_credentials(client: &Client, changes: Arc<Mutex<HashMap<String, Vec<Instant>>>>) {
    let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &rcred_api());
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            match event {
                Ok(Event::Apply(o)) | Ok(Event::InitApply(o)) => {
                    changes.lock().unwrap().entry(o.namespace().unwrap_or_default()).or_default().push(now);
                }
                Ok(_) => {}
                Err(e) => watch_error("RegistryCredentials", &e),
            }
        }
    });
}

fn count_in(times: &[Instant], from: Instant, to: Instant) -> usize {
    times.iter().filter(|t| **t >= from && **t < to).count()
}

pub(super) async fn run(args: Args) -> Result<()> {
    let n = args.namespaces;
    let shorts: Vec<usize> = (0..n).filter(|i| short_lived(*i)).collect();
    let cap = args.provider_calls_per_second.unwrap_or(REGCRED_DEFAULT_CALLS_PER_SECOND);
    let limit_concurrency = args.limit_concurrency.unwrap_or(args.write_concurrency.max(1));
    let started = Instant::now();

    phase("starting the control plane (etcd, kube-apiserver, kube-controller-manager)");
    let cp = tokio::task::spawn_blocking(|| ControlPlane::start(Options::default())).await??;
    let client = cp.client().await?;
    record_secret(BASIC_PASSWORD);
    record_secret(AWS_SECRET_KEY);

    phase(&format!(
        "creating {n} tenants (a namespace and a source Secret each; {} short-lived, {} basic)",
        shorts.len(),
        n - shorts.len()
    ));
    create_namespace(&client, CLUSTER_NS).await?;
    let seen: Shared = Arc::default();
    seen.lock().unwrap().wanted = [PULL.to_string()].into();
    spawn_watches(&client, &seen);
    let rc_changes: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
    watch_credentials(&client, rc_changes.clone());
    for_each_concurrent((0..n).collect(), 32, |i| {
        let client = client.clone();
        async move { create_tenant(&client, i).await }
    })
    .await?;
    {
        let s = seen.clone();
        until_every("the default ServiceAccounts", Duration::from_secs(600), Duration::from_millis(100), || {
            let seen = s.lock().unwrap();
            let count =
                (0..n).filter(|i| seen.service_accounts.contains_key(&(tenant_ns(*i), "default".to_string()))).count();
            (count == n).then_some(())
        })
        .await?;
    }

    phase(&format!(
        "starting regcred and the ECR Public stand-in (tokens live {}s) behind a counting front",
        args.lifetime.as_secs()
    ));
    let standin = EcrPublicStandIn::start(args.lifetime)?;
    let front = ThrottlingFront::start(&standin.endpoint(), usize::MAX)?;
    let endpoint = front.url();
    let operator_args = operator_args(&args);
    let cp = Arc::new(cp);
    let _stopping = Stopping;
    let (cp2, regcred) = (cp.clone(), args.regcred.clone());
    let operator = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = operator_args.iter().map(String::as_str).collect();
        Operator::start_with_env(&cp2, &regcred, CLUSTER_NS, &a, &[("AWS_EC2_METADATA_DISABLED", "true")])
    })
    .await??;
    wait_for_quiet(&cp, operator.pid()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, rss_idle) = memory_kib(operator.pid())?;

    phase(&format!(
        "for comparison: a minimal client mints ({} calls, at most {cap} per second) and writes {n} Secrets and {n} \
         ServiceAccount patches, {limit_concurrency} tenants in flight",
        shorts.len()
    ));
    let limiter = Limiter { cap: cap as usize, starts: Default::default() };
    wait_for_quiet(&cp, operator.pid()).await?;
    let (limit, limit_cpu) = limit_run(&cp, &client, n, limit_concurrency, &limiter, &endpoint).await?;
    println!("    limit: {}", secs(limit));

    phase(&format!("convergence: {n} RegistryCredentials applied"));
    wait_until_still(&operator).await?;
    wait_for_quiet(&cp, operator.pid()).await?;
    let writes_before = operator.write_requests()?;
    let cpu_before = Cpu::now(&cp, Some(operator.pid()))?;
    let t0 = Instant::now();
    for_each_concurrent((0..n).collect(), 32, |i| {
        let client = client.clone();
        let endpoint = endpoint.clone();
        async move { apply_tenant(&client, i, &endpoint).await }
    })
    .await?;
    let applied = t0.elapsed();
    let converge_timeout =
        Duration::from_secs(300) + Duration::from_millis(50 * n as u64) + Duration::from_secs(shorts.len() as u64 / 2);
    let converged = {
        let s = seen.clone();
        until_every("convergence", converge_timeout, Duration::from_millis(100), move || {
            let seen = s.lock().unwrap();
            let mut last = t0;
            for i in 0..n {
                last = last.max(served(&seen, &tenant_ns(i))?);
            }
            Some(last)
        })
        .await
        .with_context(|| format!("regcred did not converge; operator log: {}", operator.log_path().display()))?
    };
    let convergence = converged - t0;
    let convergence_cpu = Cpu::now(&cp, Some(operator.pid()))?.since(cpu_before);
    let convergence_writes = operator.write_requests()? - writes_before;
    let listed = Api::<Secret>::all(client.clone()).list_metadata(&ListParams::default().labels(MANAGED)).await?;
    if listed.items.len() != n {
        bail!("the apiserver lists {} managed Secrets, expected {n}", listed.items.len());
    }
    println!("    converged in {} (ratio {:.2})", secs(convergence), convergence.as_secs_f64() / limit.as_secs_f64());
    // Each short-lived credential's calls before its Secret first appeared:
    // exactly one.
    let (initial_extra, initial_peak) = {
        let seen = seen.lock().unwrap();
        let arrivals = front.arrivals();
        let mut extra = 0;
        for &i in &shorts {
            let key = (tenant_ns(i), PULL.to_string());
            let first = seen.secrets.get(&key).map(|e| e.0).unwrap_or(converged);
            let calls = arrivals.iter().filter(|(t, c)| tenant_of(c) == Some(i) && *t <= first).count();
            extra += calls.saturating_sub(1);
            if calls == 0 {
                bail!("tenant {i}'s Secret appeared without a provider call");
            }
        }
        let times: Vec<Instant> = arrivals
            .iter()
            .filter(|(t, c)| *t >= t0 && *t <= converged && tenant_of(c).is_some())
            .map(|a| a.0)
            .collect();
        (extra, regcred_testenv::throttle::max_in_window(&times, Duration::from_secs(1)))
    };
    let (_, rss_converged) = memory_kib(operator.pid())?;

    phase(&format!("new tenants and new ServiceAccounts: {} of each, one by one", args.samples));
    let mut tenant_latency = Vec::new();
    for k in 0..args.samples {
        let i = n + k;
        let ns = tenant_ns(i);
        let t = Instant::now();
        create_tenant(&client, i).await?;
        apply_tenant(&client, i, &endpoint).await?;
        let s = seen.clone();
        let done = until(&format!("new tenant {ns} to be served"), Duration::from_secs(60), move || {
            served(&s.lock().unwrap(), &ns)
        })
        .await?;
        tenant_latency.push(done.saturating_duration_since(t));
    }
    tenant_latency.sort();
    let mut sa_latency = Vec::new();
    for k in 0..args.samples {
        let ns = tenant_ns(k % n);
        let name = format!("bench-sa-{k:04}");
        sa_latency.push(new_service_account(&client, &seen, &ns, &name).await?);
    }
    sa_latency.sort();

    phase(&format!("steady state: {}s of refreshes (tokens live {}s)", args.steady.as_secs(), args.lifetime.as_secs()));
    wait_until_still(&operator).await?;
    let all_tenants = n + args.samples;
    let steady_writes_before = operator.write_requests()?;
    let steady_cpu_before = Cpu::now(&cp, Some(operator.pid()))?;
    let ts = Instant::now();
    tokio::time::sleep(args.steady).await;
    let te = Instant::now();
    let steady_writes = operator.write_requests()? - steady_writes_before;
    let steady_cpu = Cpu::now(&cp, Some(operator.pid()))?.since(steady_cpu_before);
    // Let the last calls' Secrets land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let arrivals = front.arrivals();
    let steady_times: Vec<Instant> =
        arrivals.iter().filter(|(t, c)| *t >= ts && *t < te && tenant_of(c).is_some()).map(|a| a.0).collect();
    let steady_peak = regcred_testenv::throttle::max_in_window(&steady_times, Duration::from_secs(1));
    let (mut calls_total, mut rotations_total, mut extra_calls, mut longest_gap) = (0, 0, 0, Duration::ZERO);
    let mut idle_writes = 0;
    {
        let seen = seen.lock().unwrap();
        let rc = rc_changes.lock().unwrap();
        let none = Vec::new();
        for i in 0..all_tenants {
            let ns = tenant_ns(i);
            let changes = seen.secret_changes.get(&(ns.clone(), PULL.to_string())).unwrap_or(&none);
            if short_lived(i) {
                let calls = arrivals.iter().filter(|(t, c)| *t >= ts && *t < te && tenant_of(c) == Some(i)).count();
                let rotations = count_in(changes, ts, te + Duration::from_secs(2));
                calls_total += calls;
                rotations_total += rotations;
                extra_calls += calls.saturating_sub(rotations);
                for w in changes.windows(2) {
                    longest_gap = longest_gap.max(w[1] - w[0]);
                }
            } else {
                // A basic credential's Secret and status never change.
                idle_writes += count_in(changes, ts, te);
                idle_writes += count_in(rc.get(&ns).unwrap_or(&none), ts, te);
            }
            for (_, times) in seen.sa_changes.iter().filter(|((sa_ns, _), _)| *sa_ns == ns) {
                idle_writes += count_in(times, ts, te);
            }
        }
    }
    let (hwm, rss_now) = memory_kib(operator.pid())?;

    phase("deleting every RegistryCredential: nothing may be left behind");
    let delete_started = Instant::now();
    for_each_concurrent((0..all_tenants).collect(), 32, |i| {
        let client = client.clone();
        async move {
            let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &tenant_ns(i), &rcred_api());
            api.delete("tenant", &DeleteParams::default()).await?;
            Ok(())
        }
    })
    .await?;
    {
        let s = seen.clone();
        until_every(
            "regcred to remove its Secrets and ServiceAccount entries",
            converge_timeout,
            Duration::from_millis(100),
            || {
                let seen = s.lock().unwrap();
                let secrets_left = seen.secrets.keys().any(|(_, name)| name == PULL);
                let entries_left = seen.service_accounts.values().any(|v| v.is_some());
                (!secrets_left && !entries_left).then_some(())
            },
        )
        .await
        .with_context(|| format!("regcred left Secrets behind; operator log: {}", operator.log_path().display()))?;
        let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &rcred_api());
        let deadline = Instant::now() + converge_timeout;
        while !api.list_metadata(&ListParams::default()).await?.items.is_empty() {
            if Instant::now() > deadline {
                bail!("RegistryCredentials still exist (finalizers not done)");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let left = Api::<Secret>::all(client.clone()).list_metadata(&ListParams::default().labels(MANAGED)).await?;
        if !left.items.is_empty() {
            bail!("{} managed Secrets left after every credential was deleted", left.items.len());
        }
    }
    let cleanup = delete_started.elapsed();

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!(
        "regcred-bench tenants: N={n} tenants, each with its own RegistryCredential ({} ECR Public via stand-in, \
         tokens living {}s; {} basic), --write-concurrency {}, --concurrency {}, provider calls per second {cap}; \
         {} cores, {:.1} GiB RAM; total run {}",
        shorts.len(),
        args.lifetime.as_secs(),
        n - shorts.len(),
        args.write_concurrency,
        args.concurrency,
        std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0),
        total_memory_gib(),
        secs(started.elapsed())
    );
    println!();
    let ratio = convergence.as_secs_f64() / limit.as_secs_f64();
    let needed = 2 * n as u64;
    let p = |v: &[Duration]| (percentile(v, 50.0), percentile(v, 99.0), *v.last().unwrap_or(&Duration::ZERO));
    let (tp50, tp99, tmax) = p(&tenant_latency);
    let (sp50, sp99, smax) = p(&sa_latency);
    let per_rotation = if rotations_total == 0 { 0.0 } else { calls_total as f64 / rotations_total as f64 };
    let rows = vec![
        row(
            format!("Initial convergence ({n} credentials: {n} Secrets, {n} ServiceAccounts)"),
            format!("{} (credentials applied in {})", secs(convergence), secs(applied)),
            "",
            None,
        ),
        row(
            format!(
                "Limit: minimal client mints ({} calls, <= {cap}/s) and writes the same, {limit_concurrency} tenants in flight",
                shorts.len()
            ),
            secs(limit),
            "",
            None,
        ),
        row("  CPU used by the limit", limit_cpu.show(), "", None),
        row("  CPU used while regcred converged", convergence_cpu.show(), "", None),
        row("Convergence ratio regcred/limit", format!("{ratio:.2}"), "<= 1.3", Some(ratio <= 1.3)),
        row(
            format!("Write requests regcred sent to converge ({n} Secrets + {n} ServiceAccounts)"),
            format!("{convergence_writes} ({:.2} per credential)", convergence_writes as f64 / n as f64),
            "",
            None,
        ),
        row(
            "Provider calls beyond one per short-lived credential, initial mint",
            initial_extra.to_string(),
            "0",
            Some(initial_extra == 0),
        ),
        row("Peak provider calls to the endpoint in any second, convergence", initial_peak.to_string(), "", None),
        row(
            format!("New tenant (namespace, source Secret, credential) -> served (p50 / p99 / max, {})", args.samples),
            format!("{} / {} / {}", ms(tp50), ms(tp99), ms(tmax)),
            "",
            None,
        ),
        row(
            format!("New ServiceAccount -> patched (p50 / p99 / max, {})", args.samples),
            format!("{} / {} / {}", ms(sp50), ms(sp99), ms(smax)),
            "",
            None,
        ),
        row(
            format!("Steady state ({}s): provider calls; rotations seen", args.steady.as_secs()),
            format!("{calls_total}; {rotations_total}"),
            "",
            None,
        ),
        row(
            "  provider calls per credential per rotation (calls not followed by a rotation)",
            format!("{per_rotation:.2} ({extra_calls})"),
            "exactly 1",
            Some(extra_calls == 0 && rotations_total > 0),
        ),
        row(
            "  peak provider calls to the endpoint in any 1-second window",
            steady_peak.to_string(),
            &format!("<= {cap} (cap)"),
            Some(steady_peak <= cap as usize),
        ),
        row(
            format!("  longest a short-lived Secret went unrotated (token lifetime {}s)", args.lifetime.as_secs()),
            secs(longest_gap),
            "",
            None,
        ),
        row(
            "  writes to objects that should not change (basic Secrets and status, every ServiceAccount)",
            idle_writes.to_string(),
            "0",
            Some(idle_writes == 0),
        ),
        row(
            "  regcred write requests; per rotation",
            format!(
                "{steady_writes}; {:.2}",
                if rotations_total == 0 { 0.0 } else { steady_writes as f64 / rotations_total as f64 }
            ),
            "",
            None,
        ),
        row(
            "  regcred CPU-seconds per 1,000 write requests (steady state; convergence)",
            format!(
                "{:.3}; {:.3}",
                steady_cpu.operator.unwrap_or(0.0) * 1000.0 / steady_writes.max(1) as f64,
                convergence_cpu.operator.unwrap_or(0.0) * 1000.0 / convergence_writes.max(1) as f64
            ),
            "",
            None,
        ),
        row("  CPU used in steady state", steady_cpu.show(), "", None),
        row(
            "Operator RSS: caches filled, no credential; all credentials converged",
            format!("{:.1} MiB; {:.1} MiB", mib(rss_idle), mib(rss_converged)),
            "",
            None,
        ),
        row(
            "  RSS growth per 1,000 credentials (from those two sizes)",
            format!("{:.2} MiB", (mib(rss_converged) - mib(rss_idle)) * 1000.0 / n as f64),
            "",
            None,
        ),
        row("Operator peak RSS (VmHWM; VmRSS now)", format!("{:.1} MiB ({:.1} MiB)", mib(hwm), mib(rss_now)), "", None),
        row(
            format!("Every credential deleted: Secrets and entries removed ({all_tenants} tenants)"),
            secs(cleanup),
            "",
            None,
        ),
    ];
    print_table(&rows);
    println!();
    println!("operator log: {} (removed with the control plane)", operator.log_path().display());
    drop(operator);
    drop(front);
    drop(standin);
    // Behaviour, not speed: these fail the run (and `make bench-smoke`).
    if initial_extra != 0 || extra_calls != 0 {
        bail!("extra provider calls: {initial_extra} at the initial mint, {extra_calls} in steady state");
    }
    if rotations_total == 0 && !shorts.is_empty() {
        bail!("no rotation in {}s of steady state", args.steady.as_secs());
    }
    if idle_writes != 0 {
        bail!("{idle_writes} writes to objects that should not have changed");
    }
    if steady_peak > cap as usize {
        bail!("{steady_peak} provider calls in one second; the cap is {cap}");
    }
    // Per credential: a Secret create and a ServiceAccount patch, plus the
    // finalizer, a status patch and an Event (5 in all; runs send about
    // 5.3), and 10 % for status updates that race.
    let allowed = 5 * n as u64 + n as u64 / 2 + 10;
    if convergence_writes > allowed {
        bail!(
            "regcred sent {convergence_writes} write requests to converge; {needed} Secret and ServiceAccount writes are needed (at most {allowed} allowed in all)"
        );
    }
    Ok(())
}
