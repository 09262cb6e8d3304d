//! A real Prometheus server and `promtool`, from the Debian package
//! `prometheus` (`hack/install-test-deps.sh` installs it; the package's own
//! service is never used).
//!
//! [`Prometheus::start`] runs `prometheus` on a free port of 127.0.0.1 with
//! its own configuration and data directory, scraping the given targets
//! and evaluating the given rule files, in a process group the caller owns
//! (a [`crate::ControlPlane`]'s, so its teardown and watchdog reach it too).
//! Dropping it stops the process and removes its directory.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::free_port;
use crate::operator::http_get;

/// How to get the binaries when they are missing.
const INSTALL_HINT: &str = "install the Debian package `prometheus` (it has both `prometheus` and `promtool`): \
     `make deps` (hack/install-test-deps.sh) or `apt-get install --no-install-recommends prometheus`";

/// Path of `name` (`prometheus` or `promtool`) on PATH, or an error saying
/// how to install it.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{name} not found on PATH: {INSTALL_HINT}"))
}

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `dir` (created; removed on drop), scraping
    /// `targets` (`host:port`, path `/metrics`) as job `job` every
    /// `interval` and evaluating `rule_files` at the same interval, and
    /// waits until it is ready.
    pub fn start(
        dir: &Path,
        process_group: i32,
        job: &str,
        targets: &[&str],
        rule_files: &[PathBuf],
        interval: Duration,
    ) -> Result<Prometheus> {
        let binary = binary("prometheus")?;
        fs::create_dir_all(dir.join("data"))?;
        let secs = interval.as_secs().max(1);
        let config = serde_json::json!({
            "global": {"scrape_interval": format!("{secs}s"), "evaluation_interval": format!("{secs}s"),
                       "scrape_timeout": format!("{secs}s")},
            "rule_files": rule_files,
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
        });
        // JSON is YAML: Prometheus reads it as its configuration file.
        let config_path = dir.join("prometheus.yml");
        fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let port = free_port()?;
        let log = fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(process_group)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut prometheus = Prometheus { child, url: format!("http://127.0.0.1:{port}"), dir: dir.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = prometheus.child.try_wait()? {
                bail!("prometheus exited with {status}:\n{}", prometheus.log_text());
            }
            if http_get(&format!("{}/-/ready", prometheus.url)).is_ok_and(|(code, _)| code == 200) {
                return Ok(prometheus);
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready after 30s:\n{}", prometheus.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Prometheus's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `data` of a successful answer of the HTTP API at `path`
    /// (`/api/v1/...`).
    pub fn api(&self, path: &str) -> Result<Value> {
        let (code, body) = http_get(&format!("{}{path}", self.url))?;
        let answer: Value = serde_json::from_str(&body).with_context(|| format!("{path} answered {code}: {body}"))?;
        if code != 200 || answer["status"] != "success" {
            bail!("{path} answered {code}: {body}");
        }
        Ok(answer["data"].clone())
    }

    /// The alerts pending or firing now (`/api/v1/alerts`).
    pub fn alerts(&self) -> Result<Vec<Value>> {
        Ok(self.api("/api/v1/alerts")?["alerts"].as_array().cloned().unwrap_or_default())
    }

    /// The health of each scrape target (`/api/v1/targets`): `(scrapeUrl,
    /// health, lastError)`.
    pub fn targets(&self) -> Result<Vec<(String, String, String)>> {
        let data = self.api("/api/v1/targets")?;
        Ok(data["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
                (s("scrapeUrl"), s("health"), s("lastError"))
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
