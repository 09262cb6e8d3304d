//! A real Kubernetes control plane for regcred's tests and demo.
//!
//! [`ControlPlane::start`] runs etcd, kube-apiserver and
//! kube-controller-manager as local processes on free loopback ports:
//! - kube-apiserver with RBAC authorization, client-certificate
//!   authentication, ServiceAccount token signing (TokenRequest works) and
//!   the default admission plugins, ServiceAccount admission included;
//! - kube-controller-manager with the namespace, serviceaccount and
//!   garbage-collector controllers, so namespaces finish terminating,
//!   `default` ServiceAccounts appear and ownerReferences cascade; the
//!   deployment, replicaset and job controllers and the `kube-root-ca.crt`
//!   publisher, for workloads on a [`node`].
//!
//! The binaries come from `hack/envtest-assets.sh` (which honours
//! `KUBEBUILDER_ASSETS` and builds what is missing from the Go modules), for
//! the release [`version::k8s`] names (`REGCRED_K8S_VERSION`, default in
//! `hack/versions.env`). On 1.34 and 1.35 kube-apiserver runs with the
//! MutatingAdmissionPolicy gate and its `v1beta1` API on.
//!
//! Teardown: all processes share one process group. Dropping a
//! [`ControlPlane`] kills the group and removes its directory; a small
//! watchdog process does the same if the test process dies without
//! unwinding (a killed test binary, or the never-dropped [`shared`]
//! instance), so no process is left behind.
//!
//! [`operator`] runs `regcred run` against it and [`registry`] runs a real
//! CNCF Distribution registry with a test image.

pub mod acr_standin;
pub mod aws;
pub mod chart;
pub mod fleet;
pub mod google_standin;
pub mod guardrails;
pub mod harbor_standin;
pub mod images;
pub mod node;
pub mod oidc;
pub mod operator;
pub mod pod_identity;
pub mod prometheus;
pub mod registry;
pub mod release;
mod standin_http;
pub mod throttle;
pub mod tokenauth;
pub mod version;

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};
use serde::Deserialize as _;

/// Directory of the workspace (the regcred repository).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testenv lives inside the repository").to_path_buf()
}

/// What to start.
#[derive(Clone, Debug)]
pub struct Options {
    /// Install every `*.yaml` in this directory as CRDs and wait until they
    /// are Established. `None` installs nothing.
    pub crd_dir: Option<PathBuf>,
    /// Run kube-controller-manager.
    pub controller_manager: bool,
    /// Extra kube-apiserver flags, for example
    /// `--runtime-config=admissionregistration.k8s.io/v1=false` for a
    /// cluster that does not serve an API.
    pub apiserver_args: Vec<String>,
    /// Serve the MutatingAdmissionPolicy API of this release
    /// (`version::K8sVersion::admission_api`): on 1.34–1.35 the beta is
    /// turned on; `false` turns off what the release would serve, as on a
    /// cluster without the API.
    pub admission_api: bool,
    /// Install the chart's guardrails (ValidatingAdmissionPolicies),
    /// bound to the operator's test identities: [`guardrails`].
    pub guardrails: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            crd_dir: Some(repo_root().join("crds")),
            controller_manager: true,
            apiserver_args: Vec::new(),
            admission_api: true,
            guardrails: true,
        }
    }
}

/// A running control plane. Dropping it stops every process and removes
/// its directory.
pub struct ControlPlane {
    dir: PathBuf,
    assets: PathBuf,
    processes: Vec<(&'static str, Child)>,
    watchdog: Option<Child>,
    /// `https://127.0.0.1:PORT` of kube-apiserver.
    pub server: String,
    /// `http://127.0.0.1:PORT` of etcd's client endpoint.
    etcd_url: String,
    ca_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
    kubeconfig: PathBuf,
    operator_kubeconfig: PathBuf,
}

static SHARED: OnceLock<ControlPlane> = OnceLock::new();

/// One control plane per test binary, started on first use with the default
/// [`Options`] and stopped by the watchdog when the binary exits. Tests that
/// share it use their own namespaces and object names.
pub fn shared() -> &'static ControlPlane {
    SHARED.get_or_init(|| ControlPlane::start(Options::default()).unwrap_or_else(|e| panic!("{e:#}")))
}

