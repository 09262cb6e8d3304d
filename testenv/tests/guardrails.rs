//! The guardrails every test control plane installs (`regcred_testenv::guardrails`)
//! are in force for the identity `Operator::start` runs regcred as: it is in
//! `system:masters`, so RBAC allows it everything, and only the guardrails
//! refuse. Without this, "every suite runs under the guardrails" would be a
//! claim nothing checks.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn the_test_operator_identity_is_held_by_the_guardrails() {
    let cp = regcred_testenv::shared();
    let admin = cp.client().await.unwrap();
    let yaml = std::fs::read_to_string(cp.operator_kubeconfig_path()).unwrap();
    let config = Config::from_custom_kubeconfig(Kubeconfig::from_yaml(&yaml).unwrap(), &KubeConfigOptions::default())
        .await
        .unwrap();
    let operator = Client::try_from(config).unwrap();

    // The admin may create an Opaque Secret; the operator's identity may
    // not (the policy takes effect once the apiserver has loaded it).
    let opaque = |name: &str| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"k": "guardrail-test-value"}}))
            .unwrap()
    };
    Api::<Secret>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &opaque("by-admin"))
        .await
        .unwrap();
    let api: Api<Secret> = Api::namespaced(operator.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(30);
    let message = loop {
        match api.create(&PostParams::default(), &opaque("by-operator")).await {
            Err(kube::Error::Api(e)) if e.code == 403 => break e.message,
            Ok(_) => {
                // Created before the policy was loaded: try again.
                api.delete("by-operator", &Default::default()).await.unwrap();
                assert!(Instant::now() < deadline, "the operator's identity may still create an Opaque Secret");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(message.contains("'testenv.guard-secrets.regcred.dev'"), "{message}");
    // A pull Secret with regcred's label is what the operator may create.
    let pull: Secret = serde_json::from_value(json!({"metadata": {"name": "pull",
        "labels": {"app.kubernetes.io/managed-by": "regcred"}}, "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": "{\"auths\":{}}"}}))
    .unwrap();
    api.create(&PostParams::default(), &pull).await.expect("the operator may create a labelled pull Secret");
}
