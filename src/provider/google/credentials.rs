//! The `credentials.json` of a source Secret: a service-account key (the
//! JWT-bearer grant) or an `external_account` configuration (workload
//! identity federation).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::jiff::Timestamp;
use reqwest::header::CONTENT_TYPE;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::SCOPE;
use super::client::{AccessToken, Call, DEFAULT_STS_URL, FORM, form};
use super::error::GoogleError;
use crate::provider::Sources;

const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime of the signed assertion (Google's maximum).
const ASSERTION_LIFETIME_SECS: i64 = 3600;

/// The credential JSON of a source Secret.
pub(super) enum Credentials {
    ServiceAccount(ServiceAccountKey),
    ExternalAccount(ExternalAccount),
}

impl Credentials {
    /// Parses the JSON. Errors name the field at fault, never a value.
    pub(super) fn parse(text: &str) -> Result<Credentials, String> {
        let json: Value = serde_json::from_str(text)
            .map_err(|e| format!("is not JSON (line {}, column {})", e.line(), e.column()))?;
        match json.get("type").and_then(Value::as_str) {
            Some("service_account") => ServiceAccountKey::parse(&json).map(Credentials::ServiceAccount),
            Some("external_account") => ExternalAccount::parse(&json).map(Credentials::ExternalAccount),
            Some(_) => Err("has a type other than service_account or external_account".into()),
            None => Err("has no field \"type\" (expected service_account or external_account)".into()),
        }
    }
}

fn string_field<'a>(json: &'a Value, field: &str) -> Result<Option<&'a str>, String> {
    match json.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(format!("has a field \"{field}\" that is not a string")),
    }
}

fn required_field<'a>(json: &'a Value, field: &str) -> Result<&'a str, String> {
    string_field(json, field)?.ok_or_else(|| format!("has no field \"{field}\""))
}

fn http_url(url: &str, field: &str) -> Result<String, String> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url.to_string())
    } else {
        Err(format!("has a field \"{field}\" that is not an http(s) URL"))
    }
}

/// A service-account key.
pub(super) struct ServiceAccountKey {
    pub(super) client_email: String,
    private_key_id: Option<String>,
    token_uri: String,
    key: RsaKeyPair,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl ServiceAccountKey {
    fn parse(json: &Value) -> Result<ServiceAccountKey, String> {
        let client_email = required_field(json, "client_email")?.to_string();
        let private_key_id = string_field(json, "private_key_id")?.map(str::to_string);
        let token_uri = http_url(string_field(json, "token_uri")?.unwrap_or(DEFAULT_TOKEN_URI), "token_uri")?;
        let pem = required_field(json, "private_key")?;
        let key = match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
            Ok(PrivateKeyDer::Pkcs8(der)) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            Ok(PrivateKeyDer::Pkcs1(der)) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            _ => return Err("has a private_key that is not a PEM RSA private key".into()),
        }
        .map_err(|_| "has a private_key that is not a usable RSA key (2048 to 8192 bits)".to_string())?;
        Ok(ServiceAccountKey { client_email, private_key_id, token_uri, key })
    }

    /// The signed assertion of the JWT-bearer grant (RFC 7523): `aud` is
    /// the token endpoint and `scope` is set, so the endpoint answers with an
    /// access token. (A self-signed JWT, which some libraries send to APIs
    /// directly, would have the API as `aud` and is never published here.)
    fn assertion(&self, now: i64) -> Result<SecretString, GoogleError> {
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.private_key_id {
            header["kid"] = kid.clone().into();
        }
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), signing_input.as_bytes(), &mut signature)
            .map_err(|_| GoogleError::Signing)?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)).into())
    }

    /// An access token through the JWT-bearer grant at `token_uri`.
    pub(super) async fn access_token(&self, http: &reqwest::Client) -> Result<AccessToken, GoogleError> {
        let assertion = self.assertion(Timestamp::now().as_second())?;
        let body = form(&[("grant_type", JWT_BEARER_GRANT), ("assertion", assertion.expose_secret())]);
        let call = Call { what: "service-account token request", url: &self.token_uri };
        let request = http.post(&self.token_uri).header(CONTENT_TYPE, FORM).body(body);
        let response = call.send(request, &[assertion.expose_secret()]).await?;
        call.oauth_token(&response)
    }
}

