//! `make demo`: regcred working on this machine, with no cluster and no cloud
//! account. Starts a local control plane, a node (containerd + kubelet) and
//! a registry, applies a ClusterRegistryCredential, runs the operator, and
//! shows what it does: a Pod in a targeted namespace pulls the private
//! image with the Secret regcred wrote, next to one without it stuck in
//! `ImagePullBackOff`.
//! `--once` exits after the last step (for CI); otherwise everything runs
//! until Ctrl-C, then is torn down.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use regcred_testenv::node::workload::{apply_deployment, wait_pull_refused, wait_running};
use regcred_testenv::node::{Endpoint, KubeletOptions, NODE_NAME, Node};
use regcred_testenv::operator::Operator;
use regcred_testenv::registry::Registry;
use regcred_testenv::{ControlPlane, Options};

const CLUSTER_NS: &str = "regcred-system";
const PASSWORD: &str = "demo-password-not-for-production";

/// Wraps `text` in an ANSI style when stdout is a terminal.
fn styled(code: &str, text: &str) -> String {
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

fn step(title: &str) {
    println!("\n{}", styled("1", &format!("==> {title}")));
}

/// Runs kubectl and prints its output, indented.
fn show(cp: &ControlPlane, args: &[&str]) -> Result<String> {
    println!("$ kubectl {}", args.join(" "));
    let out = cp.kubectl().args(args).output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for line in text.lines() {
        println!("  {line}");
    }
    if !out.status.success() {
        bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(text)
}

fn kubectl_quiet(cp: &ControlPlane, args: &[&str]) -> Result<String> {
    let out = cp.kubectl().args(args).output()?;
    if !out.status.success() {
        bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The last `max` bytes of `s` (the registry's answer ends an image pull
/// failure's message).
fn tail(s: &str, max: usize) -> &str {
    &s[s.ceil_char_boundary(s.len().saturating_sub(max))..]
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

fn main() {
    let signals = block_signals();
    if let Err(e) = run(&signals) {
        eprintln!("\n{} {e:#}", styled("31", "demo failed:"));
        std::process::exit(1);
    }
}

fn run(signals: &libc::sigset_t) -> Result<()> {
    let mut once = false;
    let mut regcred: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--once" => once = true,
            "--regcred" => regcred = args.next().map(PathBuf::from),
            other => bail!("unknown argument {other} (expected --once, --regcred PATH)"),
        }
    }
    let regcred = regcred.context("--regcred PATH to the regcred binary is required")?;
    let started = Instant::now();

    step("Starting a local control plane (etcd, kube-apiserver, kube-controller-manager)");
    let cp = ControlPlane::start(Options::default())?;
    println!("  kube-apiserver: {}", cp.server);
    println!("  while the demo runs:  export KUBECONFIG={}", cp.kubeconfig_path().display());
    println!("  CRDs installed from crds/");

    step("Starting a node: containerd, a kubelet and kube-scheduler on this machine");
    let node = Node::start(&cp, KubeletOptions::default())?;
    println!("  node {NODE_NAME} Ready; Pods on bridge {} ({})", node.bridge, node.subnet);

    step("Starting a local registry (docker-registry, htpasswd auth) with a test image");
    let registry = Registry::start_htpasswd(cp.process_group(), &[("demo", PASSWORD)])?;
    node.add_registry(&registry.host, &Endpoint::Http(registry.host.clone()))?;
    println!("  registry: {}   image: {}", registry.host, registry.test_image());

    step("Creating namespaces demo-a, demo-b, demo-c (labelled regcred.dev/demo=yes) and regcred-system");
    for ns in ["demo-a", "demo-b", "demo-c", CLUSTER_NS] {
        kubectl_quiet(&cp, &["create", "namespace", ns])?;
    }
    for ns in ["demo-a", "demo-b", "demo-c"] {
        kubectl_quiet(&cp, &["label", "namespace", ns, "regcred.dev/demo=yes"])?;
    }

    step("Applying a ClusterRegistryCredential (hack/demo/credential.yaml)");
    let template = std::fs::read_to_string(regcred_testenv::repo_root().join("hack/demo/credential.yaml"))?;
    let manifest = template.replace("${REGISTRY}", &registry.host).replace("${PASSWORD}", PASSWORD);
    let path = cp.dir().join("demo-credential.yaml");
    std::fs::write(&path, &manifest)?;
    show(&cp, &["apply", "-f", path.to_str().unwrap()])?;

    step("Applying a short-lived credential (ECR Public tokens from a local stand-in, living 9s)");
    let standin = regcred_testenv::aws::EcrPublicStandIn::start(Duration::from_secs(9))?;
    let template = std::fs::read_to_string(regcred_testenv::repo_root().join("hack/demo/short-lived.yaml"))?;
    let path = cp.dir().join("demo-short-lived.yaml");
    std::fs::write(&path, template.replace("${ENDPOINT}", &standin.endpoint()))?;
    show(&cp, &["apply", "-f", path.to_str().unwrap()])?;

    step("Running the operator");
    let operator = Operator::start(&cp, &regcred, CLUSTER_NS, &["--log-level=info"])?;
    println!("  operator log: {}", operator.log_path().display());
    println!("  metrics:      {}/metrics", operator.metrics_url);

    wait_until("the credential to be Ready", Duration::from_secs(60), || {
        kubectl_quiet(&cp, &["get", "crcred", "demo", "-o", "jsonpath={.status.targets.summary}"])
            .is_ok_and(|s| s == "3/3")
    })?;
    show(&cp, &["get", "crcred"])?;

    step("Pull Secrets written in each namespace");
    show(&cp, &["get", "secrets", "-A", "-l", "app.kubernetes.io/managed-by=regcred"])?;

    step("The default ServiceAccount in demo-a lists the Secret");
    wait_until("the ServiceAccount to be patched", Duration::from_secs(30), || {
        kubectl_quiet(&cp, &["get", "sa", "default", "-n", "demo-a", "-o", "jsonpath={.imagePullSecrets}"])
            .is_ok_and(|s| s.contains("demo-pull"))
    })?;
    show(&cp, &["get", "serviceaccount", "default", "-n", "demo-a", "-o", "jsonpath={.imagePullSecrets}{\"\\n\"}"])?;

    step("A real Pod pulls the private image with the Secret (kubelet + containerd on this machine)");
    kubectl_quiet(&cp, &["create", "namespace", "demo-none"])?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = rt.block_on(cp.client())?;
    let image = registry.test_image();
    let applied = Instant::now();
    for ns in ["demo-b", "demo-none"] {
        rt.block_on(apply_deployment(&client, ns, "hello", &image, "Always", 1))?;
    }
    println!("  Deployment hello ({image}) applied in demo-b (targeted) and demo-none (not labelled)");
    let pods = rt.block_on(wait_running(&client, "demo-b", "hello", 1, Duration::from_secs(90)))?;
    println!("  demo-b: Running {:?} after the Deployment was applied", applied.elapsed());
    let refused = rt.block_on(wait_pull_refused(&client, "demo-none", "hello", Duration::from_secs(60)))?;
    wait_until("demo-none's Pod to back off", Duration::from_secs(60), || {
        kubectl_quiet(
            &cp,
            &[
                "get",
                "pods",
                "-n",
                "demo-none",
                "-l",
                "app=hello",
                "-o",
                "jsonpath={.items[*].status.containerStatuses[*].state.waiting.reason}",
            ],
        )
        .is_ok_and(|s| s.contains("ImagePullBackOff"))
    })?;
    show(&cp, &["get", "pods", "-n", "demo-b", "-o", "wide"])?;
    show(&cp, &["get", "pods", "-n", "demo-none"])?;
    println!("  demo-none's Pod has no Secret; its Event ends: ...{}", tail(&refused, 110));
    let pod = pods[0].metadata.name.clone().unwrap_or_default();
    show(&cp, &["logs", "-n", "demo-b", &pod])?;

    step("Labelling a new namespace demo-d: its Secret appears through the watch");
    kubectl_quiet(&cp, &["create", "namespace", "demo-d"])?;
    let label_time = Instant::now();
    kubectl_quiet(&cp, &["label", "namespace", "demo-d", "regcred.dev/demo=yes"])?;
    wait_until("the Secret in demo-d", Duration::from_secs(30), || {
        kubectl_quiet(&cp, &["get", "secret", "demo-pull", "-n", "demo-d", "-o", "name"]).is_ok()
    })?;
    println!("  Secret demo-d/demo-pull appeared {:?} after the label", label_time.elapsed());
    show(&cp, &["get", "crcred"])?;

    step("Rotation: the short-lived token is replaced before it expires (2/3 of its 9s lifetime)");
    let token = || {
        kubectl_quiet(
            &cp,
            &["get", "secret", "demo-ecr-public-pull", "-n", "demo-a", "-o", "jsonpath={.data.\\.dockerconfigjson}"],
        )
        .unwrap_or_default()
    };
    wait_until("the short-lived Secret", Duration::from_secs(30), || !token().is_empty())?;
    let mut current = token();
    for round in 1..=2 {
        let took = wait_until("a rotation", Duration::from_secs(30), || {
            let now = token();
            !now.is_empty() && now != current
        })?;
        current = token();
        println!(
            "  rotation {round}: new token in every namespace after {took:?}; provider calls so far: {}",
            standin.calls()
        );
    }
    show(&cp, &["get", "crcred"])?;

    println!("\n{} in {:?}", styled("32", "demo succeeded"), started.elapsed());
    if !once {
        println!("Everything keeps running; try kubectl with the KUBECONFIG above. Press Ctrl-C to stop and clean up.");
        wait_for_interrupt(signals);
        println!("\nstopping...");
    }
    drop(operator);
    drop(node);
    drop(standin);
    drop(registry);
    drop(cp);
    println!("stopped; nothing left behind");
    Ok(())
}

/// Blocks SIGINT and SIGTERM in this thread; threads spawned later inherit
/// the mask, so the signals wait for [`wait_for_interrupt`] instead of
/// killing the process before it cleans up.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain POSIX signal-mask calls on a zeroed, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_interrupt(set: &libc::sigset_t) {
    let mut sig = 0;
    // SAFETY: `set` was initialised by block_signals.
    unsafe { libc::sigwait(set, &mut sig) };
}
