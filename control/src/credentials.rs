//! Access keys: the AWS shared-credentials INI format, one profile per key,
//! so a profile can be pasted into `~/.aws/credentials` as it is.
//!
//! ```ini
//! [operator]
//! aws_access_key_id = AKIA…
//! aws_secret_access_key = …
//! role = operator            # every operation
//! [my-ecs-cluster-instances]
//! aws_access_key_id = AKIA…
//! aws_secret_access_key = …
//! role = instance            # register, poll, report for its own instance
//! clusters = my-ecs-cluster
//! ```
//!
//! These are the article's two IAM roles: `operator` is ecs-service-role
//! (and the console user), `instance` is ecs-instance-role. The file is
//! read again when it changes, so `dockhand control credentials new` takes
//! effect without a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// What a key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Every operation.
    Operator,
    /// The agent's operations, for instances of these clusters only.
    Instance { clusters: Vec<String> },
}

/// One access key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub profile: String,
    pub access_key_id: String,
    pub secret: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {why}")]
    Invalid {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Parses the file's text. Every profile needs a key id, a secret and a
/// role; `clusters` is required for instance keys.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Key>, CredentialsError> {
    let invalid = |line: usize, why: String| CredentialsError::Invalid {
        path: path.to_path_buf(),
        line,
        why,
    };
    // profile -> (line of its header, key -> value)
    let mut profiles: Vec<(String, usize, BTreeMap<String, String>)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| invalid(line_no, "expected [profile]".into()))?
                .trim();
            if name.is_empty() {
                return Err(invalid(line_no, "empty profile name".into()));
            }
            if profiles.iter().any(|p| p.0 == name) {
                return Err(invalid(line_no, format!("profile [{name}] appears twice")));
            }
            profiles.push((name.to_string(), line_no, BTreeMap::new()));
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(invalid(
                line_no,
                format!("expected key = value, got {line:?}"),
            ));
        };
        let Some(profile) = profiles.last_mut() else {
            return Err(invalid(line_no, "a setting before any [profile]".into()));
        };
        profile
            .2
            .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let mut keys = Vec::new();
    for (profile, line, mut kv) in profiles {
        let mut take = |k: &str| {
            kv.remove(k)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| invalid(line, format!("profile [{profile}] has no {k}")))
        };
        let access_key_id = take("aws_access_key_id")?;
        let secret = take("aws_secret_access_key")?;
        let role = match take("role")?.as_str() {
            "operator" => Role::Operator,
            "instance" => {
                let clusters: Vec<String> = take("clusters")?
                    .split(',')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect();
                Role::Instance { clusters }
            }
            other => {
                return Err(invalid(
                    line,
                    format!(
                        "profile [{profile}]: role must be operator or instance, got {other:?}"
                    ),
                ))
            }
        };
        if keys.iter().any(|k: &Key| k.access_key_id == access_key_id) {
            return Err(invalid(
                line,
                format!("profile [{profile}]: access key id {access_key_id} is used twice"),
            ));
        }
        keys.push(Key {
            profile,
            access_key_id,
            secret,
            role,
        });
    }
    Ok(keys)
}

/// Strips a `#` or `;` comment that starts a line or follows whitespace.
fn strip_comment(line: &str) -> &str {
    let t = line.trim_start();
    if t.starts_with('#') || t.starts_with(';') {
        return "";
    }
    let bytes = line.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if (*b == b'#' || *b == b';') && i > 0 && bytes[i - 1].is_ascii_whitespace() {
            return &line[..i];
        }
    }
    line
}

/// The keys, read again from the file when it changes.
/// The keys, and the modification time of the file they were read from.
type Loaded = (Option<SystemTime>, Arc<Vec<Key>>);

#[derive(Clone)]
pub struct Credentials {
    path: PathBuf,
    state: Arc<RwLock<Loaded>>,
}

