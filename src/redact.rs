//! Keeping secret values out of messages: the one place that removes known
//! secrets (passwords, tokens, keys) from text that came from elsewhere
//! (remote error descriptions, SDK messages) before it reaches an error
//! message, a log line or a status condition.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// What a removed secret is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Secrets shorter than this are not replaced: replacing every `ab` in a
/// message would mangle it without protecting anything.
const MIN_SECRET_LEN: usize = 4;

/// The secret values a message must never show.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<SecretString>,
}

impl Redactor {
    /// A redactor for the given secrets.
    pub fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Self {
        let mut r = Redactor::default();
        for s in secrets {
            r.add(s.as_ref());
        }
        r
    }

    /// Adds a secret value.
    pub fn add(&mut self, secret: &str) {
        if secret.len() >= MIN_SECRET_LEN {
            self.secrets.push(secret.to_string().into());
        }
    }

    /// `text` with every known secret replaced by [`REDACTED`].
    pub fn clean(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            out = out.replace(s.expose_secret(), REDACTED);
        }
        out
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor(<{} secrets>)", self.secrets.len())
    }
}

/// The cause of an error, as text with the known secrets removed: for
/// errors from libraries whose messages may quote what was sent (so the
/// original error is not kept). Its `Display` is the original cause chain.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct Scrubbed(String);

impl Scrubbed {
    /// The cause chain of `error` ([`crate::http::cause_chain`]), cleaned.
    pub fn new(error: &dyn std::error::Error, redactor: &Redactor) -> Self {
        Scrubbed(redactor.clean(&crate::http::cause_chain(error)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_secrets_are_replaced_short_ones_ignored() {
        let r = Redactor::new(["AKIASECRETVALUE", "abc", "hunter22"]);
        assert_eq!(r.clean("bad key AKIASECRETVALUE here"), "bad key <redacted> here");
        assert_eq!(r.clean("abc hunter22 hunter22"), "abc <redacted> <redacted>");
        assert_eq!(Redactor::default().clean("x"), "x");
        let debug = format!("{r:?}");
        assert!(!debug.contains("AKIA") && debug.contains("2 secrets"), "{debug}");
        let e = std::io::Error::other("token hunter22 refused");
        assert_eq!(Scrubbed::new(&e, &r).to_string(), "token <redacted> refused");
    }
}
