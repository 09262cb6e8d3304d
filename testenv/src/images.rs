//! Container images made by the tests, with no container engine and nothing
//! pulled from the internet: OCI image layouts holding Debian's
//! `busybox-static` (with its applet links) and a marker file.
//!
//! - [`write_test_image`] is the private test image every registry serves:
//!   it runs (`sh -c 'cat /hello.txt; sleep ...'`), so a Pod that pulled it
//!   reaches Running, and skopeo can inspect it as before.
//! - [`write_pause_image`] is the node's sandbox (`pause`) image: busybox
//!   sleeping for ever, imported into containerd from an archive.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::registry::require_tool;

/// Where Debian's `busybox-static` puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The text of `/hello.txt` in the test image; a Pod that ran it prints it.
pub const HELLO: &str = "pulled with a Secret written by regcred\n";

/// The static busybox binary and the names of its applets, or an error
/// saying how to get it.
fn busybox() -> Result<(Vec<u8>, Vec<String>)> {
    let installed = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "busybox-static"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed"));
    if !installed && !Path::new(BUSYBOX).is_file() {
        require_tool("busybox", "busybox-static")?;
    }
    let binary = fs::read(BUSYBOX).with_context(|| {
        format!(
            "reading {BUSYBOX}: the test images are made from it; run `apt-get install busybox-static` (or `make deps`)"
        )
    })?;
    let out = std::process::Command::new(BUSYBOX).arg("--list").output()?;
    if !out.status.success() {
        bail!("`{BUSYBOX} --list` failed; reinstall busybox-static");
    }
    let applets = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(String::from)
        .collect();
    Ok((binary, applets))
}

/// One entry of a layer: a directory (with its mode), a file (content,
/// mode) or a symbolic link (target).
pub enum Entry<'a> {
    Dir(&'a str),
    DirMode(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
}

/// The root filesystem both images share: `/bin/busybox` with a link per
/// applet, `/tmp`, `/etc/passwd`, and `/hello.txt`.
fn busybox_layer() -> Result<Vec<u8>> {
    let (binary, applets) = busybox()?;
    let links: Vec<String> = applets.iter().map(|a| format!("bin/{a}")).collect();
    let mut entries = vec![
        Entry::Dir("bin/"),
        Entry::Dir("etc/"),
        Entry::Dir("tmp/"),
        Entry::File("bin/busybox", &binary, 0o755),
        Entry::File("etc/passwd", b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n", 0o644),
        Entry::File("etc/group", b"root:x:0:\nnobody:x:65534:\n", 0o644),
        Entry::File("hello.txt", HELLO.as_bytes(), 0o644),
    ];
    entries.extend(links.iter().map(|l| Entry::Symlink(l, "busybox")));
    tar(&entries)
}

/// Writes an OCI image layout at `dir` holding one image tagged `tag`, whose
/// default command is `cmd`. Returns the manifest digest.
fn write_layout(dir: &Path, tag: &str, cmd: &[&str]) -> Result<String> {
    let config = serde_json::json!({"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"});
    write_image(dir, tag, &[busybox_layer()?], config, false)
}

/// Writes an OCI image layout at `dir` with one image tagged `tag`: the
/// given layers (uncompressed tar archives, gzip-compressed in the layout
/// when `gzip`) and the image `config` (the `config` object of the image
/// configuration: Entrypoint, Cmd, User, Labels, ...). Returns the manifest
/// digest.
pub fn write_image(dir: &Path, tag: &str, layers: &[Vec<u8>], config: serde_json::Value, gzip: bool) -> Result<String> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> Result<(String, usize)> {
        let digest = sha256_hex(bytes);
        fs::write(blobs.join(&digest), bytes)?;
        Ok((format!("sha256:{digest}"), bytes.len()))
    };
    let mut diff_ids = Vec::new();
    let mut descriptors = Vec::new();
    for layer in layers {
        diff_ids.push(format!("sha256:{}", sha256_hex(layer)));
        let (blob, media_type) = if gzip {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(layer)?;
            (enc.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (layer.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        let (digest, size) = put(&blob)?;
        descriptors.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
    }
    let labels = config.get("Labels").cloned();
    let image_config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&image_config)?)?;
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": descriptors
    });
    if let Some(labels) = labels {
        manifest["annotations"] = labels;
    }
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }]
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(manifest_digest)
}

