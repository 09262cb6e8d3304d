//! The token service and a real docker-registry in token-auth mode behind it:
//! exactly the credentials the validator accepts right now can pull.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use regcred_testenv::registry::skopeo_inspect;
use regcred_testenv::tokenauth::{TokenService, Validator, start_token_registry, write_authfile};

type Credentials = Arc<Mutex<HashMap<String, String>>>;

fn service_with(users: &[(&str, &str)]) -> (Credentials, TokenService) {
    let creds: Credentials = Arc::new(Mutex::new(users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect()));
    let validator: Validator = {
        let creds = creds.clone();
        Arc::new(move |user, pass| creds.lock().unwrap().get(user).is_some_and(|p| p == pass))
    };
    (creds, TokenService::start(validator).expect("token service"))
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("regcred-tokenauth-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Raw HTTP exchange with the token service: (status, head, body).
fn raw(tokens: &TokenService, request: &str) -> (u16, String, String) {
    let addr =
        tokens.realm().strip_prefix("http://").and_then(|r| r.split_once('/')).map(|(h, _)| h.to_string()).unwrap();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(request.replace("HOST", &addr).as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// `GET path` on `host` with `Authorization: Bearer token`: the status.
fn bearer_get(host: &str, path: &str, token: &str) -> u16 {
    let mut s = TcpStream::connect(host).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A token from `tokens` for `scope`, asked with Basic `user:pass`.
fn token_for(tokens: &TokenService, user: &str, pass: &str, scope: &str) -> String {
    let (status, _, body) = raw(
        tokens,
        &format!(
            "GET /token?service=regcred-test-registry&scope={scope} HTTP/1.1\r\nHost: HOST\r\nAuthorization: Basic {}\r\n\r\n",
            basic(user, pass)
        ),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    answer["token"].as_str().unwrap().to_string()
}

fn basic(user: &str, pass: &str) -> String {
    STANDARD.encode(format!("{user}:{pass}"))
}

fn jwt_part(token: &str, i: usize) -> serde_json::Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[test]
fn token_endpoint_speaks_the_docker_token_protocol() {
    let (_creds, tokens) = service_with(&[("alice", "s3cret:with-colon")]);
    assert!(tokens.realm().starts_with("http://127.0.0.1:"));
    assert!(tokens.realm().ends_with("/token"));
    assert!(tokens.root_cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));

    // No credentials: 401 with a Basic challenge.
    let (status, head, _) = raw(&tokens, "GET /token?service=regcred-test-registry HTTP/1.1\r\nHost: HOST\r\n\r\n");
    assert_eq!(status, 401);
    assert!(head.contains(&format!("WWW-Authenticate: Basic realm=\"{}\"", tokens.realm())), "{head}");
    assert_eq!((tokens.requests(), tokens.rejected()), (1, 1));

    // Wrong password: 401.
    let (status, _, _) = raw(
        &tokens,
        &format!(
            "GET /token?service=regcred-test-registry HTTP/1.1\r\nHost: HOST\r\nAuthorization: Basic {}\r\n\r\n",
            basic("alice", "wrong")
        ),
    );
    assert_eq!(status, 401);
    assert_eq!((tokens.requests(), tokens.rejected()), (2, 2));

    // Valid: several scopes, in separate parameters and space-separated.
    let (status, _, body) = raw(
        &tokens,
        &format!(
            "GET /token?account=alice&service=regcred-test-registry\
             &scope=repository%3Aregcred%2Ftest%3Apull%2Cpush\
             &scope=repository%3Aother%3Apull+registry%3Acatalog%3A%2A HTTP/1.1\r\n\
             Host: HOST\r\nAuthorization: Basic {}\r\n\r\n",
            basic("alice", "s3cret:with-colon")
        ),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!((tokens.requests(), tokens.rejected()), (3, 2));
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = answer["token"].as_str().unwrap();
    assert_eq!(answer["access_token"], token);
    assert_eq!(answer["expires_in"], 60);
    assert!(answer["issued_at"].as_str().unwrap().ends_with('Z'));
    let header = jwt_part(token, 0);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["x5c"].as_array().unwrap().len(), 1);
    let claims = jwt_part(token, 1);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], tokens.service());
    assert_eq!(claims["iss"], tokens.issuer());
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 60);
    assert_eq!(
        claims["access"],
        serde_json::json!([
            {"type": "repository", "name": "regcred/test", "actions": ["pull", "push"]},
            {"type": "repository", "name": "other", "actions": ["pull"]},
            {"type": "registry", "name": "catalog", "actions": ["*"]},
        ])
    );

    // No scope: a token with no access (what a client gets for /v2/).
    let (status, _, body) = raw(
        &tokens,
        &format!(
            "GET /token?service=regcred-test-registry HTTP/1.1\r\nHost: HOST\r\nAuthorization: Basic {}\r\n\r\n",
            basic("alice", "s3cret:with-colon")
        ),
    );
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(jwt_part(answer["token"].as_str().unwrap(), 1)["access"], serde_json::json!([]));

    // The OAuth2 password grant (containerd's first try).
    let form = "grant_type=password&username=alice&password=s3cret%3Awith-colon\
                &service=regcred-test-registry&scope=repository%3Aregcred%2Ftest%3Apull&client_id=t";
    let (status, _, body) = raw(
        &tokens,
        &format!(
            "POST /token HTTP/1.1\r\nHost: HOST\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        jwt_part(answer["access_token"].as_str().unwrap(), 1)["access"],
        serde_json::json!([{"type": "repository", "name": "regcred/test", "actions": ["pull"]}])
    );
    let form = "grant_type=password&username=alice&password=nope&service=regcred-test-registry";
    let (status, _, _) =
        raw(&tokens, &format!("POST /token HTTP/1.1\r\nHost: HOST\r\nContent-Length: {}\r\n\r\n{form}", form.len()));
    assert_eq!(status, 401);
    let form = "grant_type=refresh_token&refresh_token=x&service=regcred-test-registry";
    let (status, _, _) =
        raw(&tokens, &format!("POST /token HTTP/1.1\r\nHost: HOST\r\nContent-Length: {}\r\n\r\n{form}", form.len()));
    assert_eq!(status, 400);
    assert_eq!((tokens.requests(), tokens.rejected()), (7, 3));
}

#[test]
fn token_registry_accepts_exactly_the_currently_valid_credentials() {
    let (creds, tokens) = service_with(&[("pusher", "push-secret"), ("alice", "alice-1"), ("carol", "carol-1")]);
    // 1. Start-up pushes the test image through the token service.
    let registry = start_token_registry(0, &tokens, "pusher", "push-secret").unwrap_or_else(|e| panic!("{e:#}"));
    assert!(tokens.requests() > 0);
    assert_eq!(tokens.rejected(), 0);

    // The registry checks the tokens: signature, issuer and granted access.
    let tags = "/v2/regcred/test/tags/list";
    let pull = "repository:regcred/test:pull";
    let good = token_for(&tokens, "alice", "alice-1", pull);
    assert_eq!(bearer_get(&registry.host, tags, &good), 200);
    let other_repo = token_for(&tokens, "alice", "alice-1", "repository:other:pull");
    assert_eq!(bearer_get(&registry.host, tags, &other_repo), 401);
    let (_, impostor) = service_with(&[("alice", "alice-1")]);
    let forged = token_for(&impostor, "alice", "alice-1", pull);
    assert_eq!(bearer_get(&registry.host, tags, &forged), 401);
    // Flip the first character of the signature (it carries 6 full bits).
    let sig = good.rfind('.').unwrap() + 1;
    let flipped = if good[sig..].starts_with('A') { "B" } else { "A" };
    let mut tampered = good.clone();
    tampered.replace_range(sig..sig + 1, flipped);
    assert_eq!(bearer_get(&registry.host, tags, &tampered), 401);
    let rejected = tokens.rejected();

    let tmp = TempDir::new("registry");
    let authfile = |name: &str, user: &str, pass: &str| {
        let path = tmp.path().join(format!("{name}.json"));
        write_authfile(&path, &registry.host, user, pass).unwrap();
        path
    };
    let inspect = |path: &Path| skopeo_inspect(path, &registry.test_image()).unwrap();

    // 2. A valid credential pulls.
    let alice = authfile("alice", "alice", "alice-1");
    let out = inspect(&alice);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), registry.log());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["Name"], format!("{}/regcred/test", registry.host));
    assert_eq!(tokens.rejected(), rejected);

    // 3. Once the credential is gone (expired), the same authfile fails.
    creds.lock().unwrap().remove("alice");
    let rejected = tokens.rejected();
    let out = inspect(&alice);
    assert!(!out.status.success(), "an expired credential still pulls");
    assert!(tokens.rejected() > rejected);

    // Rotation: the old password fails, the new one works.
    creds.lock().unwrap().insert("carol".into(), "carol-2".into());
    let rejected = tokens.rejected();
    let out = inspect(&authfile("carol-old", "carol", "carol-1"));
    assert!(!out.status.success(), "a rotated-away password still pulls");
    assert!(tokens.rejected() > rejected);
    let out = inspect(&authfile("carol-new", "carol", "carol-2"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // 4. A credential that was never valid fails.
    let rejected = tokens.rejected();
    let out = inspect(&authfile("mallory", "mallory", "guess"));
    assert!(!out.status.success(), "an unknown credential pulls");
    assert!(tokens.rejected() > rejected);

    // Without any credentials the registry refuses too (skopeo asks for an
    // anonymous token, which the service refuses).
    let empty = tmp.path().join("empty.json");
    std::fs::write(&empty, r#"{"auths":{}}"#).unwrap();
    assert!(!inspect(&empty).status.success());
}
