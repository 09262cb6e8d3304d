//! Source value hygiene: the one place that decides whether a value read
//! from a source Secret (a username, a password or token, a cloud key, a
//! JSON document) can work, and how it is cleaned up first.
//!
//! Pure functions, no I/O. A [`Problem`] describes what is wrong with a
//! value without ever quoting it, so it can go into status, Events and logs.

use std::fmt;

/// What a value is used as; each kind has its own rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A login name presented in HTTP Basic authentication (a registry
    /// username, a Harbor account) or an identifier of the same shape (an
    /// Azure client id, an AWS access key id): no `:`, at most
    /// [`MAX_USERNAME_BYTES`].
    Username,
    /// A password, token or secret key: at most [`MAX_SECRET_BYTES`].
    Secret,
    /// A JSON document (`.dockerconfigjson`, a Google `credentials.json`):
    /// line breaks and tabs allowed, at most [`MAX_DOCUMENT_BYTES`].
    Document,
}

/// Longest username accepted. No registry issues longer login names
/// (Docker Hub 30, Harbor robots 255, ECR `AWS`, ACR a GUID).
pub const MAX_USERNAME_BYTES: usize = 1024;
/// Longest password or token accepted: room for JWTs, ECR tokens and a
/// Google JSON key used as a `_json_key` password, while a username plus a
/// password still fits in the 8 KiB request header most registries and
/// proxies accept (base64 makes 4/3 of it).
pub const MAX_SECRET_BYTES: usize = 4 * 1024;
/// Longest JSON document accepted (a docker config or a cloud key file).
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// Why a value cannot work. Never holds the value or any part of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Empty (or only line breaks).
    Empty,
    /// Longer than the kind allows.
    TooLong { bytes: usize, max: usize },
    /// Not valid UTF-8 text.
    NotUtf8,
    /// A NUL byte.
    Nul,
    /// A line break before the end (two lines where one is expected).
    LineBreak,
    /// Another control character.
    ControlCharacter,
    /// A `:` in a username.
    Colon,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Empty => write!(f, "is empty"),
            Problem::TooLong { bytes, max } => write!(f, "is {bytes} bytes long; at most {max} bytes are accepted"),
            Problem::NotUtf8 => write!(f, "is not UTF-8 text (binary data?)"),
            Problem::Nul => write!(f, "contains a NUL byte"),
            Problem::LineBreak => write!(f, "contains a line break before the end (more than one line)"),
            Problem::ControlCharacter => write!(f, "contains a control character"),
            Problem::Colon => {
                write!(f, "contains ':', which a registry takes as the end of the username, so the login cannot work")
            }
        }
    }
}

