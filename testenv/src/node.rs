//! A real node for a [`ControlPlane`]: containerd + runc, a CNI bridge, a
//! kubelet and kube-scheduler, all on this machine, so that tests can show a
//! Pod pulling a private image with what regcred wrote.
//!
//! What [`Node::start`] runs, each with its files under one temporary
//! directory:
//! - **containerd 2** (built from its Go module by
//!   `hack/containerd-assets.sh`: Kubernetes 1.36+ supports no containerd
//!   1.x) with Debian's runc, its own root, state, socket and runc root; CRI with `restrict_oom_score_adj` (the sandbox lacks
//!   CAP_SYS_RESOURCE), no AppArmor, network namespaces under its state
//!   directory, and registries declared through `config_path`
//!   (`certs.d/HOST/hosts.toml`, see [`Node::add_registry`]);
//! - a **CNI bridge** (`bridge` + `host-local` + `loopback` from
//!   `containernetworking-plugins`) whose name and /24 are unique to this
//!   node, so two test binaries can each run one;
//! - the **kubelet** (`--hostname-override localhost`, every port on
//!   loopback, `failCgroupV1: false`, `cgroupfs` under a cgroup root of its
//!   own), optionally with an image credential provider;
//! - **kube-scheduler**.
//!
//! The sandbox image is made from busybox ([`crate::images`]) and imported
//! into containerd; nothing is pulled from the internet. [`Node::start`]
//! returns once the node is Ready and a probe Pod has run.
//!
//! Teardown is one script (`teardown.sh` in the node's directory), run by
//! `Drop` and, if the test process dies without unwinding, by a watchdog:
//! it kills the node's processes, containerd's shims and every process in
//! the node's cgroups, unmounts everything under the directory (container
//! root filesystems, network namespaces, Pod volumes), removes the cgroups,
//! the bridge, the shim sockets and the kubelet's log links, then the
//! directory. No process, mount, cgroup, network namespace or bridge is
//! left behind.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Event, Node as KubeNode, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::registry::require_tool;
use crate::{ControlPlane, free_port, log_tail};

/// The node's name, as the kubelet registers it.
pub const NODE_NAME: &str = "localhost";

/// The sandbox image's name in containerd.
pub const PAUSE_IMAGE: &str = "registry.regcred.test/pause:1";

/// Where the kubelet looks for an image credential provider.
#[derive(Clone, Debug)]
pub struct CredentialProvider {
    /// A `CredentialProviderConfig` (`kubelet.config.k8s.io/v1`).
    pub config: PathBuf,
    /// The directory holding the executables it names.
    pub bin_dir: PathBuf,
}

/// How the kubelet runs.
#[derive(Clone, Debug, Default)]
pub struct KubeletOptions {
    /// `--image-credential-provider-config` and `-bin-dir`.
    pub credential_provider: Option<CredentialProvider>,
}

/// How containerd reaches a registry host named in image references.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// Plain HTTP at `127.0.0.1:PORT`.
    Http(String),
    /// HTTPS at `127.0.0.1:PORT`, trusting the PEM CA `ca_pem`.
    Https { host: String, ca_pem: String },
}

/// A running node. Dropping it stops everything it started and removes
/// every trace of it.
pub struct Node {
    dir: PathBuf,
    assets: PathBuf,
    kubeconfig: PathBuf,
    containerd: Child,
    kubelet: Option<Child>,
    scheduler: Option<Child>,
    watchdog: Option<Child>,
    kubelet_port: u16,
    /// The CNI bridge's name.
    pub bridge: String,
    /// The Pods' /24.
    pub subnet: String,
    /// The cgroup (in every hierarchy) that holds the Pods.
    pub cgroup_root: String,
}

static SHARED: OnceLock<Node> = OnceLock::new();

/// One node per test binary, for [`crate::shared`]'s control plane, started
/// on first use. The watchdog tears it down when the binary exits.
pub fn shared() -> &'static Node {
    SHARED.get_or_init(|| {
        Node::start(crate::shared(), KubeletOptions::default()).unwrap_or_else(|e| panic!("starting the node: {e:#}"))
    })
}