impl Credentials {
    /// Reads the file; a missing file is no keys (every request is then
    /// refused as unknown), an invalid one is an error.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let c = Credentials {
            path: path.to_path_buf(),
            state: Arc::new(RwLock::new((None, Arc::new(Vec::new())))),
        };
        c.reload()?;
        Ok(c)
    }

    fn reload(&self) -> Result<(), CredentialsError> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let keys = match std::fs::read_to_string(&self.path) {
            Ok(text) => parse(&self.path, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(CredentialsError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = (mtime, Arc::new(keys));
        Ok(())
    }

    /// The key with this id, reading the file again if it changed. A file
    /// that became invalid keeps the keys read before (and says so).
    pub fn find(&self, access_key_id: &str) -> Option<Key> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let stale = self.state.read().unwrap_or_else(|p| p.into_inner()).0 != mtime;
        if stale {
            if let Err(e) = self.reload() {
                tracing::error!(cause = %e, "credentials file is invalid; keeping the keys read before");
                // Do not retry on every request until it changes again.
                self.state.write().unwrap_or_else(|p| p.into_inner()).0 = mtime;
            }
        }
        let keys = Arc::clone(&self.state.read().unwrap_or_else(|p| p.into_inner()).1);
        keys.iter()
            .find(|k| k.access_key_id == access_key_id)
            .cloned()
    }
}

/// `n` random bytes from the kernel.
fn random(n: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// A fresh key: an id shaped like AWS's (`AKIA` and 16 of A-Z2-7) and a
/// 40-character secret.
pub fn generate() -> std::io::Result<(String, String)> {
    const ID_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let id: String = random(16)?
        .iter()
        .map(|b| char::from(ID_CHARS[usize::from(*b) % ID_CHARS.len()]))
        .collect();
    let secret: String = random(40)?
        .iter()
        .map(|b| char::from(SECRET_CHARS[usize::from(*b) % SECRET_CHARS.len()]))
        .collect();
    Ok((format!("AKIA{id}"), secret))
}

/// Appends a new profile to the file (created with mode 0600 if absent)
/// and returns its text.
pub fn append_new(path: &Path, profile: &str, role: &Role) -> Result<String, CredentialsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let write_err = |source| CredentialsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => parse(path, &t)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(CredentialsError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if existing.iter().any(|k| k.profile == profile) {
        return Err(CredentialsError::Invalid {
            path: path.to_path_buf(),
            line: 0,
            why: format!("profile [{profile}] exists already"),
        });
    }
    let (id, secret) = generate().map_err(write_err)?;
    let mut text =
        format!("[{profile}]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n");
    match role {
        Role::Operator => text.push_str("role = operator\n"),
        Role::Instance { clusters } => text.push_str(&format!(
            "role = instance\nclusters = {}\n",
            clusters.join(",")
        )),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err)?;
    f.write_all(text.as_bytes()).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN: &str = "[operator]\naws_access_key_id = AKIAOPERATOR\naws_secret_access_key = s1\nrole = operator            # every operation\n[my-ecs-cluster-instances]\naws_access_key_id = AKIAINSTANCE\naws_secret_access_key = s2\nrole = instance            # register, poll, report for its own instance only\nclusters = my-ecs-cluster\n";

    #[test]
    fn the_designs_example_parses() {
        let keys = parse(Path::new("/c"), DESIGN).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].role, Role::Operator);
        assert_eq!(
            keys[1].role,
            Role::Instance {
                clusters: vec!["my-ecs-cluster".into()]
            }
        );
        assert_eq!(keys[1].secret, "s2");
    }

    #[test]
    fn bad_files_name_the_line() {
        for (text, want) in [
            ("x = 1\n", "/c:1: a setting before any [profile]"),
            (
                "[a]\naws_access_key_id = A\naws_secret_access_key = s\n",
                "/c:1: profile [a] has no role",
            ),
            (
                "[a]\naws_access_key_id = A\naws_secret_access_key = s\nrole = admin\n",
                "role must be operator or instance",
            ),
            (
                "[a]\naws_access_key_id = A\naws_secret_access_key = s\nrole = instance\n",
                "has no clusters",
            ),
            ("[a\n", "expected [profile]"),
        ] {
            let e = parse(Path::new("/c"), text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn new_keys_are_appended_and_found() {
        let dir = std::env::temp_dir().join(format!("dockhand-creds-{}", std::process::id()));
        let path = dir.join("control-credentials");
        let _ = std::fs::remove_dir_all(&dir);
        append_new(&path, "operator", &Role::Operator).unwrap();
        let text = append_new(
            &path,
            "web-instances",
            &Role::Instance {
                clusters: vec!["web".into()],
            },
        )
        .unwrap();
        assert!(append_new(&path, "operator", &Role::Operator).is_err());
        let creds = Credentials::load(&path).unwrap();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("aws_access_key_id = "))
            .unwrap();
        assert_eq!(id.len(), 20);
        assert!(id.starts_with("AKIA"));
        let k = creds.find(id).unwrap();
        assert_eq!(k.profile, "web-instances");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(dir).ok();
    }
}
