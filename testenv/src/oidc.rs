//! OpenID Connect pieces the cloud stand-ins share: the control plane's
//! ServiceAccount token issuer (its discovery document and JWK Set, read as
//! an operator would before registering the cluster with a cloud), JWT
//! splitting, JWK signature checks, and a signer for JWTs a test makes
//! itself (a token of another key or another issuer).
//!
//! Only the keys kube-apiserver and the clouds' uploads have in common are
//! handled: RSA (RS256) and EC P-256 (ES256).

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{
    self, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents, UnparsedPublicKey,
};
use serde_json::{Value, json};

use crate::ControlPlane;

/// The control plane's ServiceAccount token issuer, as its discovery
/// document names it, and the JWK Set it publishes.
#[derive(Clone, Debug)]
pub struct ClusterOidc {
    /// `issuer` of `/.well-known/openid-configuration`: the `iss` of every
    /// ServiceAccount token.
    pub issuer: String,
    /// The JWK Set at the discovery document's `jwks_uri`.
    pub jwks: Value,
}

/// Reads the control plane's OIDC discovery document and JWK Set as admin
/// (kube-apiserver serves them to authenticated callers), as
/// `kubectl get --raw /.well-known/openid-configuration` and
/// `kubectl get --raw /openid/v1/jwks` do in Google's "Configure Workload
/// Identity Federation with Kubernetes"
/// (https://cloud.google.com/iam/docs/workload-identity-federation-with-kubernetes).
/// Safe to call from inside an async runtime: it runs on a thread of its own.
pub fn fetch_cluster_oidc(cp: &ControlPlane) -> Result<ClusterOidc> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<ClusterOidc> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let client = cp.client().await?;
                let get = |path: &str| http::Request::get(path).body(Vec::new());
                let discovery: Value = serde_json::from_str(
                    &client
                        .request_text(get("/.well-known/openid-configuration")?)
                        .await
                        .context("reading the apiserver's OIDC discovery document")?,
                )?;
                let issuer = discovery
                    .get("issuer")
                    .and_then(Value::as_str)
                    .context("the apiserver's discovery document has no issuer")?
                    .to_string();
                // The keys at the path of `jwks_uri`, on the apiserver the
                // test reaches (the URI's host is the advertised address).
                let path = discovery
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .and_then(|u| u.strip_prefix("https://"))
                    .and_then(|u| u.find('/').map(|i| u[i..].to_string()))
                    .unwrap_or_else(|| "/openid/v1/jwks".to_string());
                let jwks: Value = serde_json::from_str(
                    &client.request_text(get(&path)?).await.context("reading the apiserver's JWK Set")?,
                )?;
                Ok(ClusterOidc { issuer, jwks })
            })
        })
        .join()
        .map_err(|_| anyhow!("reading the OIDC documents panicked"))?
    })
}

/// A compact JWS split into its parts, nothing verified.
pub struct SplitJwt {
    pub header: Value,
    pub claims: Value,
    /// `base64url(header).base64url(claims)`, what the signature covers.
    pub signing_input: String,
    pub signature: Vec<u8>,
}

/// Splits a compact JWS; `None` when it is not three base64url parts whose
/// first two are JSON objects.
pub fn split_jwt(token: &str) -> Option<SplitJwt> {
    let mut parts = token.trim().split('.');
    let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    if !header.is_object() || !claims.is_object() {
        return None;
    }
    Some(SplitJwt { header, claims, signing_input: format!("{h}.{c}"), signature: URL_SAFE_NO_PAD.decode(s).ok()? })
}

/// A public signing key of a JWK Set.
#[derive(Clone, Debug)]
pub struct Jwk {
    pub kid: Option<String>,
    material: Material,
}

#[derive(Clone, Debug)]
enum Material {
    /// Big-endian modulus and exponent.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The uncompressed P-256 point `04 || x || y`.
    P256 { point: Vec<u8> },
}

