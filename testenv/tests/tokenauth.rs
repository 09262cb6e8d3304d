//! The token service and a real docker-registry in token-auth mode behind it:
//! exactly the credentials the validator accepts right now can pull.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use regcred_testenv::registry::TEST_IMAGE;
use regcred_testenv::registry::skopeo_inspect;
use regcred_testenv::tokenauth::{
    FrontKind, Grant, Grants, RegistryFront, TokenService, Validator, start_token_registry, write_authfile,
};

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
    exchange(host, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n")).0
}

/// Sends `request` (with `Connection: close` added) to `addr`: (status,
/// head, body).
fn exchange(addr: &str, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let request = request.strip_suffix("\r\n\r\n").unwrap();
    write!(s, "{request}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.split_whitespace().nth(1).unwrap().parse().unwrap(), head.to_string(), body.to_string())
}

/// The test image is an OCI manifest: without this the registry answers 404.
const OCI: &str = "Accept: application/vnd.oci.image.manifest.v1+json\r\n";

/// A token service whose logins (`user`: `user-pass`) have `grants[user]`.
fn service_with_grants(users: &[(&str, Vec<Grant>)]) -> TokenService {
    let table: HashMap<String, Vec<Grant>> = users.iter().map(|(u, g)| (u.to_string(), g.clone())).collect();
    let names: Vec<String> = table.keys().cloned().collect();
    let validator: Validator =
        Arc::new(move |user, pass| names.iter().any(|n| n == user) && pass == format!("{user}-pass"));
    let grants: Grants = Arc::new(move |user, _| table.get(user).cloned().unwrap_or_default());
    TokenService::start_with_grants(validator, grants).expect("token service")
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

#[test]
fn grants_narrow_tokens_and_the_registry_refuses_what_was_not_granted() {
    let tokens = service_with_grants(&[
        ("pusher", vec![Grant::everything()]),
        ("team", vec![Grant::pull("regcred/*")]),
        ("stranger", vec![Grant::pull("other/*")]),
    ]);
    let registry = start_token_registry(0, &tokens, "pusher", "pusher-pass").unwrap_or_else(|e| panic!("{e:#}"));
    let pull = "repository:regcred/test:pull,push";
    // A grant keeps what it allows of the request.
    let team = token_for(&tokens, "team", "team-pass", pull);
    assert_eq!(
        jwt_part(&team, 1)["access"],
        serde_json::json!([{"type": "repository", "name": "regcred/test", "actions": ["pull"]}])
    );
    // A valid login without the repository still gets a token (not an
    // error, as the token spec says), with no access in it.
    let narrowed = tokens.narrowed();
    let stranger = token_for(&tokens, "stranger", "stranger-pass", pull);
    assert_eq!(jwt_part(&stranger, 1)["access"], serde_json::json!([]));
    assert!(tokens.narrowed() > narrowed);
    // The real registry refuses that token as Distribution does.
    let request = |token: &str| {
        format!(
            "GET /v2/regcred/test/manifests/v1 HTTP/1.1\r\nHost: {}\r\n{OCI}Authorization: Bearer {token}\r\n\r\n",
            registry.host
        )
    };
    let (status, head, body) = exchange(&registry.host, &request(&stranger));
    assert_eq!(status, 401, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("scope=\"repository:regcred/test:pull\"") && head.contains("error=\"insufficient_scope\""),
        "{head}"
    );
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED", "{body}");
    let (status, _, _) = exchange(&registry.host, &request(&team));
    assert_eq!(status, 200);

    // skopeo: the granted login pulls, the other one is refused.
    let tmp = TempDir::new("grants");
    let inspect = |user: &str| {
        let path = tmp.path().join(format!("{user}.json"));
        write_authfile(&path, &registry.host, user, &format!("{user}-pass")).unwrap();
        skopeo_inspect(&path, &registry.test_image()).unwrap()
    };
    let out = inspect("team");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = inspect("stranger");
    assert!(!out.status.success(), "a login without the repository pulled it");
    let stderr = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    assert!(stderr.contains("unauthorized") || stderr.contains("authentication required"), "{stderr}");
}

#[test]
fn an_ecr_front_answers_basic_and_403_denied_like_ecr() {
    let tokens = service_with_grants(&[
        ("pusher", vec![Grant::everything()]),
        ("AWS", vec![Grant::pull("regcred/*")]),
        ("other", vec![Grant::pull("x/*")]),
    ]);
    let registry = start_token_registry(0, &tokens, "pusher", "pusher-pass").unwrap_or_else(|e| panic!("{e:#}"));
    let front = RegistryFront::start(
        FrontKind::Ecr { principal: "arn:aws:iam::123456789012:user/ci".into() },
        &tokens,
        &registry,
    )
    .unwrap();
    assert!(front.proxy_url().starts_with("http://127.0.0.1:"));
    let ecr = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";
    // As through HTTP_PROXY: absolute-form targets naming the ECR host.
    let get = |method: &str, path: &str, user: Option<&str>| {
        let auth =
            user.map(|u| format!("Authorization: Basic {}\r\n", basic(u, &format!("{u}-pass")))).unwrap_or_default();
        exchange(&front.host(), &format!("{method} http://{ecr}{path} HTTP/1.1\r\nHost: {ecr}\r\n{OCI}{auth}\r\n"))
    };
    let (status, head, _) = get("GET", "/v2/", None);
    assert_eq!(status, 401);
    assert!(
        head.contains(&format!("WWW-Authenticate: Basic realm=\"https://{ecr}/\",service=\"ecr.amazonaws.com\"")),
        "{head}"
    );
    assert_eq!(get("GET", "/v2/", Some("AWS")).0, 200);
    assert_eq!(get("GET", "/v2/", Some("mallory")).0, 401);
    let (status, head, body) = get("GET", "/v2/regcred/test/manifests/v1", Some("AWS"));
    assert_eq!(status, 200, "{head}{body}");
    assert!(head.contains("Docker-Content-Digest: sha256:"), "{head}");
    assert_eq!(get("HEAD", "/v2/regcred/test/manifests/missing", Some("AWS")).0, 404);

    let refused = front.refused();
    let (status, _, body) = get("GET", "/v2/regcred/test/manifests/v1", Some("other"));
    assert_eq!(status, 403);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert_eq!(
        body["errors"][0]["message"],
        "User: arn:aws:iam::123456789012:user/ci is not authorized to perform: ecr:BatchGetImage on resource: \
         arn:aws:ecr:eu-west-1:123456789012:repository/regcred/test because no resource-based policy allows the \
         ecr:BatchGetImage action"
    );
    let (status, _, body) = get("HEAD", "/v2/regcred/test/manifests/v1", Some("other"));
    assert_eq!((status, body.as_str()), (403, ""));
    assert_eq!(front.refused(), refused + 2);
}

#[test]
fn an_artifact_registry_front_refuses_with_403_permission_denied() {
    let tokens = service_with_grants(&[
        ("pusher", vec![Grant::everything()]),
        ("oauth2accesstoken", vec![Grant::pull("regcred/*")]),
        ("other", vec![Grant::pull("x/*")]),
    ]);
    let registry = start_token_registry(0, &tokens, "pusher", "pusher-pass").unwrap_or_else(|e| panic!("{e:#}"));
    let front =
        RegistryFront::start(FrontKind::ArtifactRegistry { location: "europe".into() }, &tokens, &registry).unwrap();
    let host = front.host();
    let (status, head, _) = exchange(&host, &format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n"));
    assert_eq!(status, 401);
    assert!(head.contains(&format!("WWW-Authenticate: Bearer realm=\"http://{host}/v2/token\"")), "{head}");
    let token = |user: &str| {
        let (status, _, body) = exchange(
            &host,
            &format!(
                "GET /v2/token?scope=repository%3Aregcred%2Ftest%3Apull HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {}\r\n\r\n",
                basic(user, &format!("{user}-pass"))
            ),
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"].as_str().unwrap().to_string()
    };
    let manifest = |token: &str| {
        exchange(
            &host,
            &format!(
                "GET /v2/regcred/test/manifests/v1 HTTP/1.1\r\nHost: {host}\r\n{OCI}Authorization: Bearer {token}\r\n\r\n"
            ),
        )
    };
    assert_eq!(manifest(&token("oauth2accesstoken")).0, 200);
    let (status, _, body) = manifest(&token("other"));
    assert_eq!(status, 403);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert_eq!(
        body["errors"][0]["message"],
        "Permission \"artifactregistry.repositories.downloadArtifacts\" denied on resource \
         \"projects/regcred/locations/europe/repositories/test\" (or it may not exist)"
    );
    assert_eq!(front.refused(), 1);

    // A real client through the front: skopeo follows its challenge.
    let tmp = TempDir::new("ar-front");
    let inspect = |user: &str| {
        let path = tmp.path().join(format!("{user}.json"));
        write_authfile(&path, &host, user, &format!("{user}-pass")).unwrap();
        skopeo_inspect(&path, &format!("{host}/{TEST_IMAGE}")).unwrap()
    };
    let out = inspect("oauth2accesstoken");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = inspect("other");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("artifactregistry.repositories.downloadArtifacts"), "{stderr}");
}
