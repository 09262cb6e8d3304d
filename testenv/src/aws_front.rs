//! A front that makes `moto_server` as strict as AWS where regcred depends
//! on it. moto (PyPI moto 5.2.1) is kind: its STS accepts any web-identity
//! token in `AssumeRoleWithWebIdentity`, and its ECR `GetAuthorizationToken`
//! answers the password `<account>-auth-token` with `expiresAt` in 2015,
//! valid in every region forever (moto `ecr/responses.py`,
//! `get_authorization_token`).
//!
//! The front listens where clients are pointed ([`crate::aws::Moto::endpoint`])
//! and forwards every request to moto unchanged, except:
//! - ECR `GetAuthorizationToken` (awsJson1.1): moto answers (account and
//!   `proxyEndpoint`), then the token is replaced by a random one bound to
//!   the region of the request's SigV4 credential scope, the account, the
//!   caller and an expiry (12 hours by default, as ECR);
//! - STS `AssumeRoleWithWebIdentity` (awsQuery): the web-identity JWT is
//!   checked as STS checks it for IRSA (registered OIDC provider, signature
//!   against its JWKS, `exp`/`nbf`, audience against the provider's client
//!   ids, `aud`/`sub` against the role's trust policy) before moto sees it;
//!   refusals use STS's own error codes and texts;
//! - STS answers that hand out credentials (`AssumeRoleWithWebIdentity`,
//!   `AssumeRole`) are read on the way back, so the access key id they
//!   issue is known to belong to the assumed role.
//!
//! Every token and secret the front handles is recorded with
//! [`record_secret`] for the suite's leak check.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Value, json};

use crate::operator::record_secret;
use crate::standin_http::{Conn, Request, Response, read_request};
use crate::tokenauth::Validator;

/// The `X-Amz-Target` of ECR's `GetAuthorizationToken` (the service's
/// Smithy model: `AmazonEC2ContainerRegistry_V20150921`).
pub(crate) const ECR_GET_AUTHORIZATION_TOKEN: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";

/// "The authorization token is valid for 12 hours."
/// (https://docs.aws.amazon.com/AmazonECR/latest/APIReference/API_GetAuthorizationToken.html)
pub const ECR_TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The client id (audience) an IAM OIDC provider for EKS lists, and the
/// audience of IRSA's projected tokens
/// (https://docs.aws.amazon.com/eks/latest/userguide/enable-iam-roles-for-service-accounts.html).
pub const STS_AUDIENCE: &str = "sts.amazonaws.com";

/// moto's account for callers it knows nothing about (moto `core/models.py`,
/// `DEFAULT_ACCOUNT_ID`).
const MOTO_DEFAULT_ACCOUNT: &str = "123456789012";

/// The largest request the front reads.
const MAX_REQUEST: usize = 1 << 20;

/// An ECR authorization token the front issued. The password itself is not
/// kept in it (so `Debug` shows no secret).
#[derive(Clone, Debug, PartialEq)]
pub struct EcrToken {
    /// The account of the caller (the assumed role's account, moto's
    /// account for other callers).
    pub account: String,
    /// The region of the request's SigV4 credential scope: the only region
    /// whose registries accept the token. ECR tokens are "scoped to an
    /// account and region" (awslabs/amazon-ecr-credential-helper
    /// `ecr-login/api/factory.go`, `credentialsCachePrefix`, which caches
    /// them per region and asks each registry's own region for one).
    pub region: String,
    /// The access key id that signed the request.
    pub access_key_id: String,
    /// The assumed-role ARN behind `access_key_id`, when STS (through this
    /// front) issued it: `arn:aws:sts::<account>:assumed-role/<role>/<session>`.
    pub principal_arn: Option<String>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

impl EcrToken {
    /// Whether it has not expired yet.
    pub fn is_live(&self) -> bool {
        SystemTime::now() < self.expires_at
    }

    /// The role ARN (`arn:aws:iam::<account>:role/<name>`) of the assumed
    /// role behind the token, when known.
    pub fn role_arn(&self) -> Option<String> {
        let arn = self.principal_arn.as_deref()?;
        let rest = arn.strip_prefix("arn:aws:sts::")?;
        let (account, path) = rest.split_once(":assumed-role/")?;
        let (role, _session) = path.rsplit_once('/')?;
        Some(format!("arn:aws:iam::{account}:role/{role}"))
    }
}

/// One `AssumeRoleWithWebIdentity` the front saw, and its outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct WebIdentityCall {
    pub role_arn: String,
    /// The token's `iss`, `sub` and `aud` claims as sent (unverified; empty
    /// when the token could not be read).
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
    /// `None` when STS accepted it; otherwise the error code
    /// (`InvalidIdentityToken`, `ExpiredTokenException`, `AccessDenied`, ...).
    pub error: Option<String>,
}

/// The front's state, shared by its connection threads and [`crate::aws::Moto`].
pub(crate) struct Front {
    /// `127.0.0.1:PORT` of moto.
    upstream: String,
    rng: SystemRandom,
    ecr_calls: AtomicUsize,
    inner: Mutex<Inner>,
}

struct Inner {
    ecr_lifetime: Duration,
    /// Fault knob: tokens are issued already expired.
    ecr_expired: bool,
    /// ECR password → what it is bound to.
    tokens: HashMap<String, EcrToken>,
    /// Normalised issuer (no `https://`, no trailing `/`) → provider.
    providers: HashMap<String, OidcProvider>,
    /// Role ARN → the web-identity statements of its trust policy.
    trust: HashMap<String, Vec<TrustStatement>>,
    /// Access key id issued by STS → assumed-role ARN.
    principals: HashMap<String, String>,
    web_identity: Vec<WebIdentityCall>,
}

/// An IAM OIDC identity provider: its issuer, client ids (audiences) and
/// signing keys.
struct OidcProvider {
    client_ids: Vec<String>,
    keys: Vec<Jwk>,
}

/// A statement `{"Effect": "Allow", "Principal": {"Federated":
/// "arn:aws:iam::<account>:oidc-provider/<provider>"}, "Action":
/// "sts:AssumeRoleWithWebIdentity", "Condition": {"StringEquals":
/// {"<provider>:aud": audience}, "StringLike": {"<provider>:sub": subjects}}}`.
struct TrustStatement {
    provider: String,
    audience: String,
    subjects: Vec<String>,
}

