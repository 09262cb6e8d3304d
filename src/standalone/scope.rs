//! Which registry an answer is for. The kubelet uses only the `auth` keys
//! of a plugin's answer that match the image, and Docker asks a helper for
//! one host, so both paths answer for the requested host, with a login
//! valid there (kubernetes/kubernetes
//! `pkg/credentialprovider/plugin/plugin.go`: the response's keys are
//! matched against the image like `matchImages`):
//! - ECR: a token is valid only in the region that issued it, for every
//!   registry the principal may read there; the account and region come from
//!   the image's host, as the upstream `ecr-credential-provider` reads them
//!   (kubernetes/cloud-provider-aws `cmd/ecr-credential-provider/main.go`,
//!   `parseRepoURL`). `region` is the default for a host that names none (an
//!   alias matched by a pattern of the user's), `regions` and `registryIds`
//!   what may be asked for.
//! - Google: one access token works on every Artifact Registry and GCR
//!   host, so any host the pattern matched is answered.
//! - ECR Public, ACR, Harbor, basic: the hosts the provider mints for.
//!
//! Pure functions; [`super::kubelet`] and [`super::helper`] call them around
//! the mint.

use crate::api::Provider;
use crate::provider::EcrHost;
use crate::render::RegistryAuth;

/// The provider spec to mint with for `host` (an image's registry host,
/// with its port if it has one): for ECR, narrowed to the host's region.
/// `Err` is one line saying why the configuration does not permit `host`.
pub fn narrow(provider: &Provider, host: &str) -> Result<Provider, String> {
    let Provider::Ecr(spec) = provider else {
        return Ok(provider.clone());
    };
    let mut narrowed = spec.clone();
    narrowed.regions = None;
    let Some(ecr) = EcrHost::parse(host) else {
        // Not an ECR host name (an alias the user's pattern matched): the
        // default region and the caller's own registry, answered for `host`.
        let default = spec.region_list().first().map(|r| r.to_string());
        narrowed.region = default;
        return Ok(Provider::Ecr(narrowed));
    };
    if let Some(ids) = spec.registry_ids.as_ref().filter(|ids| !ids.is_empty())
        && !ids.contains(&ecr.account)
    {
        return Err(format!(
            "{host}: account {} is not in the ecr provider's registryIds ({})",
            ecr.account,
            ids.join(", ")
        ));
    }
    if let Some(regions) = spec.regions.as_ref().filter(|r| !r.is_empty())
        && !regions.contains(&ecr.region)
    {
        return Err(format!(
            "{host}: region {} is not in the ecr provider's regions ({})",
            ecr.region,
            regions.join(", ")
        ));
    }
    narrowed.region = Some(ecr.region);
    // The one token of the region serves every account there.
    narrowed.registry_ids = None;
    Ok(Provider::Ecr(narrowed))
}

/// The login of `minted` that is valid on `host`, for an answer keyed by
/// `host`. `Err` is one line naming the hosts the provider covers.
pub fn login_for<'a>(provider: &Provider, host: &str, auths: &'a [RegistryAuth]) -> Result<&'a RegistryAuth, String> {
    let covers_any_host = match provider {
        // Narrowed to the host's region: every entry holds that region's token.
        Provider::Ecr(_) | Provider::Google(_) => true,
        Provider::EcrPublic(_) | Provider::Acr(_) | Provider::Harbor(_) | Provider::Basic(_) => false,
    };
    let found = if covers_any_host {
        auths.first()
    } else {
        let host = canonical(host);
        auths.iter().find(|a| canonical(&a.registry) == host)
    };
    found.ok_or_else(|| {
        let covered: Vec<&str> = auths.iter().map(|a| a.registry.as_str()).collect();
        format!(
            "the {} provider covers {}, not {host}",
            provider.name(),
            if covered.is_empty() { "no registry".to_string() } else { covered.join(", ") }
        )
    })
}

/// A registry host compared case-insensitively, with Docker Hub's names
/// taken as one (Docker hands helpers `index.docker.io`, images say
/// `docker.io`).
fn canonical(host: &str) -> String {
    let host = host.trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_string(),
        _ => host,
    }
}