impl Jwk {
    /// Whether `signature` over `message` verifies with this key under
    /// `alg` (RS256 for an RSA key, ES256 for a P-256 key; anything else
    /// does not verify).
    pub fn verifies(&self, alg: &str, message: &[u8], signature: &[u8]) -> bool {
        match (&self.material, alg) {
            (Material::Rsa { n, e }, "RS256") => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            (Material::P256 { point }, "ES256") => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(message, signature).is_ok()
            }
            _ => false,
        }
    }
}

/// The keys of a JWK Set (RFC 7517). Keys marked for another `use` than
/// `sig` are skipped; a key that is neither RSA nor EC P-256, or whose
/// fields do not decode, is an error naming it (clouds refuse such an
/// upload rather than ignore the key).
pub fn parse_jwks(jwks: &Value) -> Result<Vec<Jwk>> {
    let keys = jwks.get("keys").and_then(Value::as_array).context("a JWK Set has a `keys` array")?;
    let b64 = |k: &Value, field: &str| -> Option<Vec<u8>> { URL_SAFE_NO_PAD.decode(k.get(field)?.as_str()?).ok() };
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        if k.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
            continue;
        }
        let kid = k.get("kid").and_then(Value::as_str).map(str::to_string);
        let name = || format!("key {i} (kid {})", kid.as_deref().unwrap_or("none"));
        let material = match (k.get("kty").and_then(Value::as_str), k.get("crv").and_then(Value::as_str)) {
            (Some("RSA"), _) => match (b64(k, "n"), b64(k, "e")) {
                (Some(n), Some(e)) => Material::Rsa { n, e },
                _ => bail!("{}: an RSA key needs base64url `n` and `e`", name()),
            },
            (Some("EC"), Some("P-256")) => match (b64(k, "x"), b64(k, "y")) {
                (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                    let mut point = vec![4u8];
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    Material::P256 { point }
                }
                _ => bail!("{}: a P-256 key needs 32-byte base64url `x` and `y`", name()),
            },
            (kty, crv) => bail!("{}: kty {kty:?} crv {crv:?} is neither RSA nor EC P-256", name()),
        };
        out.push(Jwk { kid, material });
    }
    Ok(out)
}

/// A private key that signs JWTs, with the `kid` its tokens carry: a test's
/// own issuer, or a key that is not the one a relying party expects.
pub struct JwtSigner {
    key: SignerKey,
    kid: Option<String>,
    rng: SystemRandom,
}

enum SignerKey {
    Rsa(RsaKeyPair),
    P256(EcdsaKeyPair),
}