/// Checks what a node needs on this machine, saying what is missing and how
/// to get it.
pub fn check_machine() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the node tests run containerd, runc and a kubelet, which need root (network namespaces, mounts, \
             cgroups): run the tests as root, or in a VM or container with those rights"
        );
    }
    require_tool("runc", "runc")?;
    containerd_dir()?;
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new("/usr/lib/cni").join(plugin).is_file() {
            bail!(
                "the CNI plugin /usr/lib/cni/{plugin} is missing: run `apt-get install containernetworking-plugins` (or `make deps`)"
            );
        }
    }
    require_tool("ip", "iproute2")?;
    if !Path::new("/sys/fs/cgroup").is_dir() {
        bail!("/sys/fs/cgroup is not mounted: the kubelet needs cgroups");
    }
    Ok(())
}

impl Node {
    /// Starts a node for `cp` and waits until it is Ready and has run a
    /// probe Pod. Safe to call from inside an async runtime.
    pub fn start(cp: &ControlPlane, options: KubeletOptions) -> Result<Node> {
        check_machine()?;
        let assets = cp.assets().to_path_buf();
        for b in ["kubelet", "kube-scheduler"] {
            if !assets.join(b).is_file() {
                bail!("{b} is missing from {}: run hack/envtest-assets.sh (or `make deps`)", assets.display());
            }
        }
        let id = format!("{:x}", std::process::id() as u64 * 65536 + free_port()? as u64);
        let dir = std::env::temp_dir().join(format!("regcred-node-{id}"));
        fs::create_dir_all(&dir)?;
        // Bridge names are at most 15 bytes.
        let bridge = format!("rcn{}", &id[id.len().saturating_sub(10)..]);
        let subnet = free_subnet()?;
        let cgroup_root = format!("regcred-node-{id}");
        let socket = dir.join("containerd.sock");

        write_teardown(&dir, &bridge, &cgroup_root, &socket)?;
        let containerd = spawn_containerd(&dir, &subnet, &bridge)?;
        let pgid = containerd.id() as i32;
        fs::write(dir.join("pgid"), pgid.to_string())?;
        let mut node = Node {
            dir: dir.clone(),
            assets,
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            containerd,
            kubelet: None,
            scheduler: None,
            watchdog: None,
            kubelet_port: 0,
            bridge,
            subnet,
            cgroup_root,
        };
        node.watchdog = Some(start_watchdog(&dir)?);
        node.wait_containerd()?;
        node.import_pause_image()?;
        make_cgroup_root(&node.cgroup_root)?;
        node.scheduler = Some(node.spawn(
            "kube-scheduler",
            &[
                format!("--kubeconfig={}", node.kubeconfig.display()),
                format!("--authentication-kubeconfig={}", node.kubeconfig.display()),
                format!("--authorization-kubeconfig={}", node.kubeconfig.display()),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()?),
                "--v=1".into(),
            ],
            pgid,
        )?);
        node.start_kubelet(&options)?;
        let node = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(async {
                    let client = cp.client().await?;
                    node.wait_ready(&client).await?;
                    node.probe(&client).await
                })
            })
            .join()
            .map_err(|_| anyhow!("node start-up panicked"))?
        })
        .map(|()| node)?;
        Ok(node)
    }

    fn spawn(&self, name: &str, args: &[String], pgid: i32) -> Result<Child> {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{name}.log")))?;
        Command::new(self.assets.join(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(pgid)
            .spawn()
            .with_context(|| format!("starting {name}"))
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new(containerd_dir().map(|d| d.join("ctr")).unwrap_or_else(|_| "ctr".into()));
        cmd.arg("--address").arg(self.dir.join("containerd.sock")).args(["--namespace", "k8s.io"]);
        cmd
    }

    fn wait_containerd(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.containerd.try_wait()? {
                bail!("containerd exited with {status}:\n{}", log_tail(&self.dir.join("containerd.log")));
            }
            if self.ctr().arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status()?.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("containerd not answering after 30s:\n{}", log_tail(&self.dir.join("containerd.log")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn import_pause_image(&self) -> Result<()> {
        let archive = self.dir.join("pause.tar");
        crate::images::write_pause_image(&archive, PAUSE_IMAGE)?;
        let out = self.ctr().args(["images", "import", "--all-platforms"]).arg(&archive).output()?;
        if !out.status.success() {
            bail!("importing the pause image into containerd failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Starts the kubelet (after [`Node::stop_kubelet`], or at start).
    fn start_kubelet(&mut self, options: &KubeletOptions) -> Result<()> {
        self.kubelet_port = free_port()?;
        let config = kubelet_config(&self.dir, &self.cgroup_root, self.kubelet_port, free_port()?);
        let path = self.dir.join("kubelet-config.yaml");
        fs::write(&path, config)?;
        let mut args = vec![
            format!("--config={}", path.display()),
            format!("--kubeconfig={}", self.kubeconfig.display()),
            format!("--root-dir={}", self.dir.join("kubelet").display()),
            format!("--cert-dir={}", self.dir.join("kubelet-pki").display()),
            format!("--hostname-override={NODE_NAME}"),
            "--v=1".into(),
        ];
        if let Some(p) = &options.credential_provider {
            args.push(format!("--image-credential-provider-config={}", p.config.display()));
            args.push(format!("--image-credential-provider-bin-dir={}", p.bin_dir.display()));
        }
        let pgid = self.containerd.id() as i32;
        self.kubelet = Some(self.spawn("kubelet", &args, pgid)?);
        Ok(())
    }

    /// Stops the kubelet and starts it again with `options` (for example
    /// with an image credential provider). Running Pods keep running; waits
    /// until the node is Ready again.
    pub async fn restart_kubelet(&mut self, client: &Client, options: KubeletOptions) -> Result<()> {
        if let Some(mut k) = self.kubelet.take() {
            let _ = k.kill();
            let _ = k.wait();
        }
        // The old kubelet's Ready lingers until its lease is stale; wait for
        // the new one's heartbeat instead.
        let before = node_ready_heartbeat(client).await;
        self.start_kubelet(&options)?;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.kubelet.as_mut().and_then(|k| k.try_wait().ok().flatten()) {
                bail!("the kubelet exited with {status}:\n{}", log_tail(&self.dir.join("kubelet.log")));
            }
            let now = node_ready_heartbeat(client).await;
            if now.is_some() && now != before {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the restarted kubelet did not report Ready:\n{}", log_tail(&self.dir.join("kubelet.log")));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn wait_ready(&mut self, client: &Client) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.kubelet.as_mut().and_then(|k| k.try_wait().ok().flatten()) {
                bail!("the kubelet exited with {status}:\n{}", log_tail(&self.dir.join("kubelet.log")));
            }
            if let Some(status) = self.containerd.try_wait()? {
                bail!("containerd exited with {status}:\n{}", log_tail(&self.dir.join("containerd.log")));
            }
            if node_ready_heartbeat(client).await.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the node was not Ready after 90s; kubelet log:\n{}", log_tail(&self.dir.join("kubelet.log")));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Runs a Pod from the sandbox image to the end: proof that this
    /// machine can run containers. Its failure says what went wrong.
    async fn probe(&self, client: &Client) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let name = "regcred-node-probe";
        let _ = pods.delete(name, &DeleteParams::background().grace_period(0)).await;
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "probe", "image": PAUSE_IMAGE, "imagePullPolicy": "Never",
                                "command": ["/bin/sh", "-c", "cat /hello.txt"]}]
            }
        }))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match pods.create(&PostParams::default(), &pod).await {
                Ok(_) => break,
                // The ServiceAccount admission plugin refuses Pods until the
                // namespace's default ServiceAccount exists.
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => return Err(e).context("creating the probe Pod"),
            }
        }
        loop {
            let p = pods.get(name).await?;
            match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
                Some("Succeeded") => break,
                Some("Failed") => bail!(
                    "the probe Pod failed: this machine cannot run containers here\n{}",
                    self.diagnose(client, "default", name).await
                ),
                _ => {}
            }
            if Instant::now() > deadline {
                bail!(
                    "the probe Pod did not run within 60s: this machine cannot run containers here\n{}",
                    self.diagnose(client, "default", name).await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        pods.delete(name, &DeleteParams::background().grace_period(0)).await?;
        Ok(())
    }

    /// A Pod's Events and the tails of the node's logs, for failure messages.
    pub async fn diagnose(&self, client: &Client, ns: &str, pod: &str) -> String {
        let events = pod_events(client, ns, pod).await.join("\n");
        format!(
            "Events of {ns}/{pod}:\n{events}\nkubelet log:\n{}\ncontainerd log:\n{}",
            log_tail(&self.dir.join("kubelet.log")),
            log_tail(&self.dir.join("containerd.log"))
        )
    }

    /// Declares how containerd reaches the registry named `host` in image
    /// references (`certs.d/HOST/hosts.toml`). `host` may differ from the
    /// endpoint: an image `123456789012.dkr.ecr.us-east-1.amazonaws.com/x`
    /// is then pulled from the local endpoint, while the kubelet matches
    /// pull Secrets and credential providers against `host`. containerd
    /// reads these files at each pull.
    pub fn add_registry(&self, host: &str, endpoint: &Endpoint) -> Result<()> {
        let dir = self.dir.join("certs.d").join(host);
        fs::create_dir_all(&dir)?;
        let toml = match endpoint {
            Endpoint::Http(upstream) => format!(
                "server = \"http://{upstream}\"\n\n[host.\"http://{upstream}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
            ),
            Endpoint::Https { host: upstream, ca_pem } => {
                let ca = dir.join("ca.crt");
                fs::write(&ca, ca_pem)?;
                format!(
                    "server = \"https://{upstream}\"\n\n[host.\"https://{upstream}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
                    ca.display()
                )
            }
        };
        fs::write(dir.join("hosts.toml"), toml)?;
        Ok(())
    }

    /// Image references containerd holds.
    pub fn images(&self) -> Result<Vec<String>> {
        let out = self.ctr().args(["images", "list", "--quiet"]).output()?;
        if !out.status.success() {
            bail!("ctr images list: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect())
    }

    /// The host's address on the Pods' bridge (the subnet's first address):
    /// Pods reach the host there.
    pub fn gateway(&self) -> String {
        self.subnet.trim_end_matches("0/24").to_string() + "1"
    }

    /// A TCP relay from `gateway():PORT` to `target` (`127.0.0.1:PORT`), so
    /// that Pods reach a server that listens on the host's loopback only
    /// (the API server, a provider stand-in). Stops when dropped.
    pub fn relay(&self, target: &str) -> Result<Relay> {
        Relay::start(&self.gateway(), target)
    }

    /// The node's directory (configs and logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kubelet's log so far.
    pub fn kubelet_log(&self) -> String {
        fs::read_to_string(self.dir.join("kubelet.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = Command::new("bash").arg(self.dir.join("teardown.sh")).status();
        for child in [Some(&mut self.containerd), self.kubelet.as_mut(), self.scheduler.as_mut()].into_iter().flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP relay on the node's bridge to a server on the host's loopback.
pub struct Relay {
    /// `GATEWAY:PORT`, the address Pods use.
    pub addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn start(ip: &str, target: &str) -> Result<Relay> {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind((ip, 0)).with_context(|| format!("listening on {ip}"))?;
        let addr = listener.local_addr()?.to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, target) = (stop.clone(), target.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(down) = conn else { continue };
                let Ok(up) = std::net::TcpStream::connect(&target) else { continue };
                for (mut from, mut to) in [(down.try_clone(), up.try_clone()), (up.try_clone(), down.try_clone())]
                    .into_iter()
                    .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Ok(Relay { addr, stop })
    }

    /// The relay's port.
    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

/// The `lastHeartbeatTime` of the node's Ready condition when it is True.
async fn node_ready_heartbeat(client: &Client) -> Option<String> {
    let node = Api::<KubeNode>::all(client.clone()).get_opt(NODE_NAME).await.ok()??;
    let ready = node.status?.conditions?.into_iter().find(|c| c.type_ == "Ready")?;
    (ready.status == "True").then(|| format!("{:?}", ready.last_heartbeat_time))
}

/// The Events about a Pod, as `reason: message` lines.
pub async fn pod_events(client: &Client, ns: &str, pod: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.name={pod}"));
    match events.list(&lp).await {
        Ok(list) => list
            .items
            .into_iter()
            .map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect(),
        Err(e) => vec![format!("(listing Events failed: {e})")],
    }
}

/// A /24 in 10.200.0.0/16 that no interface on this machine uses.
fn free_subnet() -> Result<String> {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show"]).output()?;
    let used = String::from_utf8_lossy(&out.stdout).to_string();
    let start = (std::process::id() % 250) as usize;
    for i in 0..250 {
        let n = (start + i) % 250 + 1;
        if !used.contains(&format!(" 10.200.{n}.")) {
            return Ok(format!("10.200.{n}.0/24"));
        }
    }
    bail!("no free /24 in 10.200.0.0/16 for the node's Pods")
}

/// The directory with containerd 2's `containerd`,
/// `containerd-shim-runc-v2` and `ctr`, from `hack/containerd-assets.sh`.
pub fn containerd_dir() -> Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        crate::hack_dir(
            "containerd-assets.sh",
            "containerd 2 is built from its Go module, which needs Go on PATH and the Go module proxy \
             (or run `make deps`)",
        )
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// containerd 2's configuration (version 3: the CRI plugin is split into
/// `io.containerd.cri.v1.images`, `io.containerd.cri.v1.runtime` and the
/// `io.containerd.grpc.v1.cri` server).
fn containerd_config(dir: &Path, bin: &Path) -> String {
    let d = dir.display();
    let shim = bin.join("containerd-shim-runc-v2");
    let shim = shim.display();
    format!(
        r#"version = 3
root = "{d}/containerd/root"
state = "{d}/containerd/state"

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{d}/certs.d"

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      runtime_path = "{shim}"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{d}/cni/net.d"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#
    )
}

fn spawn_containerd(dir: &Path, subnet: &str, bridge: &str) -> Result<Child> {
    for sub in ["cni/net.d", "cni/ipam", "certs.d", "runc", "containerd/root", "containerd/state"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let bin = containerd_dir()?;
    let config = containerd_config(dir, &bin);
    fs::write(dir.join("containerd.toml"), config)?;
    let gateway = subnet.replace(".0/24", ".1");
    let cni = json!({
        "cniVersion": "0.4.0",
        "name": format!("regcred-{bridge}"),
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
             "ipam": {"type": "host-local", "dataDir": dir.join("cni/ipam"),
                      "ranges": [[{"subnet": subnet, "gateway": gateway}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "loopback"}
        ]
    });
    fs::write(dir.join("cni/net.d/10-regcred.conflist"), serde_json::to_vec_pretty(&cni)?)?;
    let log = fs::File::create(dir.join("containerd.log"))?;
    Command::new(bin.join("containerd"))
        .arg("--config")
        .arg(dir.join("containerd.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting containerd from {}", bin.display()))
}

fn kubelet_config(dir: &Path, cgroup_root: &str, port: u16, healthz_port: u16) -> String {
    let d = dir.display();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
cgroupsPerQOS: true
containerRuntimeEndpoint: unix://{d}/containerd.sock
imageServiceEndpoint: unix://{d}/containerd.sock
address: 127.0.0.1
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
failSwapOn: false
podLogsDir: {d}/pod-logs
volumePluginDir: {d}/volume-plugins
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
serializeImagePulls: false
resolvConf: ""
syncFrequency: 5s
nodeStatusUpdateFrequency: 2s
nodeStatusReportFrequency: 10s
"#
    )
}

/// The node's cgroup in every hierarchy (cgroup v1 here), cpuset filled in
/// from the parent so that processes can join it.
fn make_cgroup_root(name: &str) -> Result<()> {
    for h in fs::read_dir("/sys/fs/cgroup")? {
        let h = h?.path();
        if !h.join("cgroup.procs").exists() {
            continue;
        }
        let dir = h.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = fs::read_to_string(h.join(f)) {
                let _ = fs::write(dir.join(f), v.trim());
            }
        }
    }
    Ok(())
}

fn write_teardown(dir: &Path, bridge: &str, cgroup_root: &str, socket: &Path) -> Result<()> {
    let script = format!(
        r#"#!/usr/bin/env bash
# Stops the regcred test node in {dir} and removes every trace of it.
# Run by the test process, or by the watchdog when that process died.
DIR='{dir}'
CG='{cgroup_root}'
BR='{bridge}'
ADDR='{socket}'
TASKS="$DIR/containerd/state/io.containerd.runtime.v2.task/k8s.io"
ids=$(ls "$TASKS" 2>/dev/null)
# containerd, the kubelet, kube-scheduler (one process group)
pgid=$(cat "$DIR/pgid" 2>/dev/null)
[[ -n "$pgid" ]] && kill -KILL -- "-$pgid" 2>/dev/null
# containerd's shims run in process groups of their own
pkill -KILL -f -- "-address $ADDR" 2>/dev/null
for i in $(seq 1 50); do
  pids=$(cat /sys/fs/cgroup/*/"$CG"/cgroup.procs /sys/fs/cgroup/*/"$CG"/*/cgroup.procs /sys/fs/cgroup/*/"$CG"/*/*/cgroup.procs /sys/fs/cgroup/*/"$CG"/*/*/*/cgroup.procs /sys/fs/cgroup/*/"$CG"/*/*/*/*/cgroup.procs 2>/dev/null | sort -u)
  [[ -z "$pids" ]] && break
  kill -KILL $pids 2>/dev/null
  sleep 0.1
done
# container root filesystems, network namespaces, Pod volumes
for i in 1 2 3; do
  mounts=$(awk -v d="$DIR/" 'index($5, d) == 1 {{print $5}}' /proc/self/mountinfo | sort -r)
  [[ -z "$mounts" ]] && break
  for m in $mounts; do umount -l "$m" 2>/dev/null; done
done
for i in $(seq 1 50); do
  left=0
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h$CG" ]] || continue
    find "$h$CG" -depth -type d -exec rmdir {{}} \; 2>/dev/null
    [[ -d "$h$CG" ]] && left=1
  done
  [[ $left == 0 ]] && break
  sleep 0.1
done
ip link delete "$BR" 2>/dev/null
# shim sockets: /run/containerd/s/sha256(ADDRESS/NAMESPACE/ID)
for id in $ids; do
  h=$(printf '%s' "$ADDR/k8s.io/$id" | sha256sum | cut -d' ' -f1)
  rm -f "/run/containerd/s/$h"
done
find /var/log/containers -maxdepth 1 -lname "$DIR/*" -delete 2>/dev/null
rm -rf "$DIR"
"#,
        dir = dir.display(),
        socket = socket.display(),
    );
    fs::write(dir.join("teardown.sh"), script)?;
    Ok(())
}

/// A shell that runs the teardown once the test process is gone.
fn start_watchdog(dir: &Path) -> Result<Child> {
    let script = format!(
        "while kill -0 {parent} 2>/dev/null; do sleep 0.5; done; exec bash '{dir}/teardown.sh'",
        parent = std::process::id(),
        dir = dir.display()
    );
    crate::spawn_watchdog(&script)
}

/// Workloads on the node, and what their Pods show.
pub mod workload {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use anyhow::{Result, bail};
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    use kube::Client;
    use kube::api::{Api, ListParams, Patch, PatchParams};
    use serde_json::json;

    use super::pod_events;

    /// Server-side applies a Deployment of `replicas` Pods running `image`
    /// as the `default` ServiceAccount, with `pull_policy`.
    pub async fn apply_deployment(
        client: &Client,
        ns: &str,
        name: &str,
        image: &str,
        pull_policy: &str,
        replicas: i32,
    ) -> Result<Deployment> {
        let d: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "terminationGracePeriodSeconds": 0,
                        "containers": [{"name": "app", "image": image, "imagePullPolicy": pull_policy}]
                    }
                }
            }
        }))?;
        Ok(Api::<Deployment>::namespaced(client.clone(), ns)
            .patch(name, &PatchParams::apply("regcred-test").force(), &Patch::Apply(&d))
            .await?)
    }

    /// Sets a Deployment's replicas.
    pub async fn scale(client: &Client, ns: &str, name: &str, replicas: i32) -> Result<()> {
        Api::<Deployment>::namespaced(client.clone(), ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": replicas}})))
            .await?;
        Ok(())
    }

    /// The Pods with label `app=NAME`.
    pub async fn pods_of(client: &Client, ns: &str, app: &str) -> Result<Vec<Pod>> {
        Ok(Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await?
            .items)
    }

    /// What a Pod's first container is doing: `Running`, or the waiting
    /// reason (`ErrImagePull`, `ImagePullBackOff`, `ContainerCreating`), or
    /// `Pending`.
    pub fn container_state(pod: &Pod) -> String {
        let Some(cs) = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).and_then(|c| c.first()) else {
            return "Pending".into();
        };
        let state = cs.state.clone().unwrap_or_default();
        if state.running.is_some() {
            return "Running".into();
        }
        if let Some(w) = state.waiting {
            return w.reason.unwrap_or_else(|| "Waiting".into());
        }
        if let Some(t) = state.terminated {
            return format!("Terminated({})", t.reason.unwrap_or_default());
        }
        "Pending".into()
    }

    /// Waits until `count` Pods of `app` (and no others, apart from ones
    /// being deleted) run, and returns them.
    pub async fn wait_running(
        client: &Client,
        ns: &str,
        app: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Pod>> {
        let start = Instant::now();
        loop {
            let pods: Vec<Pod> = pods_of(client, ns, app)
                .await?
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            if pods.len() == count && pods.iter().all(|p| container_state(p) == "Running") {
                return Ok(pods);
            }
            if start.elapsed() > timeout {
                let mut states = BTreeMap::new();
                let mut events = Vec::new();
                for p in &pods {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    states.insert(name.clone(), container_state(p));
                    events.extend(pod_events(client, ns, &name).await);
                }
                bail!(
                    "{count} Pods of {ns}/{app} not Running after {timeout:?}: {states:?}\nEvents:\n{}",
                    events.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether a failed pull's Event message says the registry refused the
    /// Pod for want of a valid login. containerd names the registry's `401`
    /// when it sent a login the registry refused; when it had no login for
    /// the registry's challenge, containerd 2 says `no basic auth
    /// credentials` instead (1.6 said 401 in both cases).
    pub fn refused_for_credentials(message: &str) -> bool {
        message.contains("401") || message.contains("no basic auth credentials")
    }

    /// Waits until a Pod of `app` fails to pull, and returns the Event
    /// message that says why (see [`refused_for_credentials`]).
    pub async fn wait_pull_refused(client: &Client, ns: &str, app: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            for p in pods_of(client, ns, app).await? {
                let name = p.metadata.name.clone().unwrap_or_default();
                if let Some(e) = pod_events(client, ns, &name)
                    .await
                    .into_iter()
                    .find(|e| e.starts_with("Failed: Failed to pull image"))
                {
                    return Ok(e);
                }
            }
            if start.elapsed() > timeout {
                bail!("no Pod of {ns}/{app} failed to pull within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