/// The registry host of an image reference (`host[:port]/path[:tag|@digest]`).
pub fn image_host(image: &str) -> &str {
    let image = image.strip_prefix("https://").or_else(|| image.strip_prefix("http://")).unwrap_or(image);
    image.split('/').next().unwrap_or(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn provider(v: serde_json::Value) -> Provider {
        serde_json::from_value(v).unwrap()
    }

    fn auth(registry: &str, password: &str) -> RegistryAuth {
        RegistryAuth { registry: registry.into(), username: "u".into(), password: password.to_string().into() }
    }

    fn region_of(p: &Provider) -> Option<&str> {
        match p {
            Provider::Ecr(s) => s.region.as_deref(),
            _ => None,
        }
    }

    #[test]
    fn ecr_mints_in_the_images_region_for_any_account() {
        let p = provider(serde_json::json!({"ecr": {"region": "us-east-1"}}));
        for (host, region) in [
            ("123456789012.dkr.ecr.us-west-2.amazonaws.com", "us-west-2"),
            ("210987654321.dkr.ecr.eu-central-1.amazonaws.com", "eu-central-1"),
            ("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1"),
            ("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", "cn-north-1"),
            ("123456789012.dkr-ecr.ap-south-1.on.aws", "ap-south-1"),
        ] {
            let n = narrow(&p, host).unwrap();
            assert_eq!(region_of(&n), Some(region), "{host}");
            let Provider::Ecr(s) = &n else { unreachable!() };
            assert!(s.regions.is_none() && s.registry_ids.is_none());
        }
        // An alias the user matched: the default region.
        assert_eq!(region_of(&narrow(&p, "registry.corp.example").unwrap()), Some("us-east-1"));
        let p = provider(serde_json::json!({"ecr": {"regions": ["eu-west-1", "us-west-2"]}}));
        assert_eq!(region_of(&narrow(&p, "registry.corp.example").unwrap()), Some("eu-west-1"));
    }

    #[test]
    fn ecr_refuses_accounts_and_regions_the_config_does_not_permit() {
        let p = provider(
            serde_json::json!({"ecr": {"regions": ["us-west-2", "eu-central-1"], "registryIds": ["123456789012", "210987654321"]}}),
        );
        assert!(narrow(&p, "210987654321.dkr.ecr.eu-central-1.amazonaws.com").is_ok());
        let e = narrow(&p, "999999999999.dkr.ecr.us-west-2.amazonaws.com").unwrap_err();
        assert!(e.contains("account 999999999999 is not in the ecr provider's registryIds"), "{e}");
        let e = narrow(&p, "123456789012.dkr.ecr.ap-south-1.amazonaws.com").unwrap_err();
        assert!(e.contains("region ap-south-1 is not in the ecr provider's regions (us-west-2, eu-central-1)"), "{e}");
        assert!(!e.contains('\n'));
        // `region` alone is a default, not a limit.
        let p = provider(serde_json::json!({"ecr": {"region": "us-east-1"}}));
        assert!(narrow(&p, "123456789012.dkr.ecr.ap-south-1.amazonaws.com").is_ok());
    }

    #[test]
    fn answers_are_for_the_requested_host() {
        let google = provider(serde_json::json!({"google": {"registries": ["europe-docker.pkg.dev"]}}));
        let minted = [auth("europe-docker.pkg.dev", "ya29.token")];
        let a = login_for(&google, "us-central1-docker.pkg.dev", &minted).unwrap();
        assert_eq!(a.password.expose_secret(), "ya29.token", "one Google token serves every host");
        let ecr = provider(serde_json::json!({"ecr": {"region": "us-west-2"}}));
        let minted = [auth("123456789012.dkr.ecr.us-west-2.amazonaws.com", "region-token")];
        assert!(login_for(&ecr, "210987654321.dkr.ecr.us-west-2.amazonaws.com", &minted).is_ok());

        let harbor = provider(serde_json::json!({"harbor": {"url": "https://harbor.example.com", "projects": ["p"],
            "auth": {"secretRef": {"name": "h"}}}}));
        let minted = [auth("harbor.example.com", "robot")];
        assert!(login_for(&harbor, "HARBOR.example.com", &minted).is_ok());
        let e = login_for(&harbor, "other.example.com", &minted).unwrap_err();
        assert_eq!(e, "the harbor provider covers harbor.example.com, not other.example.com");
        let basic = provider(serde_json::json!({"basic": {"registry": "docker.io", "secretRef": {"name": "b"}}}));
        let minted = [auth("docker.io", "hub")];
        assert!(login_for(&basic, "index.docker.io", &minted).is_ok(), "Docker Hub's names are one registry");
        let acr = provider(serde_json::json!({"acr": {"registry": "team.azurecr.io", "tenantId": "t",
            "auth": {"managedIdentity": {}}}}));
        assert!(login_for(&acr, "other.azurecr.io", &[auth("team.azurecr.io", "x")]).is_err());
    }

    #[test]
    fn image_hosts() {
        assert_eq!(
            image_host("123456789012.dkr.ecr.us-west-2.amazonaws.com/app:v1"),
            "123456789012.dkr.ecr.us-west-2.amazonaws.com"
        );
        assert_eq!(image_host("127.0.0.1:5000/regcred/test@sha256:00"), "127.0.0.1:5000");
        assert_eq!(image_host("gcr.io"), "gcr.io");
        assert_eq!(image_host("https://gcr.io/v2/"), "gcr.io");
        assert_eq!(image_host("https://index.docker.io/v1/"), "index.docker.io", "Docker's server URL");
        assert_eq!(image_host("http://r.io:80/x"), "r.io:80");
    }
}