impl JwtSigner {
    /// A fresh EC P-256 key (ES256).
    pub fn generate_es256(kid: Option<&str>) -> Result<JwtSigner> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow!("generating a P-256 key failed"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow!("the generated P-256 key does not load: {e}"))?;
        Ok(JwtSigner { key: SignerKey::P256(key), kid: kid.map(str::to_string), rng })
    }

    /// A fresh 2048-bit RSA key (RS256), made by `openssl` (`ring` cannot
    /// generate RSA keys); its absence fails with how to install it.
    pub fn generate_rs256(kid: Option<&str>) -> Result<JwtSigner> {
        let openssl = crate::registry::require_tool("openssl", "openssl")?;
        let out = std::process::Command::new(openssl)
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
            .output()
            .context("running openssl genpkey")?;
        if !out.status.success() {
            bail!("openssl genpkey failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        JwtSigner::from_pkcs8_pem(&String::from_utf8(out.stdout).context("openssl wrote no text")?, kid)
    }

    /// An unencrypted PKCS#8 PEM key (`BEGIN PRIVATE KEY`), EC P-256 or RSA:
    /// e.g. the control plane's ServiceAccount signing key, to sign a token
    /// its issuer never issued.
    pub fn from_pkcs8_pem(pem: &str, kid: Option<&str>) -> Result<JwtSigner> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = STANDARD.decode(body.trim()).context("the PEM body is not base64")?;
        let rng = SystemRandom::new();
        let key = if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng) {
            SignerKey::P256(k)
        } else {
            SignerKey::Rsa(RsaKeyPair::from_pkcs8(&der).map_err(|e| anyhow!("neither a P-256 nor an RSA key: {e}"))?)
        };
        Ok(JwtSigner { key, kid: kid.map(str::to_string), rng })
    }

    /// `RS256` or `ES256`.
    pub fn alg(&self) -> &'static str {
        match self.key {
            SignerKey::Rsa(_) => "RS256",
            SignerKey::P256(_) => "ES256",
        }
    }

    /// A compact JWS of `claims` with header `{"alg", "kid"?, "typ": "JWT"}`.
    pub fn sign(&self, claims: &Value) -> Result<String> {
        let mut header = json!({"alg": self.alg(), "typ": "JWT"});
        if let Some(kid) = &self.kid {
            header["kid"] = json!(kid);
        }
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?)
        );
        let signature = match &self.key {
            SignerKey::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &self.rng, input.as_bytes(), &mut sig)
                    .map_err(|_| anyhow!("RS256 signing failed"))?;
                sig
            }
            SignerKey::P256(k) => {
                k.sign(&self.rng, input.as_bytes()).map_err(|_| anyhow!("ES256 signing failed"))?.as_ref().to_vec()
            }
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// The public key as a JWK Set of one key, as an issuer publishes it.
    pub fn jwks(&self) -> Value {
        let mut jwk = match &self.key {
            SignerKey::Rsa(k) => {
                let public: RsaPublicKeyComponents<Vec<u8>> = k.public().into();
                json!({"kty": "RSA", "alg": "RS256", "use": "sig",
                    "n": URL_SAFE_NO_PAD.encode(&public.n), "e": URL_SAFE_NO_PAD.encode(&public.e)})
            }
            SignerKey::P256(k) => {
                let point = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
            }
        };
        if let Some(kid) = &self.kid {
            jwk["kid"] = json!(kid);
        }
        json!({"keys": [jwk]})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_verify_only_with_their_own_key_and_algorithm() {
        let es = JwtSigner::generate_es256(Some("e1")).unwrap();
        let other = JwtSigner::generate_es256(Some("e1")).unwrap();
        let token = es.sign(&json!({"sub": "s"})).unwrap();
        let jwt = split_jwt(&token).unwrap();
        assert_eq!(jwt.header["alg"], "ES256");
        assert_eq!(jwt.header["kid"], "e1");
        assert_eq!(jwt.claims["sub"], "s");
        let mine = parse_jwks(&es.jwks()).unwrap();
        let theirs = parse_jwks(&other.jwks()).unwrap();
        assert!(mine[0].verifies("ES256", jwt.signing_input.as_bytes(), &jwt.signature));
        assert!(!theirs[0].verifies("ES256", jwt.signing_input.as_bytes(), &jwt.signature));
        assert!(!mine[0].verifies("RS256", jwt.signing_input.as_bytes(), &jwt.signature));

        let rs = JwtSigner::generate_rs256(None).unwrap();
        let token = rs.sign(&json!({"sub": "r"})).unwrap();
        let jwt = split_jwt(&token).unwrap();
        assert!(jwt.header.get("kid").is_none());
        let keys = parse_jwks(&rs.jwks()).unwrap();
        assert!(keys[0].verifies("RS256", jwt.signing_input.as_bytes(), &jwt.signature));
        assert!(!keys[0].verifies("ES256", jwt.signing_input.as_bytes(), &jwt.signature));
        assert!(!mine[0].verifies("RS256", jwt.signing_input.as_bytes(), &jwt.signature));

        assert!(split_jwt("a.b").is_none());
        assert!(split_jwt("not-a-jwt").is_none());
    }

    #[test]
    fn key_sets_with_keys_of_other_types_are_refused() {
        let p384 = json!({"keys": [{"kty": "EC", "crv": "P-384", "kid": "k", "x": "AA", "y": "AA"}]});
        assert!(format!("{:#}", parse_jwks(&p384).unwrap_err()).contains("neither RSA nor EC P-256"));
        let okp = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA"}]});
        assert!(parse_jwks(&okp).is_err());
        let enc = json!({"keys": [{"kty": "OKP", "use": "enc"}]});
        assert!(parse_jwks(&enc).unwrap().is_empty());
        assert!(parse_jwks(&json!({})).is_err());
    }
}
