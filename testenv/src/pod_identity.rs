//! A stand-in for the EKS Pod Identity Agent's credentials endpoint, and the
//! EKS Auth API behind it, on loopback: the ambient identity the AWS SDK's
//! default credential chain finds through `AWS_CONTAINER_CREDENTIALS_FULL_URI`
//! and `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.
//!
//! What the real pieces do, and where each behaviour here comes from:
//!
//! - The SDK (awslabs/aws-sdk-rust `aws-config/src/ecs.rs`): a plain-http
//!   full URI must point at loopback, 169.254.170.2, 169.254.170.23 or
//!   fd00:ec2::23 (any `https` URI is allowed); the token file is read on
//!   every credentials call and its bytes sent as the `Authorization` header
//!   of a `GET` (`src/http_credential_provider.rs`). A 2xx answer must be
//!   `{"AccessKeyId","SecretAccessKey","Token","AccountId"?,"Expiration"}`
//!   (`src/json_credentials.rs`); any other status is an error that names
//!   only the status ("Non-success status from HTTP credential provider"),
//!   retried on 5xx only.
//! - The agent (aws/eks-pod-identity-agent, release 0.1.37):
//!   `pkg/handlers/eks_credential_handler.go` serves `/v1/credentials` (Go's
//!   `ServeMux`: any other path is `404 page not found`, any method is
//!   served); `internal/validation/request.go` refuses, before calling EKS
//!   Auth, a request whose `Host` is not the agent's address (403), an empty
//!   `Authorization` (400), a token that is not a parseable JWT or whose
//!   `exp`/`nbf` fail (400); `internal/credsretriever/refreshing_cache.go`
//!   caches credentials per token and refuses credentials with 15 s or less
//!   left; `pkg/errors/errors.go` relays EKS Auth's HTTP status with the body
//!   `[<request id>]: (<code>): <message>, fault: <client|server>`, as Go's
//!   `http.Error` writes it (`text/plain; charset=utf-8`, `nosniff`, a
//!   trailing newline); `internal/cloud/eksauth/service.go` answers
//!   `AccountId` from the assumed role's ARN.
//! - EKS Auth `AssumeRoleForPodIdentity` (boto/botocore
//!   `botocore/data/eks-auth/2023-11-26/service-2.json`): a token it does not
//!   accept is `InvalidTokenException` (400), an expired one
//!   `ExpiredTokenException` (400), a ServiceAccount without an association
//!   `ResourceNotFoundException` (404), its own failure
//!   `InternalServerException` (500). It assumes the associated role with
//!   the session name `eks-<cluster>-<pod>-<uuid>` and six session tags
//!   (EKS User Guide, `pod-id-abac.html`). The token audience is
//!   `pods.eks.amazonaws.com` (the API's `audience` field; the agent's
//!   `internal/validation/claims_validation.go` on its development branch).
//!
//! Here EKS Auth's token check is the test control plane's own TokenReview
//! for audience `pods.eks.amazonaws.com` (signature, issuer, expiry, the
//! ServiceAccount and a bound Pod still existing), the associations are set
//! by the test, and the role is assumed at moto's STS, so the credentials
//! are real moto session credentials of the associated role's account.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::ControlPlane;
use crate::operator::record_secret;
use crate::standin_http::{Conn, Request, Response, Server, answer_once};

/// The audience of EKS Pod Identity's projected ServiceAccount token.
pub const AUDIENCE: &str = "pods.eks.amazonaws.com";
/// The path the agent serves.
pub const CREDENTIALS_PATH: &str = "/v1/credentials";
/// The agent refuses credentials with this little lifetime left
/// (`defaultMinCredentialTtl` in `refreshing_cache.go`).
const MIN_CREDENTIAL_TTL: Duration = Duration::from_secs(15);
/// How long the agent keeps credentials before renewing them
/// (`--max-credential-retention-before-renewal`, `cmd/server.go`).
const MAX_RETENTION: Duration = Duration::from_secs(3 * 3600);
const MAX_REQUEST: usize = 64 * 1024;
/// The keys the EKS Auth stand-in signs its STS calls with (EKS Auth calls
/// STS as itself, not with anything the Pod holds).
const EKS_AUTH_KEY_ID: &str = "AKIAEKSAUTHSTANDIN01";
const EKS_AUTH_SECRET: &str = "eks-auth-standin-signing-secret-key";

