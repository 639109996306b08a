//! File mode's credentials: a static tokens file, one
//! `token,namespace,serviceaccount` per line (as kube-apiserver's
//! `--token-auth-file`, with the service account's namespace and name
//! instead of a user), and the tokens `meshpeer certs token` makes.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SecureRandom;
use meshpeer_identity::SpiffeId;
use tracing::{info, warn};

use crate::authn::{AuthError, AuthFuture, Authenticator, CallInfo, Caller};

/// Bytes of randomness in a token (rendered as hex, 64 characters).
const TOKEN_BYTES: usize = 32;
/// Longest token line accepted.
const MAX_TOKEN_LEN: usize = 4096;

/// Why a tokens file cannot be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// Reading or writing failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What we tried.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `token,namespace,serviceaccount`.
    #[error("{}:{line}: {problem} (each line is token,namespace,serviceaccount)", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// The line number (from 1).
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// The namespace or service account does not make a SPIFFE ID.
    #[error("{namespace}/{service_account} cannot be an identity: {detail}")]
    Identity {
        /// The namespace given.
        namespace: String,
        /// The service account given.
        service_account: String,
        /// Why.
        detail: String,
    },
    /// The system's random generator failed.
    #[error("cannot make a random token")]
    Random,
}

/// Who a token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Account {
    namespace: String,
    service_account: String,
}

type Table = HashMap<[u8; 32], Account>;

/// What is loaded, and from which version of the file.
struct Loaded {
    modified: Option<SystemTime>,
    table: Table,
}

/// A static tokens file, read at start and again whenever it changes (so
/// `meshpeer certs token` can add callers to a running controller). Tokens
/// are kept as SHA-256 digests and looked up by digest.
pub struct StaticTokens {
    path: Option<PathBuf>,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticTokens")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn digest_of(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn check_account(namespace: &str, service_account: &str) -> Result<(), TokensError> {
    SpiffeId::new("check.invalid", namespace, service_account)
        .map(drop)
        .map_err(|e| TokensError::Identity {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            detail: e.to_string(),
        })
}

/// Parses a tokens file's text.
fn parse(path: &Path, text: &str) -> Result<Table, TokensError> {
    let mut table = Table::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let problem = |problem: String| TokensError::Line {
            path: path.to_owned(),
            line: n + 1,
            problem,
        };
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [token, namespace, service_account] = fields.as_slice() else {
            return Err(problem(format!("{} fields", fields.len())));
        };
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(problem("the token is empty or too long".to_owned()));
        }
        check_account(namespace, service_account).map_err(|e| problem(e.to_string()))?;
        let account = Account {
            namespace: (*namespace).to_owned(),
            service_account: (*service_account).to_owned(),
        };
        if table.insert(digest_of(token), account).is_some() {
            return Err(problem("the token is listed twice".to_owned()));
        }
    }
    Ok(table)
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl StaticTokens {
    /// Reads `path` (it must exist and be valid).
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let stamp = modified(path);
        let text = fs::read_to_string(path).map_err(|source| TokensError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
        let table = parse(path, &text)?;
        info!(file = %path.display(), tokens = table.len(), "tokens file loaded");
        Ok(StaticTokens {
            path: Some(path.to_owned()),
            loaded: Mutex::new(Loaded {
                modified: stamp,
                table,
            }),
        })
    }

    /// Tokens held in memory only, as `(token, namespace, service account)`
    /// (the demo makes its own).
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    ) -> Result<Self, TokensError> {
        let mut table = Table::new();
        for (token, namespace, service_account) in entries {
            check_account(namespace, service_account)?;
            table.insert(
                digest_of(token),
                Account {
                    namespace: namespace.to_owned(),
                    service_account: service_account.to_owned(),
                },
            );
        }
        Ok(StaticTokens {
            path: None,
            loaded: Mutex::new(Loaded {
                modified: None,
                table,
            }),
        })
    }

    fn describe(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "the tokens made by this process".to_owned(),
        }
    }

    /// Re-reads the file when it changed; a file that became unreadable or
    /// invalid keeps the last good tokens (and says so).
    fn refresh(&self) {
        let Some(path) = &self.path else { return };
        let stamp = modified(path);
        let Ok(mut loaded) = self.loaded.lock() else {
            return;
        };
        if stamp == loaded.modified {
            return;
        }
        loaded.modified = stamp;
        match fs::read_to_string(path)
            .map_err(|source| TokensError::Io {
                action: "read",
                path: path.clone(),
                source,
            })
            .and_then(|text| parse(path, &text))
        {
            Ok(table) => {
                info!(file = %path.display(), tokens = table.len(), "tokens file reloaded");
                loaded.table = table;
            }
            Err(e) => {
                warn!(error = %e, "tokens file changed but cannot be used; the previous tokens stay")
            }
        }
    }

    fn lookup(&self, token: &str) -> Option<Account> {
        self.refresh();
        let loaded = self.loaded.lock().ok()?;
        loaded.table.get(&digest_of(token)).cloned()
    }
}

