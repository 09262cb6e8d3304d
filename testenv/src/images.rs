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

/// One entry of a layer.
enum Entry<'a> {
    Dir(&'a str),
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
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> Result<(String, usize)> {
        let digest = sha256_hex(bytes);
        fs::write(blobs.join(&digest), bytes)?;
        Ok((format!("sha256:{digest}"), bytes.len()))
    };
    let layer = busybox_layer()?;
    let (layer_digest, layer_size) = put(&layer)?;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
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

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A POSIX (ustar) archive of `entries`, owned by root.
fn tar(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for entry in entries {
        let (name, kind, mode, content, link): (&str, u8, u32, &[u8], &str) = match entry {
            Entry::Dir(n) => (n, b'5', 0o755, &[], ""),
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