/// Cleans and checks one value read from a source Secret.
///
/// Trailing line breaks (`\n`, `\r\n`, any number) are stripped first, as
/// `docker login --password-stdin` does: a file saved by an editor and
/// loaded with `kubectl create secret --from-file` works. Nothing else is
/// changed; a value that cannot work as a login is refused with the
/// [`Problem`], checked in this order: empty, too long, not UTF-8, NUL,
/// line break, other control character, `:` in a username.
pub fn clean(raw: &[u8], kind: Kind) -> Result<String, Problem> {
    let end = raw.iter().rposition(|b| !matches!(b, b'\n' | b'\r')).map_or(0, |i| i + 1);
    let value = &raw[..end];
    if value.is_empty() {
        return Err(Problem::Empty);
    }
    let max = match kind {
        Kind::Username => MAX_USERNAME_BYTES,
        Kind::Secret => MAX_SECRET_BYTES,
        Kind::Document => MAX_DOCUMENT_BYTES,
    };
    if value.len() > max {
        return Err(Problem::TooLong { bytes: value.len(), max });
    }
    let text = std::str::from_utf8(value).map_err(|_| Problem::NotUtf8)?;
    let document = kind == Kind::Document;
    for c in text.chars() {
        match c {
            '\0' => return Err(Problem::Nul),
            '\n' | '\r' | '\t' if document => {}
            '\n' | '\r' => return Err(Problem::LineBreak),
            c if c.is_control() => return Err(Problem::ControlCharacter),
            ':' if kind == Kind::Username => return Err(Problem::Colon),
            _ => {}
        }
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_line_breaks_are_stripped_as_password_stdin_does() {
        assert_eq!(clean(b"s3cret\n", Kind::Secret).unwrap(), "s3cret");
        assert_eq!(clean(b"s3cret\r\n", Kind::Secret).unwrap(), "s3cret");
        assert_eq!(clean(b"bot\n\n", Kind::Username).unwrap(), "bot");
        assert_eq!(clean(b"  spaced pass ", Kind::Secret).unwrap(), "  spaced pass ", "spaces are kept");
        assert_eq!(clean(b"p:a:ss", Kind::Secret).unwrap(), "p:a:ss", "':' is fine in a password");
        assert_eq!(clean("ünïcode".as_bytes(), Kind::Username).unwrap(), "ünïcode");
    }

    #[test]
    fn empty_values_are_refused() {
        assert_eq!(clean(b"", Kind::Username), Err(Problem::Empty));
        assert_eq!(clean(b"\r\n", Kind::Secret), Err(Problem::Empty));
        assert_eq!(clean(b"\n", Kind::Document), Err(Problem::Empty));
    }

    #[test]
    fn a_colon_in_a_username_is_refused() {
        assert_eq!(clean(b"nl:user", Kind::Username), Err(Problem::Colon));
        assert_eq!(clean(b"nl:user", Kind::Document).unwrap(), "nl:user");
    }

    #[test]
    fn control_characters_and_nul_are_refused() {
        assert_eq!(clean(b"us\0er", Kind::Username), Err(Problem::Nul));
        assert_eq!(clean(b"pass\0", Kind::Secret), Err(Problem::Nul));
        assert_eq!(clean(b"line1\nline2", Kind::Secret), Err(Problem::LineBreak));
        assert_eq!(clean(b"line1\r\nline2\n", Kind::Secret), Err(Problem::LineBreak));
        assert_eq!(clean(b"tab\tbed", Kind::Secret), Err(Problem::ControlCharacter));
        assert_eq!(clean(b"esc\x1b[0m", Kind::Username), Err(Problem::ControlCharacter));
        assert_eq!(clean(b"del\x7f", Kind::Secret), Err(Problem::ControlCharacter));
        assert_eq!(clean("c1\u{85}".as_bytes(), Kind::Secret), Err(Problem::ControlCharacter));
        assert!(clean(b"{\n\t\"a\": 1\r\n}\n", Kind::Document).is_ok(), "JSON may span lines");
        assert_eq!(clean(b"{\"a\": \x01}", Kind::Document), Err(Problem::ControlCharacter));
        assert_eq!(clean(b"{}\0", Kind::Document), Err(Problem::Nul));
    }

    #[test]
    fn values_that_are_not_utf8_are_refused() {
        assert_eq!(clean(&[0xff, 0xfe, b'a'], Kind::Secret), Err(Problem::NotUtf8));
        assert_eq!(clean(&[b'u', 0xc3], Kind::Username), Err(Problem::NotUtf8));
    }

    #[test]
    fn sizes_are_bounded_per_kind() {
        let at = |n: usize| "a".repeat(n).into_bytes();
        assert!(clean(&at(MAX_USERNAME_BYTES), Kind::Username).is_ok());
        assert_eq!(
            clean(&at(MAX_USERNAME_BYTES + 1), Kind::Username),
            Err(Problem::TooLong { bytes: MAX_USERNAME_BYTES + 1, max: MAX_USERNAME_BYTES })
        );
        assert!(clean(&at(MAX_SECRET_BYTES), Kind::Secret).is_ok());
        assert!(matches!(clean(&at(MAX_SECRET_BYTES + 1), Kind::Secret), Err(Problem::TooLong { .. })));
        assert!(clean(&at(MAX_DOCUMENT_BYTES), Kind::Document).is_ok());
        assert!(matches!(clean(&at(MAX_DOCUMENT_BYTES + 1), Kind::Document), Err(Problem::TooLong { .. })));
        // The trailing newline does not count.
        let mut with_newline = at(MAX_USERNAME_BYTES);
        with_newline.push(b'\n');
        assert!(clean(&with_newline, Kind::Username).is_ok());
    }

    /// The case a hidden run found: 4 KiB of random bytes as both username
    /// and password went Ready=True.
    #[test]
    fn four_kib_of_random_bytes_are_refused_as_username_and_password() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let random: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        assert!(clean(&random, Kind::Username).is_err());
        assert!(clean(&random, Kind::Secret).is_err());
        // Even 4 KiB of printable text is too long for a username.
        assert!(matches!(clean(&[b'x'; 4096], Kind::Username), Err(Problem::TooLong { .. })));
    }

    #[test]
    fn problems_never_quote_the_value() {
        let value = b"hunter2-\0:\x01\xff";
        for kind in [Kind::Username, Kind::Secret, Kind::Document] {
            let problem = clean(value, kind).unwrap_err().to_string();
            assert!(!problem.contains("hunter2"), "{problem}");
        }
        for p in [Problem::Empty, Problem::TooLong { bytes: 5, max: 4 }, Problem::NotUtf8, Problem::Colon] {
            assert!(!p.to_string().is_empty());
        }
    }
}