/// Who a token the control plane accepted belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reviewed {
    namespace: String,
    service_account: String,
    /// The Pod the token is bound to, if any (EKS's projected tokens are).
    pod_name: Option<String>,
    pod_uid: Option<String>,
}

/// Why EKS Auth would not take a token.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TokenProblem {
    /// Not a token of this cluster for this audience, or its subject is gone.
    Invalid(String),
    Expired(String),
    /// The check itself failed (the apiserver did not answer).
    Unavailable(String),
}

/// Checks a token as EKS Auth does; the default asks the control plane's
/// TokenReview.
type Reviewer = Box<dyn Fn(&str) -> Result<Reviewed, TokenProblem> + Send + Sync>;

/// One request the agent answered, for tests. Tokens appear only as
/// [`token_fingerprint`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// Fingerprint of the `Authorization` header's token, if one was sent.
    pub token: Option<String>,
    pub status: u16,
    /// `namespace/serviceaccount` of an accepted token.
    pub subject: Option<String>,
    /// EKS Auth's error code, when it refused.
    pub error_code: Option<String>,
    /// Answered from the agent's cache, without EKS Auth.
    pub cached: bool,
    /// Why, when EKS Auth refused: what the stand-in knows and the real
    /// service does not say (the TokenReview error, STS's answer).
    pub cause: Option<String>,
}

/// The SHA-256 (hex) of a token: how the stand-in remembers tokens without
/// keeping them.
pub fn token_fingerprint(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

struct Creds {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    account_id: String,
    expiration: Timestamp,
    stored: Instant,
}

#[derive(Default)]
struct Inner {
    /// `(namespace, serviceaccount)` → role ARN.
    associations: HashMap<(String, String), String>,
    /// Token fingerprint → credentials, as the agent's cache.
    cache: HashMap<String, Creds>,
    served: Vec<Served>,
}

struct State {
    cluster: String,
    sts_endpoint: String,
    /// The addresses the agent accepts in `Host` (its bind addresses).
    target_hosts: Vec<String>,
    review: Reviewer,
    inner: Mutex<Inner>,
}

/// The EKS Pod Identity Agent stand-in. Dropping it stops it.
pub struct PodIdentityAgent {
    server: Server,
    state: Arc<State>,
}

impl PodIdentityAgent {
    /// Starts the agent on 127.0.0.1 for cluster `regcred-test`, checking
    /// tokens with `cp`'s TokenReview and assuming roles at moto's STS
    /// (`sts_endpoint`, `http://127.0.0.1:PORT`).
    pub fn start(cp: &ControlPlane, sts_endpoint: &str) -> Result<PodIdentityAgent> {
        let review = token_reviewer(cp.kubeconfig_path().to_path_buf())?;
        Self::start_with(review, sts_endpoint)
    }

    fn start_with(review: Reviewer, sts_endpoint: &str) -> Result<PodIdentityAgent> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let state = Arc::new(State {
            cluster: "regcred-test".into(),
            sts_endpoint: sts_endpoint.trim_end_matches('/').to_string(),
            // The agent binds 169.254.170.23 and fd00:ec2::23 and accepts
            // only those in Host; this one binds 127.0.0.1, which the SDK
            // also allows.
            target_hosts: vec!["127.0.0.1".into()],
            review,
            inner: Mutex::default(),
        });
        let s = state.clone();
        let server = Server::spawn(listener, "pod-identity-agent", "pod-identity-conn", move |tcp| {
            answer_once(Conn::plain(tcp, Duration::from_secs(10)), MAX_REQUEST, |req| handle(&s, req))
        })?;
        Ok(PodIdentityAgent { server, state })
    }

    /// The URL for `AWS_CONTAINER_CREDENTIALS_FULL_URI`
    /// (`http://127.0.0.1:PORT/v1/credentials`; on EKS
    /// `http://169.254.170.23/v1/credentials`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{CREDENTIALS_PATH}", self.server.port())
    }

    /// The EKS cluster name the agent serves (in session names and tags).
    pub fn cluster(&self) -> &str {
        &self.state.cluster
    }

    /// Creates (or replaces) the Pod Identity association of
    /// `namespace/service_account` with `role_arn`.
    pub fn associate(&self, namespace: &str, service_account: &str, role_arn: &str) {
        self.inner().associations.insert((namespace.into(), service_account.into()), role_arn.into());
    }

    /// Deletes the association of `namespace/service_account`. Like the
    /// agent, credentials already cached for a token stay served until they
    /// are renewed.
    pub fn disassociate(&self, namespace: &str, service_account: &str) {
        self.inner().associations.remove(&(namespace.to_string(), service_account.to_string()));
    }

    /// Every request answered, oldest first.
    pub fn served(&self) -> Vec<Served> {
        self.inner().served.clone()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.inner.lock().expect("not poisoned")
    }
}

