//! `regcred check -f credential.yaml [--verify]`: mints once outside the
//! operator and prints a redacted summary.

use std::process::Command;

use regcred_testenv::registry::Registry;

fn manifest(registry: &str, password: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: login, namespace: team}}\nstringData: {{username: checker, password: {password}}}\n---\n\
         apiVersion: regcred.dev/v1beta1\nkind: RegistryCredential\nmetadata: {{name: cred, namespace: team}}\n\
         spec:\n  provider: {{basic: {{registry: \"{registry}\", secretRef: {{name: login}}}}}}\n  secret: {{name: pull}}\n  verify: {{enabled: true, plainHTTP: true}}\n"
    )
}

fn check(file: &std::path::Path, verify: bool) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regcred"));
    cmd.arg("check").arg("-f").arg(file).env_remove("KUBECONFIG");
    if verify {
        cmd.arg("--verify");
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn check_prints_a_redacted_summary_and_verifies_against_a_real_registry() {
    let registry = Registry::start_htpasswd(0, &[("checker", "check-pass-OK")]).unwrap_or_else(|e| panic!("{e:#}"));
    let dir = std::env::temp_dir().join(format!("regcred-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let good = dir.join("good.yaml");
    std::fs::write(&good, manifest(&registry.host, "check-pass-OK")).unwrap();
    let (ok, out) = check(&good, false);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("registry: {}", registry.host)), "{out}");
    assert!(out.contains("username: checker"), "{out}");
    assert!(out.contains("password: <redacted, 13 characters>"), "{out}");
    assert!(out.contains("expires:  never"), "{out}");
    assert!(!out.contains("check-pass-OK"), "the password was printed: {out}");

    let (ok, out) = check(&good, true);
    assert!(ok, "{out}");
    assert!(out.contains("verify:   ok"), "{out}");

    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, manifest(&registry.host, "check-pass-BAD")).unwrap();
    let (ok, out) = check(&bad, true);
    assert!(!ok, "a refused credential passed: {out}");
    assert!(out.contains("verify:   FAILED") && out.contains("rejected"), "{out}");
    assert!(!out.contains("check-pass-BAD"));

    let missing = dir.join("missing.yaml");
    std::fs::write(&missing, manifest(&registry.host, "x").replace("name: login, namespace", "name: other, namespace"))
        .unwrap();
    let (ok, out) = check(&missing, false);
    assert!(!ok);
    assert!(out.contains("SourceSecretNotFound") && out.contains("team/login"), "{out}");

    let (ok, out) = check(&dir.join("does-not-exist.yaml"), false);
    assert!(!ok && out.contains("does-not-exist.yaml"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