/// The directory with `kube-apiserver`, `etcd`, `kubectl` and
/// `kube-controller-manager`, from `hack/envtest-assets.sh`.
pub fn assets_dir() -> Result<PathBuf> {
    static ASSETS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ASSETS
        .get_or_init(|| {
            hack_dir(
                "envtest-assets.sh",
                "the control-plane binaries are built from their Go modules, which needs Go on PATH and access \
                 to the Go module proxy; or point KUBEBUILDER_ASSETS at a directory with kube-apiserver, etcd, \
                 kubectl and kube-controller-manager",
            )
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Runs `hack/<script>`, which builds what is missing into a cache and
/// prints the directory holding it; `why` says what failure means and how
/// to mend it. The callers keep the answer in a `OnceLock`.
pub(crate) fn hack_dir(script: &str, why: &str) -> Result<PathBuf, String> {
    let script = repo_root().join("hack").join(script);
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed ({}): {why}", script.display(), out.status));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

struct Pki {
    ca_pem: String,
    serving_cert_pem: String,
    serving_key_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
    operator_cert_pem: String,
    operator_key_pem: String,
    sa_key_pem: String,
    sa_pub_pem: String,
}

fn make_pki() -> Result<Pki> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params.distinguished_name.push(DnType::CommonName, "regcred-testenv-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let serving_key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
    ])?;
    serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving.signed_by(&serving_key, &issuer)?;

    let admin_key = KeyPair::generate()?;
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin.distinguished_name = DistinguishedName::new();
    admin.distinguished_name.push(DnType::CommonName, "regcred-testenv-admin");
    admin.distinguished_name.push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer)?;

    // The operator's own identity: as powerful as admin for RBAC, but a
    // user name of its own, which the guardrails are bound to.
    let operator_key = KeyPair::generate()?;
    let mut operator = CertificateParams::new(Vec::<String>::new())?;
    operator.distinguished_name = DistinguishedName::new();
    operator.distinguished_name.push(DnType::CommonName, guardrails::OPERATOR_USER);
    operator.distinguished_name.push(DnType::OrganizationName, "system:masters");
    operator.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let operator_cert = operator.signed_by(&operator_key, &issuer)?;

    let sa_key = KeyPair::generate()?;
    Ok(Pki {
        ca_pem: ca_cert.pem(),
        serving_cert_pem: serving_cert.pem(),
        serving_key_pem: serving_key.serialize_pem(),
        admin_cert_pem: admin_cert.pem(),
        admin_key_pem: admin_key.serialize_pem(),
        operator_cert_pem: operator_cert.pem(),
        operator_key_pem: operator_key.serialize_pem(),
        sa_key_pem: sa_key.serialize_pem(),
        sa_pub_pem: sa_key.public_key_pem(),
    })
}

/// Runs `script` in a shell of its own process group, detached from the
/// test's output: the watchdogs that clean up after a test process that died
/// without unwinding.
fn spawn_watchdog(script: &str) -> Result<Child> {
    Ok(Command::new("bash")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?)
}

/// Tail of a process log, for error messages.
fn log_tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().filter(|l| !l.contains("flags.go")).collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl ControlPlane {
    /// Start a control plane. Blocks until kube-apiserver is ready and the
    /// CRDs are Established. Safe to call from inside an async runtime.
    pub fn start(options: Options) -> Result<ControlPlane> {
        // A port picked by `free_port` can be taken by another test's
        // stand-in before the process binds it: start again on new ports
        // (what failed is torn down when its `ControlPlane` drops).
        let mut attempt = 1;
        loop {
            let opts = options.clone();
            let result = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(Self::start_inner(opts))
            })
            .join()
            .map_err(|_| anyhow!("control plane start-up panicked"))?;
            match result {
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    eprintln!("control plane: a port was taken during start-up, starting again ({e:#})");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn start_inner(options: Options) -> Result<ControlPlane> {
        let assets = assets_dir()?;
        let dir = std::env::temp_dir().join(format!("regcred-envtest-{}-{}", std::process::id(), free_port()?));
        fs::create_dir_all(&dir)?;
        let pki = make_pki()?;
        let write = |name: &str, body: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            fs::write(&p, body).with_context(|| format!("writing {}", p.display()))?;
            Ok(p)
        };
        let ca = write("ca.crt", &pki.ca_pem)?;
        let serving_cert = write("apiserver.crt", &pki.serving_cert_pem)?;
        let serving_key = write("apiserver.key", &pki.serving_key_pem)?;
        let sa_key = write("sa.key", &pki.sa_key_pem)?;
        let sa_pub = write("sa.pub", &pki.sa_pub_pem)?;

        let api_port = free_port()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let etcd_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let mut cp = ControlPlane {
            dir: dir.clone(),
            assets: assets.clone(),
            processes: Vec::new(),
            watchdog: None,
            server: server.clone(),
            etcd_url: etcd_url.clone(),
            ca_pem: pki.ca_pem.clone(),
            admin_cert_pem: pki.admin_cert_pem.clone(),
            admin_key_pem: pki.admin_key_pem.clone(),
            kubeconfig: dir.join("admin.kubeconfig"),
            operator_kubeconfig: dir.join("operator.kubeconfig"),
        };
        fs::write(&cp.kubeconfig, cp.kubeconfig_yaml("admin", &cp.admin_user_yaml()))?;
        let operator_user = format!(
            "client-certificate-data: {}\n    client-key-data: {}",
            b64(&pki.operator_cert_pem),
            b64(&pki.operator_key_pem)
        );
        fs::write(&cp.operator_kubeconfig, cp.kubeconfig_yaml("operator", &operator_user))?;

        cp.spawn(
            "etcd",
            &[
                "--name=regcred-envtest".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls=http://127.0.0.1:{}", free_port()?),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{}", free_port()?),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        )?;
        cp.start_watchdog()?;

        let mut apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // 1.37 refuses a loopback advertise address with an endpoint
            // reconciler (the `kubernetes` Service's Endpoints could not hold
            // it on any release); Pods here reach the apiserver directly
            // (the chart's `kubernetesApi.host`).
            "--endpoint-reconciler-type=none".into(),
            format!("--secure-port={api_port}"),
            format!("--tls-cert-file={}", serving_cert.display()),
            format!("--tls-private-key-file={}", serving_key.display()),
            format!("--client-ca-file={}", ca.display()),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            "--enable-priority-and-fairness=false".into(),
            "--v=1".into(),
        ];
        // On 1.34 and 1.35 the MutatingAdmissionPolicy API (v1beta1) is off
        // by default; turn it on as a cluster using injection there does.
        apiserver_args.extend(match options.admission_api {
            true => version::k8s().admission_api_flags(),
            false => version::k8s().admission_api_off_flags(),
        });
        apiserver_args.extend(options.apiserver_args.iter().cloned());
        cp.spawn("kube-apiserver", &apiserver_args)?;
        let client = cp.client().await?;
        cp.wait_ready(&client).await?;

        if options.controller_manager {
            cp.spawn(
                "kube-controller-manager",
                &[
                    format!("--kubeconfig={}", cp.kubeconfig.display()),
                    // The workload controllers run Deployments and Jobs on
                    // the node (testenv::node); root-ca-cert-publisher
                    // writes the kube-root-ca.crt ConfigMap that Pods'
                    // ServiceAccount token volumes mount; nodelifecycle
                    // lifts the not-ready taint a kubelet registers with.
                    "--controllers=namespace,serviceaccount,garbagecollector,deployment,replicaset,job,root-ca-cert-publisher,nodelifecycle"
                        .into(),
                    format!("--root-ca-file={}", ca.display()),
                    "--leader-elect=false".into(),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={}", free_port()?),
                    format!("--authentication-kubeconfig={}", cp.kubeconfig.display()),
                    format!("--authorization-kubeconfig={}", cp.kubeconfig.display()),
                    "--concurrent-namespace-syncs=10".into(),
                    "--v=1".into(),
                ],
            )?;
        }
        if let Some(crd_dir) = &options.crd_dir {
            install_crds(&client, crd_dir).await?;
        }
        if options.guardrails {
            guardrails::install(&client, &guardrails::test_identities()).await.context("installing the guardrails")?;
        }
        Ok(cp)
    }

    fn spawn(&mut self, name: &'static str, args: &[String]) -> Result<()> {
        let log = fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new(self.assets.join(name));
        cmd.args(args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        // Every process joins the first one's process group, so one signal
        // stops them all.
        let pgid = self.processes.first().map(|(_, c)| c.id() as i32).unwrap_or(0);
        cmd.process_group(pgid);
        let child = cmd.spawn().with_context(|| format!("starting {name} from {}", self.assets.display()))?;
        self.processes.push((name, child));
        Ok(())
    }

    /// A shell that outlives the test process only long enough to kill the
    /// process group and remove the directory.
    fn start_watchdog(&mut self) -> Result<()> {
        let pgid = self.processes[0].1.id();
        let script = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 0.5; done; kill -KILL -- -{pgid} 2>/dev/null; sleep 0.5; rm -rf '{dir}'",
            parent = std::process::id(),
            dir = self.dir.display()
        );
        self.watchdog = Some(spawn_watchdog(&script)?);
        Ok(())
    }

    async fn wait_ready(&mut self, client: &Client) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let req = http::Request::get("/readyz").body(Vec::new())?;
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                _ => {}
            }
            for (name, child) in &mut self.processes {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{name} exited with {status} during start-up:\n{}",
                        log_tail(&self.dir.join(format!("{name}.log")))
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("kube-apiserver not ready after 120s:\n{}", log_tail(&self.dir.join("kube-apiserver.log")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn admin_user_yaml(&self) -> String {
        format!(
            "client-certificate-data: {}\n    client-key-data: {}",
            b64(&self.admin_cert_pem),
            b64(&self.admin_key_pem)
        )
    }

    fn kubeconfig_yaml(&self, user: &str, user_fields: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    {user_fields}\ncontexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: {user}\ncurrent-context: envtest\n",
            server = self.server,
            ca = b64(&self.ca_pem),
        )
    }

    async fn client_from_yaml(yaml: &str) -> Result<Client> {
        let kc = Kubeconfig::from_yaml(yaml)?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// An admin (`system:masters`) client, bound to the caller's runtime.
    pub async fn client(&self) -> Result<Client> {
        Self::client_from_yaml(&self.kubeconfig_yaml("admin", &self.admin_user_yaml())).await
    }

    /// A client that authenticates as `system:serviceaccount:NS:NAME`, with a
    /// token from the TokenRequest API. RBAC applies to it.
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> Result<Client> {
        let yaml = self.service_account_kubeconfig(namespace, name).await?;
        Self::client_from_yaml(&yaml).await
    }

    /// A kubeconfig (YAML) for `system:serviceaccount:NS:NAME`.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<String> {
        let admin = self.client().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(admin, namespace);
        let req = TokenRequest {
            spec: TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() },
            ..Default::default()
        };
        let resp = sas
            .create_token_request(name, &PostParams::default(), &req)
            .await
            .with_context(|| format!("TokenRequest for {namespace}/{name}"))?;
        let token = resp.status.map(|s| s.token).ok_or_else(|| anyhow!("TokenRequest returned no token"))?;
        Ok(self.kubeconfig_yaml(&format!("{namespace}-{name}"), &format!("token: {token}")))
    }

    /// Path of an admin kubeconfig, for `kubectl --kubeconfig` and other
    /// processes.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Path of the kubeconfig [`operator::Operator::start`] runs regcred
    /// with: a `system:masters` identity of its own
    /// ([`guardrails::OPERATOR_USER`]), which the guardrails bind.
    pub fn operator_kubeconfig_path(&self) -> &Path {
        &self.operator_kubeconfig
    }

    /// A `kubectl` command pointed at this control plane as admin.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.assets.join("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        cmd
    }

    /// The process group of the control plane. Helper processes that join it
    /// (the operator, registries) are stopped with it, even when the test
    /// process dies without unwinding.
    pub fn process_group(&self) -> i32 {
        self.processes.first().map(|(_, c)| c.id() as i32).unwrap_or(0)
    }

    /// The pid of the running control-plane process `name` (`etcd`,
    /// `kube-apiserver`, `kube-controller-manager`): the newest one started.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.processes.iter().rev().find(|(n, _)| *n == name).map(|(_, c)| c.id())
    }

    /// `http://127.0.0.1:PORT` of etcd's client endpoint (gRPC and its
    /// JSON gateway under `/v3/`), for tests that act on etcd directly,
    /// for example compacting it.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The directory holding the control-plane binaries.
    pub fn assets(&self) -> &Path {
        &self.assets
    }

    /// The directory holding certificates, data and process logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some((_, first)) = self.processes.first() {
            // SAFETY: kill(2) with a negative pid signals a process group we created.
            unsafe { libc::kill(-(first.id() as i32), libc::SIGKILL) };
        }
        for (_, child) in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Server-side apply every CRD in `dir` and wait until each is Established.
