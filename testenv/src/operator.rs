//! `regcred run` as a process against a [`ControlPlane`].

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{ControlPlane, free_port};

/// A running operator. Dropping it stops the process; its log stays in the
/// control plane's directory while that lives.
pub struct Operator {
    child: Child,
    /// `http://127.0.0.1:PORT` of /metrics, /healthz and /readyz.
    pub metrics_url: String,
    log: PathBuf,
}

impl Operator {
    /// Starts `binary run` as the operator's own `system:masters` identity
    /// (under the guardrails, `crate::guardrails`), with `extra_args`, and waits until
    /// `/readyz` answers 200 (caches filled).
    pub fn start(
        cp: &ControlPlane,
        binary: &Path,
        cluster_resource_namespace: &str,
        extra_args: &[&str],
    ) -> Result<Operator> {
        Self::start_with_env(cp, binary, cluster_resource_namespace, extra_args, &[])
    }

    /// Like [`Operator::start`], with extra environment variables (for
    /// example the cloud SDKs' documented endpoint overrides).
    pub fn start_with_env(
        cp: &ControlPlane,
        binary: &Path,
        cluster_resource_namespace: &str,
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Operator> {
        Self::start_as(cp, binary, cp.operator_kubeconfig_path(), cluster_resource_namespace, extra_args, envs)
    }

    /// Like [`Operator::start_with_env`], but authenticated with
    /// `kubeconfig` instead of the operator's: for example a
    /// ServiceAccount's, from [`ControlPlane::service_account_kubeconfig`],
    /// so that RBAC applies to the operator.
    pub fn start_as(
        cp: &ControlPlane,
        binary: &Path,
        kubeconfig: &Path,
        cluster_resource_namespace: &str,
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Operator> {
        let port = free_port()?;
        let log = match log_dir() {
            Some(dir) => dir.join(format!("regcred-{}-{port}.log", std::process::id())),
            None => cp.dir().join(format!("regcred-{port}.log")),
        };
        let out = fs::File::create(&log)?;
        let child = Command::new(binary)
            .arg("run")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--metrics-addr=127.0.0.1:{port}"))
            .arg(format!("--cluster-resource-namespace={cluster_resource_namespace}"))
            .args(extra_args)
            .envs(envs.iter().copied())
            .env("REGCRED_LOG_LEVEL", std::env::var("REGCRED_TEST_LOG_LEVEL").unwrap_or_else(|_| "debug".into()))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(cp.process_group())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut op = Operator { child, metrics_url: format!("http://127.0.0.1:{port}"), log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = op.child.try_wait()? {
                bail!("regcred exited with {status}:\n{}", op.log_text());
            }
            if http_get(&format!("{}/readyz", op.metrics_url)).is_ok_and(|(code, _)| code == 200) {
                return Ok(op);
            }
            if Instant::now() > deadline {
                bail!("regcred not ready after 60s:\n{}", op.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Path of the operator's log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        let (code, body) = http_get(&format!("{}/metrics", self.metrics_url))?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(body)
    }

    /// Kubernetes API requests the operator has sent that write (any method
    /// but GET), from its own request counter.
    pub fn write_requests(&self) -> Result<u64> {
        let text = self.metrics()?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("regcred_kube_requests_total{") && !l.contains("method=\"GET\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Process id of the operator (for example to read its memory use from
    /// `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use std::os::unix::process::CommandExt;

/// `$REGCRED_TEST_LOG_DIR`, where the test suite collects operator logs and
/// the secret values it used, for the suite-wide leak check
/// (`hack/check-leaks.sh`).
pub fn log_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("REGCRED_TEST_LOG_DIR")?);
    fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

/// Records a secret value a test hands to the operator, so the leak check
/// can search every operator log for it.
pub fn record_secret(value: &str) {
    use std::io::Write;
    if let Some(dir) = log_dir()
        && let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(dir.join("secret-values.txt"))
    {
        let _ = writeln!(f, "{value}");
    }
}

/// A minimal HTTP/1.1 GET on loopback: `(status, body)`.
pub fn http_get(url: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no HTTP status")?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}