/// A TokenReview client on a thread of its own (the stand-in's connection
/// threads are plain threads; the kube client needs a runtime).
fn token_reviewer(kubeconfig: PathBuf) -> Result<Reviewer> {
    type Job = (String, mpsc::Sender<Result<Reviewed, TokenProblem>>);
    let (jobs, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new().name("pod-identity-tokenreview".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return;
            }
        };
        let client = rt.block_on(async {
            let kc = Kubeconfig::read_from(&kubeconfig)?;
            let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
            anyhow::Ok(kube::Client::try_from(config)?)
        });
        let client = match client {
            Ok(c) => {
                let _ = ready_tx.send(Ok(()));
                c
            }
            Err(e) => {
                let _ = ready_tx.send(Err(format!("{e:#}")));
                return;
            }
        };
        // Ends when the agent (every sender) is gone.
        while let Ok((token, reply)) = rx.recv() {
            let _ = reply.send(rt.block_on(token_review(&client, &token)));
        }
    })?;
    ready_rx.recv().map_err(|_| anyhow!("the TokenReview thread died"))?.map_err(|e| anyhow!(e))?;
    let jobs = Mutex::new(jobs);
    Ok(Box::new(move |token: &str| {
        let (tx, rx) = mpsc::channel();
        let sent = jobs.lock().expect("not poisoned").send((token.to_string(), tx));
        sent.map_err(|_| TokenProblem::Unavailable("the TokenReview thread is gone".into()))?;
        rx.recv().map_err(|_| TokenProblem::Unavailable("the TokenReview thread is gone".into()))?
    }))
}

/// The control plane's verdict on `token` for [`AUDIENCE`]: the apiserver
/// checks signature, issuer, expiry, audience and that the ServiceAccount
/// (and a bound Pod) still exist.
async fn token_review(client: &kube::Client, token: &str) -> Result<Reviewed, TokenProblem> {
    let api: Api<TokenReview> = Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(vec![AUDIENCE.to_string()]) },
        ..Default::default()
    };
    let out = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| TokenProblem::Unavailable(format!("TokenReview: {e}")))?;
    let status = out.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status.error.unwrap_or_else(|| "not authenticated".into());
        return Err(if why.contains("expired") { TokenProblem::Expired(why) } else { TokenProblem::Invalid(why) });
    }
    if !status.audiences.unwrap_or_default().iter().any(|a| a == AUDIENCE) {
        return Err(TokenProblem::Invalid(format!("the token is not for audience {AUDIENCE}")));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let (namespace, service_account) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| TokenProblem::Invalid(format!("{username} is not a ServiceAccount")))?;
    let extra = user.extra.unwrap_or_default();
    let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
    Ok(Reviewed {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        pod_name: first("authentication.kubernetes.io/pod-name"),
        pod_uid: first("authentication.kubernetes.io/pod-uid"),
    })
}

/// An error as the agent writes it with Go's `http.Error`.
fn agent_error(status: u16, message: &str) -> Response {
    let mut response = Response::text(status, message);
    response.headers.push(("X-Content-Type-Options", "nosniff".into()));
    response
}

/// EKS Auth's refusal, relayed by the agent (`pkg/errors/errors.go`).
struct EksAuthError {
    status: u16,
    code: &'static str,
    message: String,
    server_fault: bool,
    /// For [`Served::cause`], never in the answer.
    cause: Option<String>,
}

impl EksAuthError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        EksAuthError { status, code, message: message.into(), server_fault: status >= 500, cause: None }
    }

    fn because(mut self, cause: impl Into<String>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    fn response(&self) -> Response {
        let fault = if self.server_fault { "server" } else { "client" };
        let request_id = uuid_v4();
        agent_error(self.status, &format!("[{request_id}]: ({}): {}, fault: {fault}", self.code, self.message))
    }
}