pub async fn install_crds(client: &Client, dir: &Path) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    entries.sort();
    for path in entries {
        let text = fs::read_to_string(&path)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition =
                serde_yaml::from_value(value).with_context(|| format!("parsing {}", path.display()))?;
            let name = crd.metadata.name.clone().ok_or_else(|| anyhow!("CRD without a name in {}", path.display()))?;
            api.patch(&name, &PatchParams::apply("regcred-testenv").force(), &Patch::Apply(&crd))
                .await
                .with_context(|| format!("applying CRD {name}"))?;
            names.push(name);
        }
    }
    for name in names {
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not Established within 30s"))??;
    }
    Ok(())
}

/// A control-plane process stopped by [`ControlPlane::kill`], to be started
/// again with the same arguments (same ports, data directory and
/// certificates) by [`ControlPlane::start_again`].
#[derive(Debug)]
pub struct Stopped {
    name: &'static str,
    args: Vec<String>,
}

impl ControlPlane {
    /// Sends SIGKILL to the control-plane process `name` (`etcd`,
    /// `kube-apiserver` or `kube-controller-manager`) and waits until it has
    /// exited. The other processes keep running.
    pub fn kill(&mut self, name: &str) -> Result<Stopped> {
        let (name, child) = self
            .processes
            .iter_mut()
            .rev()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| anyhow!("no control-plane process {name}"))?;
        let cmdline = fs::read(format!("/proc/{}/cmdline", child.id()))
            .with_context(|| format!("reading the command line of {name}"))?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .skip(1)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into())
            .collect();
        child.kill()?;
        child.wait()?;
        // The exited child stays in the list: the first one's pid is the
        // process group id that teardown signals.
        Ok(Stopped { name, args })
    }

    /// Starts a process stopped by [`ControlPlane::kill`] again, in the same
    /// process group, and for kube-apiserver waits until it is ready.
    pub async fn start_again(&mut self, stopped: Stopped) -> Result<()> {
        let log =
            fs::OpenOptions::new().append(true).create(true).open(self.dir.join(format!("{}.log", stopped.name)))?;
        let mut cmd = Command::new(self.assets.join(stopped.name));
        cmd.args(&stopped.args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        cmd.process_group(self.process_group());
        let child = cmd.spawn().with_context(|| format!("starting {} again", stopped.name))?;
        self.processes.push((stopped.name, child));
        if stopped.name == "kube-apiserver" {
            self.wait_apiserver_ready().await?;
        }
        Ok(())
    }

    /// Waits until kube-apiserver answers `/readyz` with `ok`, failing early
    /// if the newest kube-apiserver process exits.
    async fn wait_apiserver_ready(&mut self) -> Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let req = http::Request::get("/readyz").body(Vec::new())?;
            if client.request_text(req).await.is_ok_and(|body| body.trim() == "ok") {
                return Ok(());
            }
            if let Some((_, child)) = self.processes.iter_mut().rev().find(|(n, _)| *n == "kube-apiserver")
                && let Some(status) = child.try_wait()?
            {
                bail!("kube-apiserver exited with {status}:\n{}", log_tail(&self.dir.join("kube-apiserver.log")));
            }
            if Instant::now() > deadline {
                bail!("kube-apiserver not ready after 120s:\n{}", log_tail(&self.dir.join("kube-apiserver.log")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILLs kube-apiserver; start it again with [`ControlPlane::start_again`].
    pub fn kill_apiserver(&mut self) -> Result<Stopped> {
        self.kill("kube-apiserver")
    }

    /// SIGKILLs etcd and starts it again on the same data directory, then
    /// waits until kube-apiserver is ready again.
    pub async fn restart_etcd(&mut self) -> Result<()> {
        let stopped = self.kill("etcd")?;
        self.start_again(stopped).await?;
        self.wait_apiserver_ready().await
    }
}