impl Authenticator for StaticTokens {
    fn name(&self) -> &'static str {
        "tokens-file"
    }

    fn authenticate<'a>(&'a self, call: &'a CallInfo) -> AuthFuture<'a> {
        let result = match call.bearer.as_deref() {
            None => Err(AuthError::NoCredential),
            Some(token) => match self.lookup(token) {
                Some(a) => Ok(Caller {
                    namespace: a.namespace,
                    service_account: a.service_account,
                    pod: None,
                    by: self.name(),
                }),
                None => Err(AuthError::UnknownToken {
                    file: self.describe(),
                }),
            },
        };
        Box::pin(std::future::ready(result))
    }
}

/// A new token: 32 bytes from the system's CSPRNG, as 64 hex characters.
pub fn new_token() -> Result<String, TokensError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TokensError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Makes a token for `namespace/service_account`, appends it to the tokens
/// file `tokens` (created with mode 0600 if missing), and returns it.
pub fn add_token(
    tokens: &Path,
    namespace: &str,
    service_account: &str,
) -> Result<String, TokensError> {
    check_account(namespace, service_account)?;
    // The file must stay readable for the controller: check it parses now.
    if tokens.exists() {
        let text = fs::read_to_string(tokens).map_err(|source| TokensError::Io {
            action: "read",
            path: tokens.to_owned(),
            source,
        })?;
        parse(tokens, &text)?;
    }
    let token = new_token()?;
    let io = |action, source| TokensError::Io {
        action,
        path: tokens.to_owned(),
        source,
    };
    let mut file = secret_file(tokens, false).map_err(|e| io("open", e))?;
    writeln!(file, "{token},{namespace},{service_account}").map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("write", e))?;
    Ok(token)
}

/// Writes `token` into a new file `path` (mode 0600); refuses to overwrite.
pub fn write_token_file(path: &Path, token: &str) -> Result<(), TokensError> {
    let io = |action, source| TokensError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let mut file = secret_file(path, true).map_err(|e| io("create", e))?;
    write!(file, "{token}").map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("write", e))
}

/// Opens `path` for appending (or creates it new when `create_new`), mode 0600.
fn secret_file(path: &Path, create_new: bool) -> std::io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    if create_new {
        options.write(true).create_new(true);
    } else {
        options.append(true).create(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> CallInfo {
        CallInfo {
            bearer: Some(token.to_owned()),
            ..CallInfo::default()
        }
    }

    #[tokio::test]
    async fn p7_tokens_file_names_its_callers_and_reloads_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let proxy = add_token(&path, "istio-system", "meshpeer-proxy").unwrap();
        assert_eq!(proxy.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
            assert_eq!(mode.ok(), Some(0o600));
        }
        let tokens = StaticTokens::load(&path).unwrap();
        let caller = tokens.authenticate(&bearer(&proxy)).await.unwrap();
        assert_eq!(
            (caller.namespace.as_str(), caller.service_account.as_str()),
            ("istio-system", "meshpeer-proxy")
        );
        assert_eq!(
            tokens.authenticate(&CallInfo::default()).await,
            Err(AuthError::NoCredential)
        );
        assert!(matches!(
            tokens.authenticate(&bearer("nope")).await,
            Err(AuthError::UnknownToken { .. })
        ));

        // A token added later works without a restart.
        let gateway = add_token(&path, "istio-eastwest", "istio-eastwest").unwrap();
        // Make sure the modification time moves even on coarse clocks.
        let later = SystemTime::now() + std::time::Duration::from_secs(2);
        let f = fs::File::options().append(true).open(&path).unwrap();
        f.set_modified(later).unwrap();
        let caller = tokens.authenticate(&bearer(&gateway)).await.unwrap();
        assert_eq!(caller.service_account, "istio-eastwest");
    }

    #[test]
    fn p7_bad_tokens_files_say_which_line() {
        let path = Path::new("tokens");
        let cases = [
            ("abc,istio-system\n", "tokens:1: 2 fields"),
            (
                "# comment\n\nabc,ns,sa\nabc,ns,sa2\n",
                "tokens:4: the token is listed twice",
            ),
            (",ns,sa\n", "tokens:1: the token is empty"),
            ("abc,ns/x,sa\n", "tokens:1: ns/x/sa cannot be an identity"),
        ];
        for (text, want) in cases {
            let err = parse(path, text).map(drop).unwrap_err().to_string();
            assert!(err.starts_with(want), "{text:?}: {err}");
        }
        assert_eq!(
            parse(path, "# only a comment\n").map(|t| t.len()).ok(),
            Some(0)
        );
    }
}