fn handle(state: &State, req: Result<Request>) -> Response {
    let Ok(req) = req else {
        // Go's server answers a request it cannot read with a bare 400.
        return Response::text(400, "400 Bad Request");
    };
    if req.path != CREDENTIALS_PATH {
        return agent_error(404, "404 page not found");
    }
    let token = req.header("authorization").unwrap_or("").to_string();
    let fingerprint = (!token.is_empty()).then(|| token_fingerprint(&token));
    let (response, served) = credentials(state, &req, &token);
    state.inner.lock().expect("not poisoned").served.push(Served {
        token: fingerprint,
        status: response.status,
        subject: served.subject,
        error_code: served.error_code,
        cached: served.cached,
        cause: served.cause,
    });
    response
}

#[derive(Default)]
struct Outcome {
    subject: Option<String>,
    error_code: Option<String>,
    cached: bool,
    cause: Option<String>,
}

fn credentials(state: &State, req: &Request, token: &str) -> (Response, Outcome) {
    let mut outcome = Outcome::default();
    if let Err(message) = check_target_host(&state.target_hosts, req.header("host").unwrap_or("")) {
        return (agent_error(403, &message), outcome);
    }
    if token.is_empty() {
        return (agent_error(400, "Service account token cannot be empty"), outcome);
    }
    if let Err(message) = parse_unverified(token, Timestamp::now()) {
        return (agent_error(400, &message), outcome);
    }
    let fingerprint = token_fingerprint(token);
    if let Some(body) = cached(state, &fingerprint) {
        outcome.cached = true;
        return (Response::json(200, &body), outcome);
    }
    match assume_role_for_pod_identity(state, token) {
        Ok((subject, creds)) => {
            outcome.subject = Some(subject);
            // `callDelegateAndCache` refuses credentials about to expire.
            let left = creds.expiration.duration_since(Timestamp::now()).as_secs_f64();
            if left <= MIN_CREDENTIAL_TTL.as_secs_f64() {
                let message = format!(
                    "error getting credentials to cache: fetched credentials are expired or will expire within the next {left:.2} seconds"
                );
                return (agent_error(500, &message), outcome);
            }
            let body = credentials_json(&creds);
            state.inner.lock().expect("not poisoned").cache.insert(fingerprint, creds);
            (Response::json(200, &body), outcome)
        }
        Err((subject, e)) => {
            outcome.subject = subject;
            outcome.error_code = Some(e.code.to_string());
            outcome.cause = e.cause.clone();
            (e.response(), outcome)
        }
    }
}

/// Cached credentials for a token, while the agent would still serve them.
fn cached(state: &State, fingerprint: &str) -> Option<Value> {
    let mut inner = state.inner.lock().expect("not poisoned");
    let creds = inner.cache.get(fingerprint)?;
    let left = creds.expiration.duration_since(Timestamp::now()).as_secs_f64();
    if left > MIN_CREDENTIAL_TTL.as_secs_f64() && creds.stored.elapsed() < MAX_RETENTION {
        return Some(credentials_json(creds));
    }
    inner.cache.remove(fingerprint);
    None
}

/// The agent's answer (`EksCredentialsResponse` in `pkg/credentials/model.go`,
/// `Expiration` in RFC 3339).
fn credentials_json(c: &Creds) -> Value {
    json!({
        "AccessKeyId": c.access_key_id,
        "SecretAccessKey": c.secret_access_key,
        "Token": c.session_token,
        "AccountId": c.account_id,
        "Expiration": c.expiration.to_string(),
    })
}

/// `validateRequestTargetHost`: the Host, without a port or IPv6 brackets,
/// must be one of the agent's addresses.
fn check_target_host(targets: &[String], host: &str) -> Result<(), String> {
    let without_port = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && (!h.contains(':') || h.ends_with(']')) => h,
        _ => host,
    };
    let bare = without_port.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(without_port);
    if targets.iter().any(|t| t == bare) {
        return Ok(());
    }
    Err(format!(
        "Access Denied. Called agent through invalid address, please use either [{}] address not {bare}",
        targets.join(" ")
    ))
}

