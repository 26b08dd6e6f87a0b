//! Bearer tokens: read from files at start, checked in constant time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderMap, header};
use base64::Engine;
use subtle::ConstantTimeEq;

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Query anything: graph, traces, SQL, the Prometheus and Jaeger APIs, status.
    Read,
    /// Write rows: OTLP, access-log and stats pushes, row ingest.
    Ingest,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Ingest => "ingest",
        }
    }
}

/// The shortest token accepted: 16 characters is about 96 bits from a base64 generator, the
/// least a secret on a network port should have.
pub const MIN_TOKEN_LEN: usize = 16;

/// Where tokens come from: files holding one token per line (blank lines and lines starting
/// with `#` are skipped). Tokens in `both` grant reads and ingest; `read` and `ingest` grant
/// one scope each.
#[derive(Debug, Clone, Default)]
pub struct TokenFiles {
    pub both: Option<PathBuf>,
    pub read: Option<PathBuf>,
    pub ingest: Option<PathBuf>,
}

impl TokenFiles {
    pub fn is_empty(&self) -> bool {
        self.both.is_none() && self.read.is_none() && self.ingest.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("token file {path} holds no token (one per line; `#` starts a comment)")]
    Empty { path: String },
    #[error(
        "token file {path}, line {line}: a token must be at least {MIN_TOKEN_LEN} characters (try `head -c 24 /dev/urandom | base64`)"
    )]
    Short { path: String, line: usize },
    #[error(
        "token file {path}, line {line}: a token may hold only visible ASCII characters without spaces"
    )]
    BadChar { path: String, line: usize },
    #[error("no token grants {0} requests: give --auth-token-file, or --{0}-token-file as well")]
    NoneFor(&'static str),
}

/// Reads one token file.
pub fn read_token_file(path: &Path) -> Result<Vec<Vec<u8>>, TokenFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenFileError::BadChar {
                path: shown,
                line: i + 1,
            });
        }
        if t.len() < MIN_TOKEN_LEN {
            return Err(TokenFileError::Short {
                path: shown,
                line: i + 1,
            });
        }
        tokens.push(t.as_bytes().to_vec());
    }
    if tokens.is_empty() {
        return Err(TokenFileError::Empty { path: shown });
    }
    Ok(tokens)
}

/// Who may call: either open (no tokens configured; loopback, or `--insecure-no-auth`) or a
/// set of tokens per scope. Cheap to clone.
#[derive(Clone, Default)]
pub struct Auth(Option<Arc<Tokens>>);