impl Front {
    pub(crate) fn new(upstream: String) -> Front {
        Front {
            upstream,
            rng: SystemRandom::new(),
            ecr_calls: AtomicUsize::new(0),
            inner: Mutex::new(Inner {
                ecr_lifetime: ECR_TOKEN_LIFETIME,
                ecr_expired: false,
                tokens: HashMap::new(),
                providers: HashMap::new(),
                trust: HashMap::new(),
                principals: HashMap::new(),
                web_identity: Vec::new(),
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_ecr_token_lifetime(&self, lifetime: Duration) {
        self.inner().ecr_lifetime = lifetime;
    }

    pub(crate) fn set_ecr_expired(&self, expired: bool) {
        self.inner().ecr_expired = expired;
    }

    pub(crate) fn ecr_calls(&self) -> usize {
        self.ecr_calls.load(Ordering::SeqCst)
    }

    pub(crate) fn ecr_token(&self, password: &str) -> Option<EcrToken> {
        self.inner().tokens.get(password).cloned()
    }

    pub(crate) fn web_identity_calls(&self) -> Vec<WebIdentityCall> {
        self.inner().web_identity.clone()
    }

    /// User `AWS` and a live token of this front, issued in `region` if
    /// given.
    pub(crate) fn validator(self: &Arc<Self>, region: Option<&str>) -> Validator {
        let front = self.clone();
        let region = region.map(str::to_string);
        Arc::new(move |user: &str, pass: &str| {
            user == "AWS"
                && front
                    .inner()
                    .tokens
                    .get(pass)
                    .is_some_and(|t| t.is_live() && region.as_ref().is_none_or(|r| *r == t.region))
        })
    }

    /// Registers an OIDC provider for `issuer` with the keys of `jwks` (a
    /// JWK Set) and `client_ids` as its audiences.
    pub(crate) fn add_oidc_provider(&self, issuer: &str, jwks: &Value, client_ids: &[&str]) -> Result<()> {
        let keys = parse_jwks(jwks)?;
        if keys.is_empty() {
            bail!("the JWK Set of {issuer} holds no key the front can use");
        }
        let provider = OidcProvider { client_ids: client_ids.iter().map(|c| c.to_string()).collect(), keys };
        self.inner().providers.insert(provider_key(issuer), provider);
        Ok(())
    }

    pub(crate) fn trust_web_identity(&self, role_arn: &str, issuer: &str, audience: &str, subjects: &[&str]) {
        let statement = TrustStatement {
            provider: provider_key(issuer),
            audience: audience.to_string(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
        };
        self.inner().trust.entry(role_arn.to_string()).or_default().push(statement);
    }

    /// Answers one connection (one request).
    pub(crate) fn serve(&self, tcp: TcpStream) {
        let mut conn = Conn::plain(tcp, Duration::from_secs(30));
        let answer = match read_request(&mut conn, MAX_REQUEST) {
            Ok(req) => self.handle(&req),
            Err(e) => Response::text(400, &format!("bad request: {e:#}")).to_bytes(),
        };
        let _ = conn.write_all(&answer);
        conn.close();
    }

    fn handle(&self, req: &Request) -> Vec<u8> {
        match req.header("x-amz-target").map(str::trim) {
            Some(ECR_GET_AUTHORIZATION_TOKEN) => return self.ecr_get_authorization_token(req),
            Some(_) => return self.relay(req),
            None => {}
        }
        // awsQuery: the action is a form field of the body (or the query).
        let form = req.form();
        match form.get("Action").map(String::as_str) {
            Some("AssumeRoleWithWebIdentity") => self.assume_role_with_web_identity(req, &form),
            Some("AssumeRole") => match self.forward(req) {
                Ok(answer) => {
                    self.note_credentials(&answer);
                    answer.to_bytes()
                }
                Err(e) => unreachable_upstream(&e),
            },
            _ => self.relay(req),
        }
    }

    /// Forwards `req` to moto and its answer back, unchanged.
    fn relay(&self, req: &Request) -> Vec<u8> {
        match self.forward(req) {
            Ok(answer) => answer.to_bytes(),
            Err(e) => unreachable_upstream(&e),
        }
    }

    fn forward(&self, req: &Request) -> Result<Upstream> {
        parse_response(&crate::standin_http::forward(&self.upstream, req, Duration::from_secs(30))?)
    }

    /// ECR `GetAuthorizationToken`, as ECR scopes it.
    fn ecr_get_authorization_token(&self, req: &Request) -> Vec<u8> {
        // ECR is a regional endpoint: the region is the one the request was
        // signed for, in the SigV4 credential scope
        // `<key>/<yyyymmdd>/<region>/<service>/aws4_request`
        // (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html).
        let Some(scope) = req.header("authorization").and_then(CredentialScope::parse) else {
            // https://docs.aws.amazon.com/AmazonECR/latest/APIReference/CommonErrors.html:
            // MissingAuthenticationToken, HTTP 403.
            return json_error(403, "MissingAuthenticationTokenException", "Missing Authentication Token");
        };
        if scope.service != "ecr" {
            // awsJson services answer a mis-scoped signature this way, 403
            // (e.g. "InvalidSignatureException: Credential should be scoped
            // to correct service: 'sagemaker'.", status code 403).
            return json_error(
                403,
                "InvalidSignatureException",
                "Credential should be scoped to correct service: 'ecr'. ",
            );
        }
        let answer = match self.forward(req) {
            Ok(a) => a,
            Err(e) => return unreachable_upstream(&e),
        };
        if answer.status != 200 {
            return answer.to_bytes();
        }
        let Ok(mut body) = serde_json::from_slice::<Value>(&answer.body) else {
            return answer.to_bytes();
        };
        let asked_for_ids = serde_json::from_slice::<Value>(&req.body)
            .ok()
            .and_then(|v| v.get("registryIds").and_then(Value::as_array).map(|ids| !ids.is_empty()))
            .unwrap_or(false);
        let Some(entries) = body.get_mut("authorizationData").and_then(Value::as_array_mut) else {
            return answer.to_bytes();
        };
        let (lifetime, expired, principal) = {
            let inner = self.inner();
            (inner.ecr_lifetime, inner.ecr_expired, inner.principals.get(&scope.access_key_id).cloned())
        };
        // The caller's account: the assumed role's, else the one moto gave
        // the caller (its default registry, when no registryIds were asked).
        let account = principal
            .as_deref()
            .and_then(arn_account)
            .or_else(|| {
                let first = entries.first()?.get("proxyEndpoint")?.as_str()?;
                let host = first.trim_start_matches("https://");
                (!asked_for_ids).then(|| host.split('.').next().unwrap_or_default().to_string())
            })
            .filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
            .unwrap_or_else(|| MOTO_DEFAULT_ACCOUNT.to_string());
        let issued_at = SystemTime::now();
        let expires_at = if expired { issued_at - Duration::from_secs(3600) } else { issued_at + lifetime };
        let password = match self.new_password(expires_at) {
            Ok(p) => p,
            Err(e) => return json_error(500, "ServerException", &format!("{e:#}")),
        };
        record_secret(&password);
        let authorization_token = STANDARD.encode(format!("AWS:{password}"));
        // expiresAt: epoch seconds with milliseconds, as ECR sends it.
        let expires = expires_at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as f64 / 1000.0).unwrap_or(0.0);
        // One token serves every registry the principal may reach in the
        // region; each entry (one per registryIds value) carries it.
        for entry in entries.iter_mut() {
            entry["authorizationToken"] = json!(authorization_token);
            entry["expiresAt"] = json!(expires);
        }
        let token = EcrToken {
            account,
            region: scope.region,
            access_key_id: scope.access_key_id,
            principal_arn: principal,
            issued_at,
            expires_at,
        };
        self.inner().tokens.insert(password, token);
        self.ecr_calls.fetch_add(1, Ordering::SeqCst);
        let mut response =
            Response::new(200, "application/x-amz-json-1.1", serde_json::to_vec(&body).unwrap_or_default());
        // The HTTP Date is the clock expiresAt is on; regcred reads it.
        if let Some(date) = answer.header("date") {
            response.headers.push(("Date", date.to_string()));
        }
        if let Some(id) = answer.header("x-amzn-requestid") {
            response.headers.push(("x-amzn-RequestId", id.to_string()));
        }
        response.to_bytes()
    }

    /// A password shaped like ECR's: base64 of a JSON document holding an
    /// encrypted payload and data key (opaque random bytes here), a
    /// version, a type and the expiry; about 1.5 KB, with `+`, `/` and `=`.
    fn new_password(&self, expires_at: SystemTime) -> Result<String> {
        let mut payload = vec![0u8; 768];
        let mut datakey = vec![0u8; 184];
        self.rng.fill(&mut payload).map_err(|_| anyhow!("no randomness"))?;
        self.rng.fill(&mut datakey).map_err(|_| anyhow!("no randomness"))?;
        let document = json!({
            "payload": STANDARD.encode(&payload),
            "datakey": STANDARD.encode(&datakey),
            "version": "2",
            "type": "DATA_KEY",
            "expiration": expires_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        });
        Ok(STANDARD.encode(serde_json::to_vec(&document)?))
    }

    /// STS `AssumeRoleWithWebIdentity`: checked here, then answered by moto.
    fn assume_role_with_web_identity(&self, req: &Request, form: &HashMap<String, String>) -> Vec<u8> {
        let role_arn = form.get("RoleArn").cloned().unwrap_or_default();
        let token = form.get("WebIdentityToken").cloned().unwrap_or_default();
        if !token.is_empty() {
            record_secret(&token);
        }
        // Required parameters (STS API reference: RoleArn, RoleSessionName
        // and WebIdentityToken are required); the text is the AWS
        // validation error's.
        for (field, member) in
            [("RoleArn", "roleArn"), ("RoleSessionName", "roleSessionName"), ("WebIdentityToken", "webIdentityToken")]
        {
            if form.get(field).is_none_or(|v| v.is_empty()) {
                return self.sts_error(&Refusal::new(
                    400,
                    "ValidationError",
                    format!(
                        "1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"
                    ),
                ));
            }
        }
        let claims = unverified_claims(&token);
        let mut call = WebIdentityCall {
            role_arn: role_arn.clone(),
            issuer: claims.as_ref().and_then(|c| c["iss"].as_str()).unwrap_or_default().to_string(),
            subject: claims.as_ref().and_then(|c| c["sub"].as_str()).unwrap_or_default().to_string(),
            audiences: claims.as_ref().map(audiences).unwrap_or_default(),
            error: None,
        };
        let verdict = check_web_identity(&self.inner(), &role_arn, &token, unix_now());
        if let Err(refusal) = verdict {
            call.error = Some(refusal.code.to_string());
            self.inner().web_identity.push(call);
            return self.sts_error(&refusal);
        }
        self.inner().web_identity.push(call);
        match self.forward(req) {
            Ok(answer) => {
                self.note_credentials(&answer);
                answer.to_bytes()
            }
            Err(e) => unreachable_upstream(&e),
        }
    }

    /// Remembers the assumed role of the credentials in an STS answer, and
    /// records its secrets for the leak check.
    fn note_credentials(&self, answer: &Upstream) {
        if answer.status != 200 {
            return;
        }
        let xml = String::from_utf8_lossy(&answer.body);
        for secret in ["SecretAccessKey", "SessionToken"] {
            if let Some(s) = xml_text(&xml, secret) {
                record_secret(s);
            }
        }
        let key = xml_text(&xml, "AccessKeyId");
        let arn = xml.find("<AssumedRoleUser>").and_then(|i| xml_text(&xml[i..], "Arn"));
        if let (Some(key), Some(arn)) = (key, arn) {
            self.inner().principals.insert(key.to_string(), arn.to_string());
        }
    }

    /// STS's awsQuery error document
    /// (https://docs.aws.amazon.com/STS/latest/APIReference/CommonErrors.html;
    /// the shape as STS sends it, e.g. aws/aws-sdk-js issue #198).
    fn sts_error(&self, refusal: &Refusal) -> Vec<u8> {
        let mut id = [0u8; 16];
        let _ = self.rng.fill(&mut id);
        let h: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let request_id = format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]);
        let body = format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <Error>\n    <Type>Sender</Type>\n    <Code>{}</Code>\n    <Message>{}</Message>\n  </Error>\n  <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n",
            refusal.code,
            xml_escape(&refusal.message)
        );
        let mut response = Response::new(refusal.status, "text/xml", body.into_bytes());
        response.headers.push(("x-amzn-RequestId", request_id));
        response.to_bytes()
    }
}

/// Why STS refuses a call: HTTP status, error code, message.
#[derive(Debug, PartialEq)]
struct Refusal {
    status: u16,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal { status, code, message: message.into() }
    }
}