/// The agent's `validateToken`: golang-jwt v5's `ParseUnverified` and its
/// default claim validation (`exp`, `nbf`), with golang-jwt's messages.
fn parse_unverified(token: &str, now: Timestamp) -> Result<(), String> {
    let parsed = (|| {
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return Err("token is malformed: token contains an invalid number of segments".to_string());
        }
        let header = URL_SAFE_NO_PAD
            .decode(parts[0])
            .map_err(|e| format!("token is malformed: could not base64 decode header: {e}"))?;
        let header: serde_json::Map<String, Value> = serde_json::from_slice(&header)
            .map_err(|e| format!("token is malformed: could not JSON decode header: {e}"))?;
        let claims = URL_SAFE_NO_PAD
            .decode(parts[1])
            .map_err(|e| format!("token is malformed: could not base64 decode claim: {e}"))?;
        let claims: serde_json::Map<String, Value> = serde_json::from_slice(&claims)
            .map_err(|e| format!("token is malformed: could not JSON decode claim: {e}"))?;
        for name in ["exp", "nbf", "iat"] {
            if claims.get(name).is_some_and(|v| !v.is_number() && !v.is_null()) {
                return Err(format!("token is malformed: could not JSON decode claim: {name} is not a number"));
            }
        }
        match header.get("alg").and_then(Value::as_str) {
            None => Err("token is unverifiable: signing method (alg) is unspecified".to_string()),
            Some(alg) if !KNOWN_ALGS.contains(&alg) => {
                Err("token is unverifiable: signing method (alg) is unavailable".to_string())
            }
            Some(_) => Ok(claims),
        }
    })()
    .map_err(|e| format!("Service account token cannot be parsed: {e}"))?;
    let now = now.as_second() as f64;
    let time = |name: &str| parsed.get(name).and_then(Value::as_f64);
    let invalid =
        |why: &str| format!("Service account token failed basic claim validations: token has invalid claims: {why}");
    if time("exp").is_some_and(|exp| now > exp) {
        return Err(invalid("token is expired"));
    }
    if time("nbf").is_some_and(|nbf| now < nbf) {
        return Err(invalid("token is not valid yet"));
    }
    Ok(())
}

/// The signing methods golang-jwt v5 registers.
const KNOWN_ALGS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
    "EdDSA", "none",
];

/// EKS Auth: the token's ServiceAccount, its association, the role assumed.
/// On failure, the subject when the token was accepted.
fn assume_role_for_pod_identity(state: &State, token: &str) -> Result<(String, Creds), (Option<String>, EksAuthError)> {
    let who = (state.review)(token).map_err(|problem| {
        let e = match problem {
            TokenProblem::Invalid(why) => EksAuthError::new(
                400,
                "InvalidTokenException",
                "The specified Kubernetes service account token is invalid.",
            )
            .because(why),
            TokenProblem::Expired(why) => EksAuthError::new(
                400,
                "ExpiredTokenException",
                "The specified Kubernetes service account token is expired.",
            )
            .because(why),
            TokenProblem::Unavailable(why) => EksAuthError::new(
                500,
                "InternalServerException",
                "These errors are usually caused by a server-side issue.",
            )
            .because(why),
        };
        (None, e)
    })?;
    let subject = format!("{}/{}", who.namespace, who.service_account);
    let role = state
        .inner
        .lock()
        .expect("not poisoned")
        .associations
        .get(&(who.namespace.clone(), who.service_account.clone()))
        .cloned();
    let Some(role) = role else {
        // The code and status are the API's; AWS does not publish the text.
        let message = format!(
            "No Pod Identity Association found for service account {} in namespace {} of cluster {}",
            who.service_account, who.namespace, state.cluster
        );
        return Err((Some(subject), EksAuthError::new(404, "ResourceNotFoundException", message)));
    };
    let pod = who.pod_name.clone().unwrap_or_default();
    let mut session = format!("eks-{}-{pod}-{}", state.cluster, uuid_v4());
    session.truncate(64);
    let cluster_arn =
        format!("arn:aws:eks:us-east-1:{}:cluster/{}", account_of(&role).unwrap_or("000000000000"), state.cluster);
    let tags = [
        ("eks-cluster-arn", cluster_arn.as_str()),
        ("eks-cluster-name", state.cluster.as_str()),
        ("kubernetes-namespace", who.namespace.as_str()),
        ("kubernetes-service-account", who.service_account.as_str()),
        ("kubernetes-pod-name", pod.as_str()),
        ("kubernetes-pod-uid", who.pod_uid.as_deref().unwrap_or("")),
    ];
    let creds = sts_assume_role(&state.sts_endpoint, &role, &session, &tags).map_err(|e| (Some(subject.clone()), e))?;
    Ok((subject, creds))
}

