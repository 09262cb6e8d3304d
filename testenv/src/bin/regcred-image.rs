//! `make image`: builds regcred's container image as an OCI layout, with no
//! Docker or any container engine, and optionally pushes it with skopeo.
//!
//! ```text
//! regcred-image --binary target/release/regcred --out target/image --tag 0.1.0 \
//!     [--source URL] [--revision SHA] [--push HOST/REPO:TAG] [--dest-tls-verify=false] [--dest-creds=USER:PASS]
//! ```
//!
//! The image holds the binary, the shared libraries it loads, the CA
//! certificates and a non-root user (`testenv::images::write_regcred_image`).
//! It runs the same way as the Dockerfile's: user 65532, entrypoint
//! `regcred`, command `run`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use regcred_testenv::images::{RegcredImage, write_regcred_image};

fn main() {
    if let Err(e) = run() {
        eprintln!("regcred-image: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut binary = None;
    let mut out = None;
    let mut tag = env!("CARGO_PKG_VERSION").to_string();
    let mut source = String::new();
    let mut revision = None;
    let mut push = None;
    let mut skopeo_flags = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--binary" => binary = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--tag" => tag = value()?,
            "--source" => source = value()?,
            "--revision" => revision = Some(value()?).filter(|r: &String| !r.is_empty()),
            "--push" => push = Some(value()?).filter(|p: &String| !p.is_empty()),
            // skopeo's destination flags, in their --flag=value form.
            flag if flag.starts_with("--dest-") => skopeo_flags.push(flag.to_string()),
            other => bail!("unknown argument {other}"),
        }
    }
    let binary = binary.context("--binary PATH is required")?;
    let out = out.context("--out DIR is required")?;
    let summary = write_regcred_image(
        &out,
        &RegcredImage { binary: &binary, tag: &tag, version: &tag, source: &source, revision: revision.as_deref() },
    )?;
    println!("OCI layout: {} (tag {tag}, manifest {})", out.display(), summary.manifest_digest);
    println!(
        "size: {:.1} MiB compressed (what a registry stores and a node pulls), {:.1} MiB uncompressed, {} paths",
        summary.compressed_bytes as f64 / 1048576.0,
        summary.layer_bytes as f64 / 1048576.0,
        summary.paths.len()
    );
    for p in &summary.paths {
        println!("  /{p}");
    }
    if let Some(dest) = push {
        let policy = out.with_extension("policy.json");
        std::fs::write(&policy, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)?;
        let status = Command::new("skopeo")
            .arg(format!("--policy={}", policy.display()))
            .arg("copy")
            .args(&skopeo_flags)
            .arg(format!("oci:{}:{tag}", out.display()))
            .arg(format!("docker://{dest}"))
            .status()
            .context("running skopeo (apt-get install skopeo)")?;
        if !status.success() {
            bail!("skopeo copy to {dest} failed");
        }
        println!("pushed to {dest}");
    }
    Ok(())
}
