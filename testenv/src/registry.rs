//! A real CNCF Distribution registry (Debian `docker-registry`) on loopback,
//! with htpasswd authentication and the test image
//! ([`crate::images::write_test_image`]) pushed by `skopeo`.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::free_port;
use crate::operator::http_get;

/// Fails with a message saying how to install `tool` when it is missing.
pub fn require_tool(tool: &str, package: &str) -> Result<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/usr/bin"]) {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{tool} is not installed: run `apt-get install {package}` (or `make deps`)")
}

/// A running registry. Dropping it stops the process and removes its files.
pub struct Registry {
    child: Child,
    dir: PathBuf,
    /// `127.0.0.1:PORT`.
    pub host: String,
}

/// The repository and tag of the pushed test image.
pub const TEST_IMAGE: &str = "regcred/test:v1";

impl Registry {
    /// Starts a registry that accepts exactly `users` (htpasswd, bcrypt) and
    /// pushes [`TEST_IMAGE`] with the first of them. `process_group` is the
    /// control plane's, so the registry stops with it.
    pub fn start_htpasswd(process_group: i32, users: &[(&str, &str)]) -> Result<Registry> {
        let binary = require_tool("docker-registry", "docker-registry")?;
        let htpasswd = require_tool("htpasswd", "apache2-utils")?;
        require_tool("skopeo", "skopeo")?;
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("regcred-registry-{}-{port}", std::process::id()));
        fs::create_dir_all(dir.join("data"))?;
        let mut lines = String::new();
        for (user, pass) in users {
            crate::operator::record_secret(pass);
            let out = Command::new(&htpasswd).args(["-Bbn", user, pass]).output()?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            lines.push_str(String::from_utf8_lossy(&out.stdout).trim());
            lines.push('\n');
        }
        fs::write(dir.join("htpasswd"), lines)?;
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: regcred-test\n    path: {htpasswd}\n",
            data = dir.join("data").display(),
            htpasswd = dir.join("htpasswd").display(),
        );
        fs::write(dir.join("config.yml"), config)?;
        let log = fs::File::create(dir.join("registry.log"))?;
        let child = Command::new(binary)
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(process_group)
            .spawn()?;
        let mut registry = Registry { child, dir, host: format!("127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = registry.child.try_wait()? {
                bail!(
                    "docker-registry exited with {status}: {}",
                    fs::read_to_string(registry.dir.join("registry.log"))?
                );
            }
            // 401 means it is up and asking for credentials.
            if http_get(&format!("http://{}/v2/", registry.host)).is_ok_and(|(code, _)| code == 401) {
                break;
            }
            if Instant::now() > deadline {
                bail!("docker-registry did not come up");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (user, pass) = users.first().context("at least one user")?;
        registry.push_test_image(user, pass)?;
        Ok(registry)
    }

    /// `HOST/regcred/test:v1`.
    pub fn test_image(&self) -> String {
        format!("{}/{TEST_IMAGE}", self.host)
    }

    fn push_test_image(&self, user: &str, pass: &str) -> Result<()> {
        let layout = self.dir.join("oci");
        crate::images::write_test_image(&layout)?;
        let policy = self.dir.join("policy.json");
        fs::write(&policy, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)?;
        let out = Command::new("skopeo")
            .arg(format!("--policy={}", policy.display()))
            .args(["copy", "--dest-tls-verify=false", "--dest-creds"])
            .arg(format!("{user}:{pass}"))
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker://{}", self.test_image()))
            .output()?;
        if !out.status.success() {
            bail!("pushing the test image failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `skopeo inspect` of `image` with the docker config at `authfile`.
pub fn skopeo_inspect(authfile: &Path, image: &str) -> Result<Output> {
    Ok(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--authfile"])
        .arg(authfile)
        .arg(format!("docker://{image}"))
        .output()?)
}