/// The account of an `arn:<partition>:<service>::<account>:...` ARN.
fn account_of(arn: &str) -> Option<&str> {
    arn.split(':').nth(4).filter(|a| !a.is_empty())
}

/// `sts:AssumeRole` (query API) at `endpoint`, signed with SigV4.
fn sts_assume_role(
    endpoint: &str,
    role_arn: &str,
    session: &str,
    tags: &[(&str, &str)],
) -> Result<Creds, EksAuthError> {
    let internal = |e: anyhow::Error| {
        EksAuthError::new(500, "InternalServerException", "These errors are usually caused by a server-side issue.")
            .because(format!("sts:AssumeRole: {e:#}"))
    };
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", "AssumeRole")
        .append_pair("Version", "2011-06-15")
        .append_pair("RoleArn", role_arn)
        .append_pair("RoleSessionName", session);
    for (i, (key, value)) in tags.iter().filter(|(_, v)| !v.is_empty()).enumerate() {
        form.append_pair(&format!("Tags.member.{}.Key", i + 1), key);
        form.append_pair(&format!("Tags.member.{}.Value", i + 1), value);
    }
    let body = form.finish();
    let (status, text) = post_signed(endpoint, &body, Timestamp::now()).map_err(internal)?;
    if status != 200 {
        let code = xml_text(&text, "Code").unwrap_or_default();
        if code == "AccessDenied" {
            // STS refused the role (its trust policy): AWS does not say
            // which error EKS Auth then answers; AccessDeniedException is
            // the API's permission error.
            let message = xml_text(&text, "Message").unwrap_or_default();
            return Err(EksAuthError::new(400, "AccessDeniedException", message.clone()).because(message));
        }
        return Err(internal(anyhow!("STS answered {status} {code}")));
    }
    let field = |name: &str| xml_text(&text, name).ok_or_else(|| internal(anyhow!("STS answer without {name}")));
    let arn = field("Arn")?;
    let expiration: Timestamp = field("Expiration")?.parse().map_err(|e| internal(anyhow!("STS Expiration: {e}")))?;
    let creds = Creds {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: field("SessionToken")?,
        account_id: account_of(&arn).unwrap_or_default().to_string(),
        expiration,
        stored: Instant::now(),
    };
    record_secret(&creds.secret_access_key);
    record_secret(&creds.session_token);
    Ok(creds)
}

/// The text of the first `<name>` element (STS answers are flat enough).
fn xml_text(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..end].replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\""))
}

/// POSTs a form to `endpoint` (`http://HOST:PORT`) signed for STS in
/// us-east-1 with the EKS Auth stand-in's keys: `(status, body)`.
fn post_signed(endpoint: &str, body: &str, now: Timestamp) -> Result<(u16, String)> {
    let host = endpoint.strip_prefix("http://").context("only http:// endpoints")?.trim_end_matches('/');
    const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
    let authorization = sigv4_authorization(
        "POST",
        "/",
        "",
        &[("content-type", CONTENT_TYPE), ("host", host)],
        body.as_bytes(),
        now,
        "us-east-1",
        "sts",
        EKS_AUTH_KEY_ID,
        EKS_AUTH_SECRET,
    );
    let amz_date = amz_date(now);
    let mut stream = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: {CONTENT_TYPE}\r\nX-Amz-Date: {amz_date}\r\n\
         Authorization: {authorization}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").context("no HTTP head")?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no HTTP status")?;
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        bail!("chunked answers are not expected from moto");
    }
    Ok((status, rest.to_string()))
}