/// Writes the test image as an OCI layout tagged `v1`: busybox and
/// `/hello.txt`; it prints the file and sleeps.
pub fn write_test_image(dir: &Path) -> Result<String> {
    write_layout(dir, "v1", &["/bin/sh", "-c", "cat /hello.txt; exec sleep 3600"])
}

/// Writes the sandbox image as an OCI archive (a tar of the layout) at
/// `archive`, named `name` for `ctr images import`.
pub fn write_pause_image(archive: &Path, name: &str) -> Result<()> {
    let dir = archive.with_extension("layout");
    let _ = fs::remove_dir_all(&dir);
    write_layout(&dir, "pause", &["/bin/sleep", "2147483647"])?;
    // ctr names an imported image after this annotation.
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&index_path)?)?;
    index["manifests"][0]["annotations"]["io.containerd.image.name"] = name.into();
    fs::write(&index_path, serde_json::to_vec(&index)?)?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for name in ["oci-layout", "index.json"] {
        files.push((name.to_string(), fs::read(dir.join(name))?));
    }
    for blob in fs::read_dir(dir.join("blobs/sha256"))? {
        let blob = blob?;
        files.push((format!("blobs/sha256/{}", blob.file_name().to_string_lossy()), fs::read(blob.path())?));
    }
    let mut entries = vec![Entry::Dir("blobs/"), Entry::Dir("blobs/sha256/")];
    entries.extend(files.iter().map(|(n, b)| Entry::File(n, b, 0o644)));
    fs::write(archive, tar(&entries)?)?;
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// What `make image` puts in the regcred image besides the binary.
pub struct RegcredImage<'a> {
    /// The `regcred` executable.
    pub binary: &'a Path,
    /// The tag in the layout (`0.1.0`).
    pub tag: &'a str,
    /// `org.opencontainers.image.version`.
    pub version: &'a str,
    /// `org.opencontainers.image.source` (the repository's URL).
    pub source: &'a str,
    /// `org.opencontainers.image.revision` (the commit), if known.
    pub revision: Option<&'a str>,
}

/// The regcred image as written: what it holds and how big it is.
#[derive(Debug)]
pub struct ImageSummary {
    pub manifest_digest: String,
    /// Every path in the image.
    pub paths: Vec<String>,
    /// The layer, uncompressed and gzip-compressed (what a registry stores
    /// and a node downloads).
    pub layer_bytes: usize,
    pub compressed_bytes: u64,
}

/// The uid and gid the image runs as (distroless's `nonroot`, and the
/// chart's `runAsUser`).
pub const NONROOT: u32 = 65532;

/// Shared libraries `binary` loads, from `ldd` (none for a static binary).
fn shared_libraries(binary: &Path) -> Result<Vec<String>> {
    let out = std::process::Command::new("ldd").arg(binary).output().context("running ldd (libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or_default(),
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libs.push(path.to_string());
        } else if line.contains("not found") {
            bail!("ldd {}: {line}", binary.display());
        }
    }
    Ok(libs)
}