/// `InvalidIdentityToken`'s description in the STS API reference
/// (https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRoleWithWebIdentity.html#API_AssumeRoleWithWebIdentity_Errors),
/// for failures whose exact text AWS does not document (a signature that
/// does not verify, an `nbf` in the future, non-integer times).
const NOT_VALIDATED: &str = "The web identity token that was passed could not be validated by AWS. Get a new identity token from the identity provider and then retry the request.";

/// STS's text for a token that is not a JWT, as STS sends it (quoted in
/// Amazon Cognito's troubleshooting of `InvalidIdentityToken` and in IRSA
/// users' `WebIdentityErr` logs).
const NOT_A_JWT: &str =
    "The ID Token provided is not a valid JWT. (You may see this error if you sent an Access Token)";

/// STS's text when no key of the provider's JWKS matches the token (the
/// `kid` is unknown), as in awslabs/aws-sdk-rust issue #827 and AWS's
/// knowledge-center article `iam-sts-invalididentitytoken`. The two
/// spaces are AWS's.
const NO_KEY: &str = "Couldn't retrieve verification key from your identity provider,  please reference AssumeRoleWithWebIdentity documentation for requirements";

/// The checks STS makes on a web-identity token for `role_arn` at `now`
/// (Unix seconds), in its order: a JWT; a registered OIDC provider for its
/// issuer; its audience among the provider's client ids; its signature by
/// one of the provider's keys; `exp` and `nbf`; and the role's trust
/// policy.
fn check_web_identity(inner: &Inner, role_arn: &str, token: &str, now: i64) -> Result<(), Refusal> {
    let invalid = |message: &str| Refusal::new(400, "InvalidIdentityToken", message);
    let Some(crate::oidc::SplitJwt { header, claims, signing_input, signature }) = crate::oidc::split_jwt(token) else {
        return Err(invalid(NOT_A_JWT));
    };
    let Some(issuer) = claims.get("iss").and_then(Value::as_str) else {
        return Err(invalid(NOT_A_JWT));
    };
    // "No OpenIDConnect provider found in your account for <iss>"
    // (InvalidIdentityToken, HTTP 400; e.g. kubernetes-sigs/aws-load-balancer-controller
    // issue #2315, mozilla-iam/mozilla-aws-cli issue #127).
    let key = provider_key(issuer);
    let Some(provider) = inner.providers.get(&key) else {
        return Err(invalid(&format!("No OpenIDConnect provider found in your account for {issuer}")));
    };
    // The audience: `azp` when the token has one, else `aud`, and it must
    // be one of the provider's client ids (IAM User Guide, "Create an
    // OpenID Connect (OIDC) identity provider in IAM": the client ID list
    // holds the audiences; "Available keys for OIDC federation": `aud`
    // is taken from `azp` if present). Otherwise
    // "Incorrect token audience" (InvalidIdentityToken; e.g.
    // awslabs/amazon-eks-irsa-cfn pull #18).
    let token_audiences = audiences(&claims);
    let Some(audience) = provider.client_ids.iter().find(|c| token_audiences.iter().any(|a| a == *c)) else {
        return Err(invalid("Incorrect token audience"));
    };
    // Signed by a key of the provider's JWKS, with an algorithm STS accepts:
    // "Tokens must be signed using either RSA keys (RS256, RS384, or RS512)
    // or ECDSA keys (ES256, ES384, or ES512)" (STS API reference,
    // WebIdentityToken). ES512 is not in `ring`, so refused here.
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or_default();
    let candidates: Vec<&Jwk> = match header.get("kid").and_then(Value::as_str) {
        Some(kid) => provider.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect(),
        None => provider.keys.iter().collect(),
    };
    if candidates.is_empty() {
        return Err(invalid(NO_KEY));
    }
    if !candidates.iter().any(|k| k.verify(alg, signing_input.as_bytes(), &signature)) {
        return Err(invalid(NOT_VALIDATED));
    }
    // "Timestamps in the token must be formatted as either an integer or a
    // long integer" (STS API reference, WebIdentityToken).
    let time = |name: &str| -> Result<Option<i64>, Refusal> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| invalid(NOT_VALIDATED)),
        }
    };
    let Some(exp) = time("exp")? else {
        return Err(invalid(NOT_VALIDATED));
    };
    // ExpiredTokenException, HTTP 400 (STS API reference), with STS's text
    // (e.g. aws/aws-sdk-java-v2 issue #5709).
    if now >= exp {
        return Err(Refusal::new(
            400,
            "ExpiredTokenException",
            format!("Token expired: current date/time {now} must be before the expiration date/time {exp}"),
        ));
    }
    if time("nbf")?.is_some_and(|nbf| nbf > now) {
        return Err(invalid(NOT_VALIDATED));
    }
    // The role's trust policy: a statement for this provider whose
    // conditions `<provider>:aud` (StringEquals) and `<provider>:sub`
    // (StringLike) hold (EKS User Guide, "Assign IAM roles to Kubernetes
    // service accounts"; IAM User Guide, "Available keys for OIDC
    // federation"). A role without one, or that does not exist, gives
    // AccessDenied, HTTP 403, "Not authorized to perform
    // sts:AssumeRoleWithWebIdentity" (e.g. aws/aws-sdk-js-v3 issue #6225).
    let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
    let trusted = inner.trust.get(role_arn).is_some_and(|statements| {
        statements
            .iter()
            .any(|s| s.provider == key && s.audience == *audience && s.subjects.iter().any(|p| string_like(p, subject)))
    });
    if !trusted {
        return Err(Refusal::new(403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity"));
    }
    Ok(())
}

/// The audiences of a token: `azp` if present, else `aud` (a string or an
/// array).
fn audiences(claims: &Value) -> Vec<String> {
    if let Some(azp) = claims.get("azp").and_then(Value::as_str) {
        return vec![azp.to_string()];
    }
    match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

/// The claims of a JWT, without verifying anything.
fn unverified_claims(token: &str) -> Option<Value> {
    crate::oidc::split_jwt(token).map(|jwt| jwt.claims)
}

/// IAM's `StringLike`: `*` matches any run of characters (also none), `?`
/// exactly one, everything else itself, case-sensitively
/// (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html#Conditions_String).
pub(crate) fn string_like(pattern: &str, value: &str) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = (pattern.chars().collect(), value.chars().collect());
    let (mut pi, mut vi) = (0, 0);
    // The last `*` seen, and where in `value` its match ends so far.
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == v[vi])) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, vi));
            pi += 1;
        } else if let Some((sp, sv)) = star {
            pi = sp + 1;
            vi = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// An issuer as IAM names its provider: without `https://` and without a
/// trailing `/` (`oidc.eks.<region>.amazonaws.com/id/<id>`).
fn provider_key(issuer: &str) -> String {
    issuer.trim().trim_start_matches("https://").trim_end_matches('/').to_string()
}

/// The 12-digit account of an ARN (`arn:aws:sts::<account>:...`).
fn arn_account(arn: &str) -> Option<String> {
    let account = arn.split(':').nth(4)?;
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then(|| account.to_string())
}

/// The SigV4 credential scope of an `Authorization` header.
#[derive(Debug, PartialEq)]
struct CredentialScope {
    access_key_id: String,
    region: String,
    service: String,
}

impl CredentialScope {
    /// `AWS4-HMAC-SHA256 Credential=<key>/<date>/<region>/<service>/aws4_request, SignedHeaders=..., Signature=...`.
    fn parse(authorization: &str) -> Option<CredentialScope> {
        let rest = authorization.trim().strip_prefix("AWS4-HMAC-SHA256")?;
        let credential = rest.split(',').find_map(|p| p.trim().strip_prefix("Credential="))?;
        let parts: Vec<&str> = credential.trim().split('/').collect();
        let [key, _date, region, service, "aws4_request"] = parts[..] else { return None };
        if key.is_empty() || region.is_empty() || service.is_empty() {
            return None;
        }
        Some(CredentialScope { access_key_id: key.into(), region: region.into(), service: service.into() })
    }
}

/// A key of a JWK Set (RFC 7517), as the front can use it.
struct Jwk {
    kid: Option<String>,
    material: KeyMaterial,
}

enum KeyMaterial {
    /// Big-endian modulus and exponent.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The uncompressed point `04 || x || y` on P-256 or P-384.
    Ec { p384: bool, point: Vec<u8> },
}

impl Jwk {
    fn verify(&self, alg: &str, message: &[u8], signature: &[u8]) -> bool {
        match (&self.material, alg) {
            (KeyMaterial::Rsa { n, e }, "RS256" | "RS384" | "RS512") => {
                let params = match alg {
                    "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                    "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                    _ => &signature::RSA_PKCS1_2048_8192_SHA512,
                };
                RsaPublicKeyComponents { n, e }.verify(params, message, signature).is_ok()
            }
            (KeyMaterial::Ec { p384: false, point }, "ES256") => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(message, signature).is_ok()
            }
            (KeyMaterial::Ec { p384: true, point }, "ES384") => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point).verify(message, signature).is_ok()
            }
            _ => false,
        }
    }
}