/// An `external_account` credential configuration (workload identity
/// federation), as `gcloud iam workload-identity-pools create-cred-config`
/// writes it.
pub(super) struct ExternalAccount {
    pub(super) audience: String,
    pub(super) subject_token_type: String,
    pub(super) token_url: String,
    pub(super) impersonation_url: Option<String>,
    pub(super) impersonation_lifetime_secs: Option<u64>,
    source: SubjectTokenSource,
}

enum SubjectTokenSource {
    File { path: String, json_field: Option<String> },
    Url { url: String, headers: Vec<(String, String)>, json_field: Option<String> },
}

impl ExternalAccount {
    fn parse(json: &Value) -> Result<ExternalAccount, String> {
        let audience = required_field(json, "audience")?.to_string();
        let subject_token_type = required_field(json, "subject_token_type")?.to_string();
        let token_url = http_url(string_field(json, "token_url")?.unwrap_or(DEFAULT_STS_URL), "token_url")?;
        let impersonation_url = string_field(json, "service_account_impersonation_url")?
            .map(|u| http_url(u, "service_account_impersonation_url"))
            .transpose()?;
        let impersonation_lifetime_secs = json
            .get("service_account_impersonation")
            .and_then(|i| i.get("token_lifetime_seconds"))
            .and_then(Value::as_u64)
            .filter(|s| *s > 0);
        let source = json.get("credential_source").ok_or("has no field \"credential_source\"")?;
        let json_field = match source.get("format") {
            None | Some(Value::Null) => None,
            Some(format) => match string_field(format, "type")? {
                None | Some("text") => None,
                Some("json") => Some(required_field(format, "subject_token_field_name")?.to_string()),
                Some(_) => return Err("has a credential_source.format.type other than text or json".into()),
            },
        };
        let source = if let Some(path) = string_field(source, "file")? {
            SubjectTokenSource::File { path: path.to_string(), json_field }
        } else if let Some(url) = string_field(source, "url")? {
            let headers = match source.get("headers") {
                Some(Value::Object(map)) => map
                    .iter()
                    .map(|(k, v)| match v {
                        Value::String(v) => Ok((k.clone(), v.clone())),
                        _ => Err("has a credential_source.headers value that is not a string".to_string()),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                None | Some(Value::Null) => Vec::new(),
                Some(_) => return Err("has a credential_source.headers that is not an object".into()),
            };
            SubjectTokenSource::Url { url: http_url(url, "credential_source.url")?, headers, json_field }
        } else if source.get("executable").is_some() {
            return Err("has an executable credential_source, which regcred does not run: \
                 use auth.serviceAccountRef for a Kubernetes ServiceAccount token, or a file source"
                .into());
        } else if source.get("environment_id").is_some() {
            return Err("has an AWS credential_source, which regcred does not support: \
                 use auth.serviceAccountRef for a Kubernetes ServiceAccount token, or a file source"
                .into());
        } else {
            return Err("has a credential_source without file or url".into());
        };
        Ok(ExternalAccount {
            audience,
            subject_token_type,
            token_url,
            impersonation_url,
            impersonation_lifetime_secs,
            source,
        })
    }

    /// The subject token. File and URL sources are the operator's own
    /// environment (its files, its network position), so they count as
    /// ambient identity.
    pub(super) async fn subject_token(
        &self,
        sources: &Sources,
        http: &reqwest::Client,
    ) -> Result<SecretString, GoogleError> {
        let (text, json_field) = match &self.source {
            SubjectTokenSource::File { path, json_field } => {
                sources.check_ambient("an external_account credential_source file (a file of the operator)")?;
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|source| GoogleError::SubjectTokenFile { path: path.clone(), source })?;
                (SecretString::from(text), json_field)
            }
            SubjectTokenSource::Url { url, headers, json_field } => {
                sources.check_ambient("an external_account credential_source url (fetched by the operator)")?;
                let call = Call { what: "external_account subject token request", url };
                let mut request = http.get(url);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                let body = call.send(request, &[]).await?;
                (SecretString::from(String::from_utf8_lossy(&body).into_owned()), json_field)
            }
        };
        let token = match json_field {
            None => text.expose_secret().trim().to_string(),
            Some(field) => serde_json::from_str::<Value>(text.expose_secret())
                .ok()
                .and_then(|v| v.get(field).and_then(Value::as_str).map(str::to_string))
                .ok_or_else(|| GoogleError::SubjectTokenField(field.clone()))?,
        };
        if token.is_empty() {
            return Err(GoogleError::EmptySubjectToken);
        }
        Ok(token.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(json: Value) -> String {
        match Credentials::parse(&json.to_string()) {
            Err(e) => e,
            Ok(_) => panic!("{json} was accepted"),
        }
    }

    #[test]
    fn credential_json_errors_name_the_field_never_the_value() {
        assert!(Credentials::parse("{not json").err().expect("rejected").contains("is not JSON (line 1"));
        assert!(parse_err(json!({"private_key": "s3cret-value"})).contains("no field \"type\""));
        assert!(parse_err(json!({"type": "authorized_user", "refresh_token": "s3cret-value"})).contains("type other"));
        let e = parse_err(json!({"type": "service_account", "private_key": "s3cret-value"}));
        assert!(e.contains("client_email"), "{e}");
        let e = parse_err(json!({"type": "service_account", "client_email": "a@b.c", "private_key": "s3cret-value"}));
        assert!(e.contains("not a PEM RSA private key") && !e.contains("s3cret"), "{e}");
        let e = parse_err(json!({"type": "service_account", "client_email": "a@b.c", "private_key": 12345678}));
        assert!(e.contains("\"private_key\" that is not a string") && !e.contains("12345678"), "{e}");
        let e = parse_err(json!({
            "type": "service_account", "client_email": "a@b.c", "token_uri": "file:///etc/passwd",
            "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        }));
        assert!(e.contains("token_uri"), "{e}");
    }

    #[test]
    fn external_account_sources() {
        let base = json!({
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k8s",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": "https://sts.googleapis.com/v1/token",
        });
        let with_source = |source: Value| {
            let mut j = base.clone();
            j["credential_source"] = source;
            j
        };
        let Credentials::ExternalAccount(ea) =
            Credentials::parse(&with_source(json!({"file": "/var/run/token"})).to_string()).unwrap()
        else {
            panic!("not an external account")
        };
        assert!(matches!(&ea.source, SubjectTokenSource::File { path, json_field: None } if path == "/var/run/token"));
        let Credentials::ExternalAccount(ea) = Credentials::parse(
            &with_source(json!({
                "url": "http://169.254.169.254/token", "headers": {"Metadata": "True"},
                "format": {"type": "json", "subject_token_field_name": "access_token"}
            }))
            .to_string(),
        )
        .unwrap() else {
            panic!("not an external account")
        };
        assert!(
            matches!(&ea.source, SubjectTokenSource::Url { headers, json_field: Some(f), .. } if f == "access_token" && headers.len() == 1)
        );
        assert!(parse_err(with_source(json!({"executable": {"command": "/bin/sh"}}))).contains("does not run"));
        assert!(parse_err(with_source(json!({"environment_id": "aws1"}))).contains("AWS"));
        assert!(parse_err(base.clone()).contains("credential_source"));
    }

    #[test]
    fn the_assertion_is_an_rs256_jwt_bearer_grant_signed_by_the_key() {
        let key = regcred_testenv::google_standin::generate_key(
            "signer@proj.iam.gserviceaccount.com",
            "https://oauth2.example.com/token",
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let Credentials::ServiceAccount(sa) = Credentials::parse(&key.json).unwrap() else {
            panic!("not a service-account key")
        };
        let debug = format!("{sa:?}");
        assert!(!debug.contains("PRIVATE KEY") && debug.contains("signer@proj"), "{debug}");
        let now = Timestamp::now().as_second();
        let jwt = sa.assertion(now).unwrap();
        let claims = regcred_testenv::google_standin::verify_rs256(jwt.expose_secret(), &key.public_key_der)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(claims["iss"], "signer@proj.iam.gserviceaccount.com");
        assert_eq!(claims["aud"], "https://oauth2.example.com/token");
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["iat"], now);
        assert_eq!(claims["exp"], now + 3600);
    }
}