/// Writes the regcred image as an OCI layout at `dir`: the binary at
/// `/usr/local/bin/regcred`, the shared libraries it loads (glibc's, at the
/// paths `ldd` names), the CA certificates, `/etc/passwd` and `/etc/group`
/// with the non-root user 65532, and an empty `/tmp`. Entrypoint
/// `regcred`, command `run`, user 65532. Nothing else: no shell, no package
/// manager, nothing secret.
pub fn write_regcred_image(dir: &Path, image: &RegcredImage) -> Result<ImageSummary> {
    const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
    let binary = fs::read(image.binary).with_context(|| format!("reading {}", image.binary.display()))?;
    let ca = fs::read(CA_BUNDLE).with_context(|| {
        format!("reading {CA_BUNDLE}: install the CA certificates (apt-get install ca-certificates)")
    })?;
    let passwd = format!(
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
    );
    let group = format!("root:x:0:\nnonroot:x:{NONROOT}:\n");
    let mut files: Vec<(String, Vec<u8>, u32)> = vec![
        ("usr/local/bin/regcred".into(), binary, 0o755),
        (CA_BUNDLE.trim_start_matches('/').into(), ca, 0o644),
        ("etc/passwd".into(), passwd.into_bytes(), 0o644),
        ("etc/group".into(), group.into_bytes(), 0o644),
    ];
    for lib in shared_libraries(image.binary)? {
        let bytes = fs::read(&lib).with_context(|| format!("reading {lib}"))?;
        files.push((lib.trim_start_matches('/').to_string(), bytes, 0o755));
    }
    // Parent directories first, each once.
    let mut dirs: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for (path, _, _) in &files {
        let mut p = Path::new(path).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(format!("{}/", d.display()));
            p = d.parent();
        }
    }
    dirs.insert("home/".into());
    dirs.insert("home/nonroot/".into());
    let mut entries: Vec<Entry> = vec![Entry::DirMode("tmp/", 0o1777)];
    entries.extend(dirs.iter().map(|d| Entry::Dir(d)));
    entries.extend(files.iter().map(|(p, b, m)| Entry::File(p, b, *m)));
    let layer = tar(&entries)?;
    let mut labels = serde_json::json!({
        "org.opencontainers.image.title": "regcred",
        "org.opencontainers.image.description": "Kubernetes operator that keeps image pull secrets fresh",
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.version": image.version,
        "org.opencontainers.image.source": image.source,
    });
    if let Some(rev) = image.revision {
        labels["org.opencontainers.image.revision"] = rev.into();
    }
    let config = serde_json::json!({
        "User": format!("{NONROOT}:{NONROOT}"),
        "Entrypoint": ["/usr/local/bin/regcred"],
        "Cmd": ["run"],
        "Env": ["PATH=/usr/local/bin", format!("SSL_CERT_FILE={CA_BUNDLE}")],
        "ExposedPorts": {"8080/tcp": {}},
        "WorkingDir": "/",
        "Labels": labels,
    });
    let _ = fs::remove_dir_all(dir);
    let manifest_digest = write_image(dir, image.tag, std::slice::from_ref(&layer), config, true)?;
    let mut compressed_bytes = 0;
    for blob in fs::read_dir(dir.join("blobs/sha256"))? {
        compressed_bytes += blob?.metadata()?.len();
    }
    let mut paths: Vec<String> = dirs.into_iter().collect();
    paths.push("tmp/".into());
    paths.extend(files.iter().map(|(p, _, _)| p.clone()));
    paths.sort();
    Ok(ImageSummary { manifest_digest, paths, layer_bytes: layer.len(), compressed_bytes })
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A POSIX (ustar) archive of `entries`, owned by root.
pub fn tar(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for entry in entries {
        let (name, kind, mode, content, link): (&str, u8, u32, &[u8], &str) = match entry {
            Entry::Dir(n) => (n, b'5', 0o755, &[], ""),
            Entry::DirMode(n, m) => (n, b'5', *m, &[], ""),
            Entry::File(n, c, m) => (n, b'0', *m, c, ""),
            Entry::Symlink(n, target) => (n, b'2', 0o777, &[], target),
        };
        if name.len() > 100 || link.len() > 100 {
            bail!("tar: name too long: {name}");
        }
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |field: &mut [u8], value: u64| {
            let s = format!("{:0width$o}\0", value, width = field.len() - 1);
            field.copy_from_slice(s.as_bytes());
        };
        octal(&mut header[100..108], mode as u64);
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], content.len() as u64);
        octal(&mut header[136..148], 0);
        header[156] = kind;
        header[157..157 + link.len()].copy_from_slice(link.as_bytes());
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u64 = header.iter().map(|&b| b as u64).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_carry_kind_mode_and_link() {
        let data =
            tar(&[Entry::Dir("bin/"), Entry::File("bin/x", b"hi", 0o755), Entry::Symlink("bin/y", "x")]).unwrap();
        assert_eq!(data.len() % 512, 0);
        assert_eq!(&data[..4], b"bin/");
        assert_eq!(data[156], b'5');
        let file = &data[512..1024];
        assert_eq!(&file[100..107], b"0000755");
        assert_eq!(file[156], b'0');
        assert_eq!(&data[1024..1026], b"hi");
        let link = &data[1536..2048];
        assert_eq!(link[156], b'2');
        assert_eq!(link[157], b'x');
    }
}