/// The RSA and EC (P-256, P-384) signing keys of a JWK Set; other keys are
/// skipped.
fn parse_jwks(jwks: &Value) -> Result<Vec<Jwk>> {
    let keys = jwks.get("keys").and_then(Value::as_array).context("a JWK Set has a `keys` array")?;
    let b64 = |k: &Value, field: &str| -> Option<Vec<u8>> { URL_SAFE_NO_PAD.decode(k.get(field)?.as_str()?).ok() };
    let mut out = Vec::new();
    for k in keys {
        if k.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
            continue;
        }
        let kid = k.get("kid").and_then(Value::as_str).map(str::to_string);
        let material = match k.get("kty").and_then(Value::as_str) {
            Some("RSA") => match (b64(k, "n"), b64(k, "e")) {
                (Some(n), Some(e)) => KeyMaterial::Rsa { n, e },
                _ => continue,
            },
            Some("EC") => {
                let (p384, len) = match k.get("crv").and_then(Value::as_str) {
                    Some("P-256") => (false, 32),
                    Some("P-384") => (true, 48),
                    _ => continue,
                };
                let (Some(x), Some(y)) = (b64(k, "x"), b64(k, "y")) else { continue };
                if x.len() != len || y.len() != len {
                    continue;
                }
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                KeyMaterial::Ec { p384, point }
            }
            _ => continue,
        };
        out.push(Jwk { kid, material });
    }
    Ok(out)
}

