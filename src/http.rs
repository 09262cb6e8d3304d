//! The one HTTP/TLS set-up shared by registry verification and the providers
//! that speak HTTP themselves: reqwest on hyper 1 and rustls with the `ring`
//! provider (the same stack kube uses), the platform's trust roots, and an
//! optional PEM CA bundle for private CAs.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why a client could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// The CA bundle is not usable PEM.
    #[error("invalid CA bundle: {0}")]
    InvalidCaBundle(String),
    /// TLS could not be configured.
    #[error("TLS set-up failed: {0}")]
    Tls(String),
}

/// A rustls configuration trusting the platform's roots plus `ca_bundle`.
/// With `allow_no_roots`, a machine without CA certificates still gets a
/// configuration (fine for plain HTTP; TLS would then fail).
pub fn tls_config(ca_bundle: Option<&str>, allow_no_roots: bool) -> Result<rustls::ClientConfig, SetupError> {
    // rustls 0.23.48 deprecates its ring provider for lacking post-quantum key
    // exchange; regcred keeps ring, which kube, reqwest and the AWS SDK are
    // built with here too, rather than add aws-lc (docs/compatibility.md).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra = match ca_bundle {
        Some(pem) if !pem.trim().is_empty() => parse_ca_bundle(pem)?,
        _ => Vec::new(),
    };
    let has_extra = !extra.is_empty();
    let verifier = if has_extra {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
    } else {
        rustls_platform_verifier::Verifier::new(provider.clone())
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError::Tls(e.to_string()))?;
    let mut config = match verifier {
        Ok(verifier) => builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth(),
        Err(e) if has_extra => return Err(SetupError::InvalidCaBundle(e.to_string())),
        Err(_) if allow_no_roots => {
            builder.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth()
        }
        Err(e) => return Err(SetupError::Tls(format!("{e}; install CA certificates or set a caBundle"))),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn parse_ca_bundle(pem: &str) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SetupError::InvalidCaBundle(e.to_string()))?;
    if certs.is_empty() {
        return Err(SetupError::InvalidCaBundle("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// A client for provider APIs: the TLS set-up above, timeouts, no
/// redirects (credentials must not follow a redirect elsewhere).
pub fn client(ca_bundle: Option<&str>, timeout: Duration) -> Result<reqwest::Client, SetupError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(ca_bundle, true)?)
        .user_agent(concat!("regcred/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| SetupError::Tls(e.to_string()))
}

/// Default timeout of a provider API call.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(30);

/// The rustls error behind a reqwest error, if any. tokio-rustls wraps it in
/// an `io::Error` (which hyper-rustls wraps in another), and an `io::Error`'s
/// `source()` skips the error it wraps, so those are opened by hand.
pub fn find_rustls_error(e: &reqwest::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let wrapped = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        next = wrapped.or_else(|| err.source());
    }
    None
}

/// Largest response body read from a registry, its token service or a
/// provider API. Real answers are a few KiB.
pub const MAX_BODY: usize = 1024 * 1024;

/// Why a response body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection failed while reading.
    #[error("reading the response: {}", cause_chain(.0))]
    Read(#[source] reqwest::Error),
    /// More than [`MAX_BODY`] bytes: not an answer anyone can use.
    #[error("response larger than {MAX_BODY} bytes")]
    TooLarge,
}

/// The body of a response, at most [`MAX_BODY`] bytes.
pub async fn read_body(response: &mut reqwest::Response) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How long a throttling answer (HTTP 429 or 503) asked callers to wait:
/// its `Retry-After` in seconds (an HTTP date is ignored, the caller's own
/// backoff applies). Providers keep it in their error, and the pacing
/// ([`crate::pacing`]) makes every credential using the endpoint wait.
pub fn retry_after(status: u16, value: Option<&str>) -> Option<Duration> {
    match (status, value) {
        (429 | 503, Some(value)) => value.trim().parse::<u64>().ok().map(Duration::from_secs),
        _ => None,
    }
}

/// [`retry_after`] of a response.
pub fn response_retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok());
    retry_after(response.status().as_u16(), value)
}

/// An error and its sources, `: `-separated, each message once (a source
/// whose text is already there is skipped). reqwest and the SDKs keep the
/// useful part, such as "connection refused" or a certificate problem, in
/// the source chain.
pub fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(err) = next {
        let text = err.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = err.source();
    }
    out
}

/// The [`cause_chain`] under a reqwest transport error (whose own message
/// only repeats the URL), at most 300 characters. Transport errors never
/// contain request headers.
pub fn transport_cause(e: &reqwest::Error) -> String {
    let chain = match std::error::Error::source(e) {
        Some(source) => cause_chain(source),
        None => e.to_string(),
    };
    truncate(&chain, 300)
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Layer(&'static str, #[source] Option<Box<Layer>>);

    fn chain(parts: &[&'static str]) -> Layer {
        parts.iter().rev().fold(None, |inner, p| Some(Layer(p, inner.map(Box::new)))).unwrap()
    }

    #[test]
    fn retry_after_is_read_from_throttling_answers_only() {
        assert_eq!(retry_after(429, Some(" 3 ")), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(503, Some("10")), Some(Duration::from_secs(10)));
        assert_eq!(retry_after(429, Some("Wed, 21 Oct 2015 07:28:00 GMT")), None, "a date: own backoff");
        assert_eq!(retry_after(200, Some("3")), None);
        assert_eq!(retry_after(429, None), None);
    }

    #[test]
    fn cause_chains_join_each_message_once() {
        assert_eq!(cause_chain(&chain(&["a"])), "a");
        assert_eq!(cause_chain(&chain(&["sending", "connect", "refused"])), "sending: connect: refused");
        assert_eq!(cause_chain(&chain(&["io: refused", "refused", ""])), "io: refused");
    }
}