struct Tokens {
    read: Vec<Vec<u8>>,
    ingest: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Auth {
    // never prints a token
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Auth(open)"),
            Some(t) => write!(
                f,
                "Auth({} read tokens, {} ingest tokens)",
                t.read.len(),
                t.ingest.len()
            ),
        }
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization` header (or one of another scheme).
    Missing,
    /// A token no file holds.
    Invalid,
    /// A token that grants the other scope only.
    WrongScope(Scope),
}

impl Denied {
    pub fn message(self) -> String {
        match self {
            Denied::Missing => {
                "this meshscope requires a token: send `Authorization: Bearer <token>` \
                 (or Basic auth with the token as the password)"
                    .into()
            }
            Denied::Invalid => "the token is not valid".into(),
            Denied::WrongScope(s) => format!("the token does not grant {} requests", s.as_str()),
        }
    }
}

impl Auth {
    /// Accepts every request.
    pub fn open() -> Auth {
        Auth(None)
    }

    /// Tokens from `files`; open when no file is named. Every scope must end up with a
    /// token, or nobody could ever read (or ingest).
    pub fn from_files(files: &TokenFiles) -> Result<Auth, TokenFileError> {
        if files.is_empty() {
            return Ok(Auth::open());
        }
        let load = |p: &Option<PathBuf>| match p {
            Some(p) => read_token_file(p),
            None => Ok(Vec::new()),
        };
        let both = load(&files.both)?;
        let mut read = load(&files.read)?;
        let mut ingest = load(&files.ingest)?;
        read.extend(both.iter().cloned());
        ingest.extend(both);
        Auth::from_tokens(read, ingest)
    }

    /// Tokens given directly (tests, embedding).
    pub fn from_tokens(read: Vec<Vec<u8>>, ingest: Vec<Vec<u8>>) -> Result<Auth, TokenFileError> {
        if read.is_empty() {
            return Err(TokenFileError::NoneFor("read"));
        }
        if ingest.is_empty() {
            return Err(TokenFileError::NoneFor("ingest"));
        }
        Ok(Auth(Some(Arc::new(Tokens { read, ingest }))))
    }

    /// A token granting ingest, for an in-process client that sends through the listeners
    /// (`meshscope demo`); `None` when auth is off.
    pub fn ingest_token(&self) -> Option<String> {
        let t = self.0.as_ref()?.ingest.first()?;
        String::from_utf8(t.clone()).ok()
    }

    /// Whether requests need a token.
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Lets a request in when auth is off, or when its `Authorization` header carries a token
    /// granting `scope`: `Bearer <token>`, or `Basic` with the token as the password (the
    /// user name is ignored; with an empty password the user name is taken as the token).
    pub fn check(&self, headers: &HeaderMap, scope: Scope) -> Result<(), Denied> {
        let Some(tokens) = &self.0 else {
            return Ok(());
        };
        let presented = presented_token(headers).ok_or(Denied::Missing)?;
        let (wanted, other) = match scope {
            Scope::Read => (&tokens.read, &tokens.ingest),
            Scope::Ingest => (&tokens.ingest, &tokens.read),
        };
        if holds(wanted, &presented) {
            return Ok(());
        }
        if holds(other, &presented) {
            return Err(Denied::WrongScope(scope));
        }
        Err(Denied::Invalid)
    }
}

/// Whether `set` holds `t`, comparing every candidate in constant time.
fn holds(set: &[Vec<u8>], t: &[u8]) -> bool {
    let mut found = subtle::Choice::from(0);
    for c in set {
        found |= c.as_slice().ct_eq(t);
    }
    found.into()
}

/// The token an `Authorization` header carries, if any.
fn presented_token(headers: &HeaderMap) -> Option<Vec<u8>> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (user, pass) = text.split_once(':').unwrap_or((&text, ""));
        return Some(
            if pass.is_empty() { user } else { pass }
                .as_bytes()
                .to_vec(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const BOTH: &str = "both-0123456789abcdef";
    const READER: &str = "read-0123456789abcdef";
    const WRITER: &str = "ingest-0123456789abcdef";

    fn auth() -> Auth {
        Auth::from_tokens(
            vec![BOTH.into(), READER.into()],
            vec![BOTH.into(), WRITER.into()],
        )
        .unwrap()
    }

    fn with(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    fn basic(user: &str, pass: &str) -> HeaderMap {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        with(&format!("Basic {b}"))
    }

    #[test]
    fn bearer_and_basic_tokens_by_scope() {
        let a = auth();
        assert_eq!(
            a.check(&HeaderMap::new(), Scope::Read),
            Err(Denied::Missing)
        );
        assert_eq!(a.check(&with("Token x"), Scope::Read), Err(Denied::Missing));
        assert_eq!(
            a.check(&with(&format!("Bearer {BOTH}")), Scope::Read),
            Ok(())
        );
        assert_eq!(
            a.check(&with(&format!("bearer {BOTH}")), Scope::Ingest),
            Ok(())
        );
        assert_eq!(
            a.check(&with(&format!("Bearer {READER}")), Scope::Read),
            Ok(())
        );
        assert_eq!(
            a.check(&with(&format!("Bearer {READER}")), Scope::Ingest),
            Err(Denied::WrongScope(Scope::Ingest))
        );
        assert_eq!(
            a.check(&with(&format!("Bearer {WRITER}")), Scope::Read),
            Err(Denied::WrongScope(Scope::Read))
        );
        assert_eq!(
            a.check(&with("Bearer both-0123456789abcdeX"), Scope::Read),
            Err(Denied::Invalid)
        );
        // a prefix of a token is not the token
        assert_eq!(
            a.check(&with("Bearer both-0123456789abcde"), Scope::Read),
            Err(Denied::Invalid)
        );
        // Grafana's basic auth: any user, the token as the password
        assert_eq!(a.check(&basic("grafana", READER), Scope::Read), Ok(()));
        assert_eq!(a.check(&basic(READER, ""), Scope::Read), Ok(()));
        assert_eq!(
            a.check(&basic("grafana", "wrong-password-123"), Scope::Read),
            Err(Denied::Invalid)
        );
        assert_eq!(
            a.check(&with("Basic !!!"), Scope::Read),
            Err(Denied::Missing)
        );
        // open: everything passes
        assert_eq!(Auth::open().check(&HeaderMap::new(), Scope::Ingest), Ok(()));
        assert!(
            !format!("{a:?}").contains(BOTH),
            "Debug never prints a token"
        );
    }

    #[test]
    fn token_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            Some(p)
        };
        let files = TokenFiles {
            both: write("both", &format!("# operators\n\n  {BOTH}  \n")),
            read: write("read", READER),
            ingest: None,
        };
        let a = Auth::from_files(&files).unwrap();
        assert_eq!(
            a.check(&with(&format!("Bearer {READER}")), Scope::Read),
            Ok(())
        );
        assert_eq!(
            a.check(&with(&format!("Bearer {BOTH}")), Scope::Ingest),
            Ok(())
        );
        assert!(
            !Auth::from_files(&TokenFiles::default())
                .unwrap()
                .is_enabled()
        );

        let only_read = TokenFiles {
            read: write("r2", READER),
            ..Default::default()
        };
        let e = Auth::from_files(&only_read).unwrap_err().to_string();
        assert!(e.contains("no token grants ingest"), "{e}");
        for (text, want) in [
            ("# nothing\n\n", "holds no token"),
            ("short\n", "at least 16"),
            ("has a space in it 0123456789\n", "visible ASCII"),
        ] {
            let f = TokenFiles {
                both: write("bad", text),
                ..Default::default()
            };
            let e = Auth::from_files(&f).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let missing = TokenFiles {
            both: Some(dir.path().join("nope")),
            ..Default::default()
        };
        let e = Auth::from_files(&missing).unwrap_err().to_string();
        assert!(e.contains("reading token file"), "{e}");
    }
}