fn amz_date(t: Timestamp) -> String {
    t.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// The SigV4 `Authorization` header (AWS General Reference, "Create a signed
/// AWS API request"): `headers` lower-case, sorted, without `x-amz-date`,
/// which is added and signed.
#[allow(clippy::too_many_arguments)]
fn sigv4_authorization(
    method: &str,
    path: &str,
    canonical_query: &str,
    headers: &[(&str, &str)],
    payload: &[u8],
    now: Timestamp,
    region: &str,
    service: &str,
    key_id: &str,
    secret: &str,
) -> String {
    let amz_date = amz_date(now);
    let date = &amz_date[..8];
    let mut signed: Vec<(&str, &str)> = headers.to_vec();
    signed.push(("x-amz-date", &amz_date));
    signed.sort();
    let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{}\n", v.trim())).collect();
    let signed_headers = signed.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(";");
    let canonical_request = format!(
        "{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{}",
        hex(&Sha256::digest(payload))
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign =
        format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical_request.as_bytes())));
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in [date, region, service, "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
    format!("AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={signed_headers}, Signature={signature}")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&key, data).as_ref().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random UUID (version 4), for request ids and session names.
fn uuid_v4() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 16];
    SystemRandom::new().fill(&mut b).expect("system randomness");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(header: &Value, claims: &Value) -> String {
        let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        format!("{}.{}.c2ln", part(header), part(claims))
    }

    /// An agent whose EKS Auth accepts `good` for `ns/sa` and refuses the rest.
    fn agent(sts: &str) -> PodIdentityAgent {
        let review: Reviewer = Box::new(|token: &str| {
            let claims = token.split('.').nth(1).and_then(|c| URL_SAFE_NO_PAD.decode(c).ok());
            let sub = claims.and_then(|c| serde_json::from_slice::<Value>(&c).ok()).map(|c| c["sub"].clone());
            if sub == Some(json!("good")) {
                Ok(Reviewed {
                    namespace: "ns".into(),
                    service_account: "sa".into(),
                    pod_name: Some("pod".into()),
                    pod_uid: None,
                })
            } else {
                Err(TokenProblem::Invalid("unknown".into()))
            }
        });
        PodIdentityAgent::start_with(review, sts).unwrap()
    }

    fn get(agent: &PodIdentityAgent, path: &str, host: Option<&str>, auth: Option<&str>) -> (u16, String, String) {
        let port = agent.server.port();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let host = host.map(str::to_string).unwrap_or_else(|| format!("127.0.0.1:{port}"));
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Accept: application/json\r\n\r\n").unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        (head.split_whitespace().nth(1).unwrap().parse().unwrap(), head.to_string(), body.to_string())
    }

    #[test]
    fn refuses_what_the_agent_refuses_before_eks_auth() {
        // No STS behind it: none of these may get that far.
        let agent = agent("http://127.0.0.1:1");
        let now = Timestamp::now().as_second();
        let good = jwt(&json!({"alg": "RS256", "kid": "k"}), &json!({"sub": "good", "exp": now + 600}));

        let (status, head, body) = get(&agent, CREDENTIALS_PATH, None, None);
        assert_eq!((status, body.as_str()), (400, "Service account token cannot be empty\n"));
        assert!(head.contains("Content-Type: text/plain; charset=utf-8") && head.contains("nosniff"), "{head}");

        let (status, _, body) = get(&agent, "/v1/credentials/", None, Some(&good));
        assert_eq!((status, body.as_str()), (404, "404 page not found\n"));

        let (status, _, body) = get(&agent, CREDENTIALS_PATH, Some("169.254.170.23"), Some(&good));
        assert_eq!(status, 403);
        assert_eq!(
            body,
            "Access Denied. Called agent through invalid address, please use either [127.0.0.1] address not 169.254.170.23\n"
        );

        let (status, _, body) = get(&agent, CREDENTIALS_PATH, None, Some("Bearer not-a-jwt"));
        assert_eq!(status, 400);
        assert!(body.starts_with("Service account token cannot be parsed: token is malformed"), "{body}");

        let expired = jwt(&json!({"alg": "RS256"}), &json!({"sub": "good", "exp": now - 60}));
        let (status, _, body) = get(&agent, CREDENTIALS_PATH, None, Some(&expired));
        assert_eq!(status, 400);
        assert!(body.contains("token has invalid claims: token is expired"), "{body}");

        let no_alg = jwt(&json!({"typ": "JWT"}), &json!({"sub": "good"}));
        let (status, _, body) = get(&agent, CREDENTIALS_PATH, None, Some(&no_alg));
        assert_eq!(status, 400);
        assert!(body.contains("signing method (alg) is unspecified"), "{body}");

        assert!(agent.served().iter().all(|s| s.error_code.is_none() && s.subject.is_none()));
    }

    #[test]
    fn eks_auth_refusals_are_relayed_with_their_status_and_code() {
        let agent = agent("http://127.0.0.1:1");
        let now = Timestamp::now().as_second();
        let stranger = jwt(&json!({"alg": "RS256"}), &json!({"sub": "stranger", "exp": now + 600}));
        let (status, _, body) = get(&agent, CREDENTIALS_PATH, None, Some(&stranger));
        assert_eq!(status, 400);
        assert!(body.starts_with('['), "{body}");
        assert!(body.ends_with("]: (InvalidTokenException): The specified Kubernetes service account token is invalid., fault: client\n"), "{body}");

        // Accepted token, no association: 404 ResourceNotFoundException.
        let good = jwt(&json!({"alg": "RS256"}), &json!({"sub": "good", "exp": now + 600}));
        let (status, _, body) = get(&agent, CREDENTIALS_PATH, None, Some(&good));
        assert_eq!(status, 404);
        assert!(body.contains("]: (ResourceNotFoundException): No Pod Identity Association found for service account sa in namespace ns"), "{body}");
        assert!(body.ends_with(", fault: client\n"), "{body}");

        // Associated, but STS is unreachable: EKS Auth's own failure.
        agent.associate("ns", "sa", "arn:aws:iam::777777777777:role/r");
        let (status, _, body) = get(&agent, CREDENTIALS_PATH, None, Some(&good));
        assert_eq!(status, 500);
        assert!(body.contains("(InternalServerException)") && body.ends_with("fault: server\n"), "{body}");

        let served = agent.served();
        let codes: Vec<_> = served.iter().map(|s| (s.status, s.error_code.clone(), s.subject.clone())).collect();
        assert_eq!(
            codes,
            [
                (400, Some("InvalidTokenException".to_string()), None),
                (404, Some("ResourceNotFoundException".into()), Some("ns/sa".into())),
                (500, Some("InternalServerException".into()), Some("ns/sa".into())),
            ]
        );
        assert_eq!(served[1].token.as_deref(), Some(token_fingerprint(&good).as_str()));
    }

    #[test]
    fn target_hosts_ignore_ports_and_brackets() {
        let targets = vec!["169.254.170.23".to_string(), "fd00:ec2::23".to_string()];
        assert!(check_target_host(&targets, "169.254.170.23").is_ok());
        assert!(check_target_host(&targets, "169.254.170.23:80").is_ok());
        assert!(check_target_host(&targets, "[fd00:ec2::23]:80").is_ok());
        assert!(check_target_host(&targets, "[fd00:ec2::23]").is_ok());
        assert!(check_target_host(&targets, "fd00:ec2::23").is_ok());
        let e = check_target_host(&targets, "localhost:80").unwrap_err();
        assert!(e.ends_with("please use either [169.254.170.23 fd00:ec2::23] address not localhost"), "{e}");
    }

    #[test]
    fn sigv4_matches_the_aws_documentation_example() {
        // "Create a signed AWS API request", IAM ListUsers example.
        let now: Timestamp = "2015-08-30T12:36:00Z".parse().unwrap();
        let auth = sigv4_authorization(
            "GET",
            "/",
            "Action=ListUsers&Version=2010-05-08",
            &[("content-type", "application/x-www-form-urlencoded; charset=utf-8"), ("host", "iam.amazonaws.com")],
            b"",
            now,
            "us-east-1",
            "iam",
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn sts_answers_are_read() {
        let xml = "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIAX</AccessKeyId>\
                   <SecretAccessKey>s&amp;k</SecretAccessKey></Credentials><AssumedRoleUser>\
                   <Arn>arn:aws:sts::777777777777:assumed-role/r/s</Arn></AssumedRoleUser></AssumeRoleResult></AssumeRoleResponse>";
        assert_eq!(xml_text(xml, "AccessKeyId").as_deref(), Some("ASIAX"));
        assert_eq!(xml_text(xml, "SecretAccessKey").as_deref(), Some("s&k"));
        assert_eq!(account_of(&xml_text(xml, "Arn").unwrap()), Some("777777777777"));
        assert_eq!(xml_text(xml, "Token"), None);
        let id = uuid_v4();
        assert_eq!((id.len(), &id[14..15]), (36, "4"));
    }
}
