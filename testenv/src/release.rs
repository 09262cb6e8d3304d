//! What the release tests need from outside the tree under test: the
//! previous release, built from the commit `releases.txt` records for it
//! (`hack/previous-release.sh`), and the release tools, cosign and
//! cargo-cyclonedx (`hack/release-tools.sh`). Both are cached under
//! `~/.cache/regcred` and built when missing.

use std::path::PathBuf;

use anyhow::{Result, anyhow};

/// The previous release, as `hack/previous-release.sh` leaves it.
#[derive(Clone, Debug)]
pub struct PreviousRelease {
    pub version: String,
    pub commit: String,
    /// Its regcred binary (stripped, debug profile).
    pub binary: PathBuf,
    /// Its Helm chart directory (`charts/regcred` at that commit).
    pub chart: PathBuf,
}

/// Builds (or reuses) the previous release.
pub fn previous_release() -> Result<PreviousRelease> {
    let dir = crate::hack_dir(
        "previous-release.sh",
        "the upgrade tests install the previous release built from its recorded commit (releases.txt)",
    )
    .map_err(|e| anyhow!(e))?;
    let read = |name: &str| -> Result<String> {
        Ok(std::fs::read_to_string(dir.join(name)).map_err(|e| anyhow!("{}/{name}: {e}", dir.display()))?.trim().into())
    };
    Ok(PreviousRelease {
        version: read("VERSION")?,
        commit: read("COMMIT")?,
        binary: dir.join("regcred"),
        chart: dir.join("chart"),
    })
}

/// The directory holding `cosign` and `cargo-cyclonedx`.
pub fn tools_dir() -> Result<PathBuf> {
    crate::hack_dir("release-tools.sh", "the release tests sign and verify with cosign").map_err(|e| anyhow!(e))
}
