//! A real CNCF Distribution registry (Debian `docker-registry`) on loopback,
//! with htpasswd authentication and a small test image pushed by `skopeo`.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

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
        write_oci_layout(&layout)?;
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

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes an OCI image layout with one tiny layer, tagged `v1`.
pub fn write_oci_layout(dir: &Path) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> Result<(String, usize)> {
        let digest = sha256_hex(bytes);
        fs::write(blobs.join(&digest), bytes)?;
        Ok((format!("sha256:{digest}"), bytes.len()))
    };
    let layer = tar_one_file("hello.txt", b"pulled with a Secret written by regcred\n");
    let (layer_digest, layer_size) = put(&layer)?;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}]
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "v1"}
        }]
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

/// A POSIX tar archive holding one regular file.
fn tar_one_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: u64| {
        let s = format!("{:0width$o}\0", value, width = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    };
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], content.len() as u64);
    octal(&mut header[136..148], 0);
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u64 = header.iter().map(|&b| b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(s.as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}