/// An answer from moto.
struct Upstream {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Upstream {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The answer as sent to the client: moto's status, headers and body,
    /// with the length framing and `Connection: close` of the front's
    /// one-request connections.
    fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason);
        for (name, value) in &self.headers {
            let framing = ["connection", "keep-alive", "content-length", "transfer-encoding"];
            if !framing.iter().any(|f| name.eq_ignore_ascii_case(f)) {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", self.body.len()));
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Parses a whole HTTP/1.1 response (read until the server closed).
fn parse_response(raw: &[u8]) -> Result<Upstream> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no end of the response head")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next();
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).context("no status in the response")?;
    let reason = parts.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[end + 4..].to_vec();
    let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        body = dechunk(&body)?;
    } else if let Some(length) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.truncate(length);
    }
    Ok(Upstream { status, reason, headers, body })
}

/// The body of a chunked transfer coding (RFC 9112 §7.1).
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").context("a chunk size line has no end")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("a chunk size is not hexadecimal")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("a chunk is cut short");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// What the front answers when moto cannot be reached (moto crashed; an
/// outage is the front itself not listening).
fn unreachable_upstream(e: &anyhow::Error) -> Vec<u8> {
    Response::text(502, &format!("the front cannot reach moto: {e:#}")).to_bytes()
}

