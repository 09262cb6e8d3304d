//! Which Kubernetes release the tests run on, and what that release gives.
//!
//! The version is `REGCRED_K8S_VERSION`, or `K8S_DEFAULT` in
//! `hack/versions.env` (the file the build scripts read too); `make
//! test-matrix` sets it once per supported minor. Tests ask here rather than
//! compare version numbers themselves, so that what each minor gives is
//! written down once (and in docs/compatibility.md).

use std::sync::OnceLock;

/// `hack/versions.env`, compiled in: the one place the versions are named.
const VERSIONS_ENV: &str = include_str!("../../hack/versions.env");

/// A `KEY=value` (or `KEY="value"`) line of `hack/versions.env`.
pub fn versions_env(key: &str) -> Option<String> {
    VERSIONS_ENV.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k == key).then(|| v.trim_matches('"').to_string())
    })
}

/// A Kubernetes release, `1.MINOR.PATCH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct K8sVersion {
    pub minor: u32,
    pub patch: u32,
}

impl K8sVersion {
    /// Parses `1.N.P` (a leading `v` is allowed).
    pub fn parse(s: &str) -> Option<K8sVersion> {
        let mut parts = s.trim().trim_start_matches('v').split('.');
        let (major, minor, patch) = (parts.next()?, parts.next()?, parts.next()?);
        if major != "1" || parts.next().is_some() {
            return None;
        }
        Some(K8sVersion { minor: minor.parse().ok()?, patch: patch.parse().ok()? })
    }

    /// The MutatingAdmissionPolicy API version this release serves when
    /// asked to: `v1` from 1.36 (GA, on by default), `v1beta1` on 1.34 and
    /// 1.35 (off by default: the `MutatingAdmissionPolicy` feature gate and
    /// `--runtime-config`), none regcred uses before (1.32–1.33 have only
    /// the alpha `v1alpha1`).
    pub fn admission_api(self) -> Option<&'static str> {
        match self.minor {
            36.. => Some("v1"),
            34 | 35 => Some("v1beta1"),
            _ => None,
        }
    }

    /// kube-apiserver flags that turn the MutatingAdmissionPolicy API on
    /// where it is off by default (what a platform engineer does on 1.34 and
    /// 1.35 to use injection).
    pub fn admission_api_flags(self) -> Vec<String> {
        match self.admission_api() {
            Some("v1beta1") => vec![
                "--feature-gates=MutatingAdmissionPolicy=true".into(),
                "--runtime-config=admissionregistration.k8s.io/v1beta1=true".into(),
            ],
            _ => Vec::new(),
        }
    }

    /// kube-apiserver flags for a cluster that serves no
    /// MutatingAdmissionPolicy API at all (the resources of the version
    /// this release would serve are turned off).
    pub fn admission_api_off_flags(self) -> Vec<String> {
        let mut flags = vec!["--disable-admission-plugins=MutatingAdmissionPolicy".to_string()];
        if let Some(v) = self.admission_api() {
            flags.push(format!(
                "--runtime-config=admissionregistration.k8s.io/{v}/mutatingadmissionpolicies=false,\
                 admissionregistration.k8s.io/{v}/mutatingadmissionpolicybindings=false"
            ));
        }
        flags
    }

    /// The kubelet sends the Pod's ServiceAccount token to credential
    /// provider plugins (`tokenAttributes`, KEP-4412): beta and on by
    /// default from 1.34; alpha behind `KubeletServiceAccountTokenForCredentialProviders`
    /// in 1.33.
    pub fn kubelet_pod_tokens(self) -> bool {
        self.minor >= 34
    }
}

impl std::fmt::Display for K8sVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "1.{}.{}", self.minor, self.patch)
    }
}

/// The release the tests run on.
pub fn k8s() -> K8sVersion {
    static V: OnceLock<K8sVersion> = OnceLock::new();
    *V.get_or_init(|| {
        let s = std::env::var("REGCRED_K8S_VERSION")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| versions_env("K8S_DEFAULT"))
            .expect("hack/versions.env names K8S_DEFAULT");
        K8sVersion::parse(&s).unwrap_or_else(|| panic!("REGCRED_K8S_VERSION={s:?} is not a Kubernetes release 1.N.P"))
    })
}

/// The supported releases, oldest first (`K8S_MATRIX`).
pub fn matrix() -> Vec<K8sVersion> {
    versions_env("K8S_MATRIX")
        .unwrap_or_default()
        .split_whitespace()
        .map(|v| K8sVersion::parse(v).unwrap_or_else(|| panic!("K8S_MATRIX lists {v:?}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_releases_and_refuses_other_strings() {
        assert_eq!(K8sVersion::parse("1.37.2"), Some(K8sVersion { minor: 37, patch: 2 }));
        assert_eq!(K8sVersion::parse("v1.33.13"), Some(K8sVersion { minor: 33, patch: 13 }));
        for bad in ["1.37", "2.0.0", "1.37.2.1", "1.x.2", ""] {
            assert_eq!(K8sVersion::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn what_each_minor_gives() {
        let v = |minor| K8sVersion { minor, patch: 0 };
        assert_eq!(v(33).admission_api(), None);
        assert!(v(33).admission_api_flags().is_empty());
        assert_eq!(v(34).admission_api(), Some("v1beta1"));
        assert!(v(35).admission_api_flags().iter().any(|f| f.contains("MutatingAdmissionPolicy=true")));
        assert_eq!(v(36).admission_api(), Some("v1"));
        assert!(v(37).admission_api_flags().is_empty());
        assert!(v(37).admission_api_off_flags()[1].contains("k8s.io/v1/mutatingadmissionpolicies=false"));
        assert!(!v(33).kubelet_pod_tokens() && v(34).kubelet_pod_tokens());
    }

    #[test]
    fn the_matrix_is_ordered_and_holds_the_default() {
        let m = matrix();
        assert!(m.len() >= 5 && m.windows(2).all(|w| w[0].minor < w[1].minor), "{m:?}");
        assert_eq!(m[0].minor, 33, "the oldest supported minor is k8s-openapi's feature (v1_33)");
        let default = K8sVersion::parse(&versions_env("K8S_DEFAULT").unwrap()).unwrap();
        assert_eq!(Some(&default), m.last(), "the default is the newest release of the matrix");
    }
}
