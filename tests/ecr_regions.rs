//! One ECR provider, several regions (`provider.ecr.regions`): one
//! GetAuthorizationToken call per region and refresh, one Secret with an
//! entry per region and account, each holding its own region's token (the
//! AWS stand-in binds tokens to the region that issued them, as ECR does),
//! proven by pulls from a registry per region.

mod common;

use std::sync::{Arc, OnceLock};

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use regcred::api::RegistryCredential;
use regcred_testenv::aws::Moto;
use regcred_testenv::tokenauth::{TokenService, start_token_registry, write_authfile};
use serde_json::{Value, json};

fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| Moto::start(control_plane().process_group()).unwrap_or_else(|e| panic!("{e:#}")))
}

/// The Secret's logins: registry -> (username, password).
fn logins(secret: &Secret) -> Vec<(String, String, String)> {
    let data = &secret.data.as_ref().unwrap()[".dockerconfigjson"].0;
    let v: Value = serde_json::from_slice(data).unwrap();
    let mut out: Vec<_> = v["auths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, e)| (k.clone(), e["username"].as_str().unwrap().into(), e["password"].as_str().unwrap().into()))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn one_secret_serves_several_regions_and_accounts_with_one_call_per_region() {
    let client = setup().await;
    let ns = "ecr-regions";
    create_namespace(&client, ns, &[]).await;
    regcred_testenv::operator::record_secret("regions-secret-access-key");
    let keys: Secret = serde_json::from_value(json!({
        "metadata": {"name": "aws", "namespace": ns},
        "stringData": {"access-key-id": "AKIAREGIONS000000001", "secret-access-key": "regions-secret-access-key"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns).create(&Default::default(), &keys).await.unwrap();

    let calls = moto().ecr_calls();
    let spec = json!({
        "provider": {"ecr": {"regions": ["us-west-2", "eu-central-1"], "registryIds": ["111111111111", "222222222222"],
            "endpoint": moto().endpoint(), "auth": {"secretRef": {"name": "aws"}}}},
        "secret": {"name": "ecr-pull"},
    });
    apply_rcred(&client, ns, "cred", spec).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    let status = wait_for_reason(&rcreds, "cred", "Synced").await;
    assert_eq!(moto().ecr_calls() - calls, 2, "one call per region");

    let secret = get_secret(&client, ns, "ecr-pull").await.unwrap();
    let logins = logins(&secret);
    let hosts: Vec<&str> = logins.iter().map(|(h, _, _)| h.as_str()).collect();
    assert_eq!(
        hosts,
        [
            "111111111111.dkr.ecr.eu-central-1.amazonaws.com",
            "111111111111.dkr.ecr.us-west-2.amazonaws.com",
            "222222222222.dkr.ecr.eu-central-1.amazonaws.com",
            "222222222222.dkr.ecr.us-west-2.amazonaws.com",
        ]
    );
    for (host, user, password) in &logins {
        let region = host.split('.').nth(3).unwrap();
        let token = moto().ecr_token(password).unwrap_or_else(|| panic!("{host}: not a token the stand-in issued"));
        assert_eq!((user.as_str(), token.region.as_str()), ("AWS", region), "{host} holds its own region's token");
    }
    let mut registries = status.registries.clone();
    registries.sort();
    assert_eq!(registries, hosts);
    // The Secret lives as long as its shortest-lived token (12 h each).
    let expires = status.expires_at.as_ref().unwrap().0;
    let last = status.last_refresh_time.as_ref().unwrap().0;
    let lifetime = expires.duration_since(last).as_secs();
    assert!((11 * 3600..=12 * 3600 + 5).contains(&lifetime), "expiresAt {lifetime} s after the refresh");

    // Pulls: a registry per region accepting only that region's tokens;
    // each region's entry pulls from its own and not from the other's.
    let dir = std::env::temp_dir().join(format!("regcred-ecr-regions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let authfile = dir.join("auth.json");
    for (region, other) in [("us-west-2", "eu-central-1"), ("eu-central-1", "us-west-2")] {
        let valid = moto().validator_for(region);
        let tokens = TokenService::start(Arc::new(move |u: &str, p: &str| {
            (u == "pusher" && p == "pusher-password") || valid(u, p)
        }))
        .unwrap();
        let registry =
            start_token_registry(control_plane().process_group(), &tokens, "pusher", "pusher-password").unwrap();
        for (from, works) in [(region, true), (other, false)] {
            let (_, user, password) =
                logins.iter().find(|(h, _, _)| h == &format!("111111111111.dkr.ecr.{from}.amazonaws.com")).unwrap();
            write_authfile(&authfile, &registry.host, user, password).unwrap();
            let out = regcred_testenv::registry::skopeo_inspect(&authfile, &registry.test_image()).unwrap();
            assert_eq!(
                out.status.success(),
                works,
                "{region}'s registry with {from}'s token: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