/// An awsJson1.1 error answer (`__type` and `message`).
fn json_error(status: u16, code: &str, message: &str) -> Vec<u8> {
    let body = json!({"__type": code, "message": message});
    Response::new(status, "application/x-amz-json-1.1", serde_json::to_vec(&body).unwrap_or_default()).to_bytes()
}

/// The text of the first `<tag>...</tag>` in `xml`.
fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RsaKeyPair};
    use std::io::Read;
    use std::net::TcpListener;

    use crate::standin_http::Server;

    const ISSUER: &str = "https://oidc.example.test/id/ABC";
    const ROLE: &str = "arn:aws:iam::444444444444:role/web-pull";

    fn sign_es256(key: &EcdsaKeyPair, kid: &str, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
        );
        let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn es256_key() -> (EcdsaKeyPair, Value) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let point = key.public_key().as_ref().to_vec();
        let jwk = json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])});
        (key, jwk)
    }

    fn claims(sub: &str, aud: &str, exp_in: i64) -> Value {
        let now = unix_now();
        json!({"iss": ISSUER, "sub": sub, "aud": [aud], "iat": now, "nbf": now, "exp": now + exp_in})
    }

    fn front_with_provider(jwk: &Value) -> Front {
        let front = Front::new("127.0.0.1:9".into());
        front.add_oidc_provider(ISSUER, &json!({"keys": [jwk]}), &[STS_AUDIENCE]).unwrap();
        front.trust_web_identity(ROLE, ISSUER, STS_AUDIENCE, &["system:serviceaccount:ns:puller-*"]);
        front
    }

    fn check(front: &Front, role: &str, token: &str) -> Result<(), (u16, &'static str, String)> {
        check_web_identity(&front.inner(), role, token, unix_now()).map_err(|r| (r.status, r.code, r.message))
    }

    #[test]
    fn string_like_is_iams() {
        assert!(string_like("system:serviceaccount:ns:*", "system:serviceaccount:ns:a"));
        assert!(string_like("system:serviceaccount:ns:*", "system:serviceaccount:ns:"));
        assert!(string_like("*:ns:?", "system:serviceaccount:ns:a"));
        assert!(string_like("a*b*c", "aXbYbZc"));
        assert!(string_like("exact", "exact"));
        assert!(!string_like("exact", "exact2"));
        assert!(!string_like("system:serviceaccount:ns:*", "system:serviceaccount:other:a"));
        assert!(!string_like("*:ns:?", "system:serviceaccount:ns:ab"));
        assert!(!string_like("System:*", "system:x"), "case-sensitive");
    }

    #[test]
    fn credential_scopes_are_read() {
        let h = "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/20260101/eu-west-1/ecr/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=abc";
        assert_eq!(
            CredentialScope::parse(h),
            Some(CredentialScope {
                access_key_id: "ASIAEXAMPLE".into(),
                region: "eu-west-1".into(),
                service: "ecr".into()
            })
        );
        assert_eq!(CredentialScope::parse("AWS4-HMAC-SHA256 Credential=K/20260101/ecr/aws4_request"), None);
        assert_eq!(CredentialScope::parse("Basic dTpw"), None);
    }

    #[test]
    fn es256_web_identity_tokens_are_checked_as_sts_does() {
        let (key, jwk) = es256_key();
        let front = front_with_provider(&jwk);
        let ok = sign_es256(&key, "k1", &claims("system:serviceaccount:ns:puller-1", STS_AUDIENCE, 600));
        assert_eq!(check(&front, ROLE, &ok), Ok(()));

        // Trust policy: another ServiceAccount, another role, no role.
        let other = sign_es256(&key, "k1", &claims("system:serviceaccount:ns:intruder", STS_AUDIENCE, 600));
        let denied = Err((403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity".to_string()));
        assert_eq!(check(&front, ROLE, &other), denied);
        assert_eq!(check(&front, "arn:aws:iam::444444444444:role/unknown", &ok), denied);

        // Audience outside the provider's client ids.
        let aud = sign_es256(&key, "k1", &claims("system:serviceaccount:ns:puller-1", "other.example", 600));
        assert_eq!(check(&front, ROLE, &aud), Err((400, "InvalidIdentityToken", "Incorrect token audience".into())));
        // An audience the provider lists but the trust policy does not.
        front.add_oidc_provider(ISSUER, &json!({"keys": [jwk]}), &[STS_AUDIENCE, "other.example"]).unwrap();
        assert_eq!(check(&front, ROLE, &aud).unwrap_err().1, "AccessDenied");

        // Expired.
        let expired = sign_es256(&key, "k1", &claims("system:serviceaccount:ns:puller-1", STS_AUDIENCE, -5));
        let (status, code, message) = check(&front, ROLE, &expired).unwrap_err();
        assert_eq!((status, code), (400, "ExpiredTokenException"));
        assert!(message.starts_with("Token expired: current date/time "), "{message}");

        // Not yet valid; times that are not integers.
        let mut early = claims("system:serviceaccount:ns:puller-1", STS_AUDIENCE, 600);
        early["nbf"] = json!(unix_now() + 300);
        assert_eq!(check(&front, ROLE, &sign_es256(&key, "k1", &early)).unwrap_err().1, "InvalidIdentityToken");
        let mut float = claims("system:serviceaccount:ns:puller-1", STS_AUDIENCE, 600);
        float["exp"] = json!(unix_now() as f64 + 600.5);
        assert_eq!(check(&front, ROLE, &sign_es256(&key, "k1", &float)).unwrap_err().1, "InvalidIdentityToken");

        // Signed by another key: under the provider's kid, and under another kid.
        let (stranger, _) = es256_key();
        let forged = sign_es256(&stranger, "k1", &claims("system:serviceaccount:ns:puller-1", STS_AUDIENCE, 600));
        assert_eq!(check(&front, ROLE, &forged), Err((400, "InvalidIdentityToken", NOT_VALIDATED.into())));
        let unknown_kid = sign_es256(&key, "k2", &claims("system:serviceaccount:ns:puller-1", STS_AUDIENCE, 600));
        assert_eq!(check(&front, ROLE, &unknown_kid), Err((400, "InvalidIdentityToken", NO_KEY.into())));

        // A tampered claim breaks the signature.
        let parts: Vec<&str> = ok.split('.').collect();
        let mut c = claims("system:serviceaccount:ns:puller-2", STS_AUDIENCE, 600);
        c["iat"] = json!(0);
        let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap()), parts[2]);
        assert_eq!(check(&front, ROLE, &tampered).unwrap_err().2, NOT_VALIDATED);

        // Unknown issuer; not a JWT.
        let mut foreign = claims("system:serviceaccount:ns:puller-1", STS_AUDIENCE, 600);
        foreign["iss"] = json!("https://elsewhere.test");
        assert_eq!(
            check(&front, ROLE, &sign_es256(&key, "k1", &foreign)),
            Err((
                400,
                "InvalidIdentityToken",
                "No OpenIDConnect provider found in your account for https://elsewhere.test".into()
            ))
        );
        assert_eq!(check(&front, ROLE, "eyJhbGciOiJSUzI1NiJ9.e30").unwrap_err().2, NOT_A_JWT);
        assert_eq!(check(&front, ROLE, "not-a-jwt").unwrap_err().2, NOT_A_JWT);
    }

    #[test]
    fn rs256_web_identity_tokens_verify_with_the_jwks_modulus_and_exponent() {
        let openssl = crate::registry::require_tool("openssl", "openssl").unwrap();
        let out = std::process::Command::new(openssl)
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let pem = String::from_utf8(out.stdout).unwrap();
        let der = STANDARD.decode(pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>()).unwrap();
        let key = RsaKeyPair::from_pkcs8(&der).unwrap();
        let public: RsaPublicKeyComponents<Vec<u8>> = key.public().into();
        let jwk = json!({"kty": "RSA", "kid": "rsa", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(&public.n), "e": URL_SAFE_NO_PAD.encode(&public.e)});
        let front = front_with_provider(&jwk);
        let sign = |claims: &Value| {
            let header = json!({"alg": "RS256", "kid": "rsa"});
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
            );
            let mut sig = vec![0u8; key.public().modulus_len()];
            key.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig).unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig))
        };
        let good = sign(&claims("system:serviceaccount:ns:puller-a", STS_AUDIENCE, 600));
        assert_eq!(check(&front, ROLE, &good), Ok(()));
        // The same token claiming ES256 is not accepted with an RSA key.
        let parts: Vec<&str> = good.splitn(2, '.').collect();
        let es = format!("{}.{}", URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"rsa"}"#), parts[1]);
        assert_eq!(check(&front, ROLE, &es).unwrap_err().2, NOT_VALIDATED);
        let none = format!("{}.{}", URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"rsa"}"#), parts[1]);
        assert_eq!(check(&front, ROLE, &none).unwrap_err().2, NOT_VALIDATED);
    }

    /// A stand-in for moto's ECR answer, as moto 5.2.1 gives it.
    fn fake_moto() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Server::spawn(listener, "fake-moto", "fake-moto-conn", |tcp| {
            crate::standin_http::answer_once(Conn::plain(tcp, Duration::from_secs(5)), MAX_REQUEST, |req| {
                let req = req.unwrap();
                if req.header("x-amz-target") == Some(ECR_GET_AUTHORIZATION_TOKEN) {
                    let scope = CredentialScope::parse(req.header("authorization").unwrap()).unwrap();
                    let body = json!({"authorizationData": [{
                        "authorizationToken": STANDARD.encode("AWS:123456789012-auth-token"),
                        "expiresAt": 1420070400.0,
                        "proxyEndpoint": format!("https://123456789012.dkr.ecr.{}.amazonaws.com", scope.region),
                    }]});
                    let mut r = Response::json(200, &body);
                    r.headers.push(("Date", "Thu, 01 Jan 2026 00:00:00 GMT".into()));
                    r
                } else {
                    Response::text(404, "not here")
                }
            })
        })
        .unwrap()
    }

    fn post(front: &Arc<Front>, headers: &[(&str, &str)], body: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let f = front.clone();
        let _server = Server::spawn(listener, "front", "front-conn", move |tcp| f.serve(tcp)).unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut head = format!("POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n", body.len());
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        s.write_all(format!("{head}\r\n{body}").as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        parse_response(&raw).unwrap()
    }

    fn ecr_call(front: &Arc<Front>, region: &str) -> Upstream {
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=AKIAFRONTTEST0000001/20260101/{region}/ecr/aws4_request, SignedHeaders=host, Signature=00"
        );
        post(
            front,
            &[
                ("X-Amz-Target", ECR_GET_AUTHORIZATION_TOKEN),
                ("Content-Type", "application/x-amz-json-1.1"),
                ("Authorization", &auth),
            ],
            "{}",
        )
    }

    fn password_of(answer: &Upstream) -> (String, f64) {
        let v: Value = serde_json::from_slice(&answer.body).unwrap();
        let data = &v["authorizationData"][0];
        let decoded =
            String::from_utf8(STANDARD.decode(data["authorizationToken"].as_str().unwrap()).unwrap()).unwrap();
        let (user, password) = decoded.split_once(':').unwrap();
        assert_eq!(user, "AWS");
        assert_eq!(data["proxyEndpoint"], "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com");
        (password.to_string(), data["expiresAt"].as_f64().unwrap())
    }

    #[test]
    fn ecr_tokens_are_random_region_bound_and_expire() {
        let moto = fake_moto();
        let front = Arc::new(Front::new(format!("127.0.0.1:{}", moto.port())));
        let answer = ecr_call(&front, "eu-west-1");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("date"), Some("Thu, 01 Jan 2026 00:00:00 GMT"), "moto's Date is kept");
        let (password, expires_at) = password_of(&answer);
        assert_ne!(password, "123456789012-auth-token");
        assert!(password.len() > 1000, "ECR passwords are long");
        let lifetime = expires_at - unix_now() as f64;
        assert!((43_190.0..=43_201.0).contains(&lifetime), "12 hours, not {lifetime}");
        let token = front.ecr_token(&password).unwrap();
        assert_eq!((token.account.as_str(), token.region.as_str()), ("123456789012", "eu-west-1"));
        assert_eq!((token.access_key_id.as_str(), token.principal_arn.as_deref()), ("AKIAFRONTTEST0000001", None));
        assert_eq!(front.ecr_calls(), 1);
        assert!(front.validator(None)("AWS", &password));
        assert!(front.validator(Some("eu-west-1"))("AWS", &password));
        assert!(!front.validator(Some("us-east-1"))("AWS", &password), "valid only where issued");
        assert!(!front.validator(None)("aws", &password));
        assert!(!front.validator(None)("AWS", "123456789012-auth-token"), "moto's own password");

        // Each call a new token; an expired one is refused.
        front.set_ecr_token_lifetime(Duration::from_secs(1));
        let (short, _) = password_of(&ecr_call(&front, "eu-west-1"));
        assert_ne!(short, password);
        assert!(front.validator(None)("AWS", &short));
        std::thread::sleep(Duration::from_millis(1100));
        assert!(!front.validator(None)("AWS", &short), "expired");
        assert!(front.validator(None)("AWS", &password), "the first one still lives");
        front.set_ecr_expired(true);
        let (dead, expires) = password_of(&ecr_call(&front, "eu-west-1"));
        assert!(expires < unix_now() as f64 - 3000.0);
        assert!(!front.validator(None)("AWS", &dead));
        assert_eq!(front.ecr_calls(), 3);

        // Unsigned: refused before moto.
        let unsigned = post(&front, &[("X-Amz-Target", ECR_GET_AUTHORIZATION_TOKEN)], "{}");
        assert_eq!(unsigned.status, 403);
        assert!(String::from_utf8_lossy(&unsigned.body).contains("MissingAuthenticationTokenException"));
        assert_eq!(front.ecr_calls(), 3);
    }

    #[test]
    fn sts_refusals_are_sts_error_documents() {
        let (key, jwk) = es256_key();
        let front = Arc::new(front_with_provider(&jwk));
        let token = sign_es256(&key, "k1", &claims("system:serviceaccount:ns:intruder", STS_AUDIENCE, 600));
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", "AssumeRoleWithWebIdentity")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", ROLE)
            .append_pair("RoleSessionName", "regcred")
            .append_pair("WebIdentityToken", &token)
            .finish();
        let answer = post(&front, &[("Content-Type", "application/x-www-form-urlencoded")], &body);
        assert_eq!(answer.status, 403);
        assert_eq!(answer.header("content-type"), Some("text/xml"));
        let xml = String::from_utf8_lossy(&answer.body);
        assert_eq!(xml_text(&xml, "Code"), Some("AccessDenied"));
        assert_eq!(xml_text(&xml, "Type"), Some("Sender"));
        assert_eq!(xml_text(&xml, "Message"), Some("Not authorized to perform sts:AssumeRoleWithWebIdentity"));
        assert!(xml.starts_with("<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"));
        let calls = front.web_identity_calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].subject, "system:serviceaccount:ns:intruder");
        assert_eq!(calls[0].audiences, [STS_AUDIENCE]);
        assert_eq!(calls[0].error.as_deref(), Some("AccessDenied"));

        let missing = post(&front, &[], "Action=AssumeRoleWithWebIdentity&RoleArn=x&RoleSessionName=s");
        assert_eq!(missing.status, 400);
        assert_eq!(xml_text(&String::from_utf8_lossy(&missing.body), "Code"), Some("ValidationError"));
    }

    #[test]
    fn sts_answers_name_the_assumed_role_of_an_access_key() {
        let front = Front::new("127.0.0.1:9".into());
        let xml = "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
            <AccessKeyId>ASIAFRONT</AccessKeyId><SecretAccessKey>front-unit-secret-key</SecretAccessKey><SessionToken>front-unit-session-token</SessionToken>\
            </Credentials><AssumedRoleUser><AssumedRoleId>AROA:x</AssumedRoleId>\
            <Arn>arn:aws:sts::444444444444:assumed-role/web-pull/regcred</Arn></AssumedRoleUser>\
            </AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        let answer = Upstream { status: 200, reason: "OK".into(), headers: vec![], body: xml.as_bytes().to_vec() };
        front.note_credentials(&answer);
        assert_eq!(
            front.inner().principals.get("ASIAFRONT").map(String::as_str),
            Some("arn:aws:sts::444444444444:assumed-role/web-pull/regcred")
        );
        let token = EcrToken {
            account: "444444444444".into(),
            region: "us-east-1".into(),
            access_key_id: "ASIAFRONT".into(),
            principal_arn: Some("arn:aws:sts::444444444444:assumed-role/web-pull/regcred".into()),
            issued_at: SystemTime::now(),
            expires_at: SystemTime::now(),
        };
        assert_eq!(token.role_arn().as_deref(), Some(ROLE));
    }

    #[test]
    fn responses_are_parsed_chunked_or_not() {
        let raw =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nDate: d\r\n\r\n4\r\nabcd\r\n2;x=y\r\nef\r\n0\r\n\r\n";
        let r = parse_response(raw).unwrap();
        assert_eq!((r.status, r.body.as_slice(), r.header("DATE")), (200, &b"abcdef"[..], Some("d")));
        let again = String::from_utf8(r.to_bytes()).unwrap();
        assert_eq!(again, "HTTP/1.1 200 OK\r\nDate: d\r\nContent-Length: 6\r\nConnection: close\r\n\r\nabcdef");
        let r = parse_response(b"HTTP/1.0 404 NOT FOUND\r\nContent-Length: 2\r\n\r\nnoextra").unwrap();
        assert_eq!((r.status, r.reason.as_str(), r.body.as_slice()), (404, "NOT FOUND", &b"no"[..]));
        assert!(parse_response(b"garbage").is_err());
    }
}
