//! Registry credentials, found the way `docker pull` finds them: in Docker's
//! `config.json` under `$DOCKER_CONFIG` (default `~/.docker`), in `auths`
//! keyed by registry host. Credential helpers (`credsStore`,
//! `credHelpers`) are not run; a host that uses one gets a warning.

use crate::engine::Credentials;
use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Docker Hub's key in `config.json`.
const DOCKER_HUB: &str = "https://index.docker.io/v1/";

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Where Docker's client config lives: `$DOCKER_CONFIG`, else `$HOME/.docker`.
pub fn docker_config_dir(env: &BTreeMap<String, String>) -> PathBuf {
    if let Some(d) = env.get("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = env
        .get("HOME")
        .filter(|h| !h.is_empty())
        .map_or("/root", String::as_str);
    Path::new(home).join(".docker")
}

/// The registry host of an image reference, as `config.json` keys it.
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => DOCKER_HUB,
    }
}

/// Credentials for pulling `image`, if `config.json` has any for its
/// registry. Read at each pull, so a `docker login` takes effect at once.
pub fn credentials_for(image: &str, config_dir: &Path) -> Option<Credentials> {
    let path = config_dir.join("config.json");
    let text = std::fs::read_to_string(&path).ok()?;
    let file: ConfigFile = match serde_json::from_str(&text) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %path.display(), cause = %e, "cannot parse Docker's config.json; pulling without credentials");
            return None;
        }
    };
    let registry = registry_of(image);
    let entry = file.auths.iter().find(|(key, _)| {
        let k = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        *key == registry || k.split('/').next() == Some(registry)
    });
    let Some((key, entry)) = entry else {
        if file.cred_helpers.contains_key(registry) || file.creds_store.is_some() {
            tracing::warn!(registry, "Docker's config.json names a credential helper; Dockhand does not run helpers, pulling without credentials");
        }
        return None;
    };
    let (mut username, mut password) = (entry.username.clone(), entry.password.clone());
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((u, p)) => {
                username = Some(u.to_string());
                password = Some(p.to_string());
            }
            None => tracing::warn!(
                registry,
                "config.json auth entry is not base64 user:password; ignored"
            ),
        }
    }
    Some(Credentials {
        username,
        password,
        auth: None,
        server_address: Some(key.clone()),
        identity_token: entry.identitytoken.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts_follow_docker_rules() {
        assert_eq!(registry_of("nginx"), DOCKER_HUB);
        assert_eq!(registry_of("library/nginx:1"), DOCKER_HUB);
        assert_eq!(registry_of("127.0.0.1:5000/app:1"), "127.0.0.1:5000");
        assert_eq!(
            registry_of("registry.example.com/team/app"),
            "registry.example.com"
        );
        assert_eq!(registry_of("localhost/app"), "localhost");
    }

    #[test]
    fn credentials_come_from_config_json_auths() {
        let dir =
            std::env::temp_dir().join(format!("dockhand-reg-{}", crate::store::random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"auths": {"127.0.0.1:5000": {"auth": "dXNlcjpwYXNz"}, "https://index.docker.io/v1/": {"username": "hub", "password": "x"}}}"#,
        )
        .unwrap();
        let c = credentials_for("127.0.0.1:5000/app:1", &dir).unwrap();
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("user"), Some("pass"))
        );
        assert_eq!(c.server_address.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(
            credentials_for("nginx", &dir).unwrap().username.as_deref(),
            Some("hub")
        );
        assert!(credentials_for("other.example/app", &dir).is_none());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn config_dir_from_environment() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            docker_config_dir(&env(&[("DOCKER_CONFIG", "/x")])),
            PathBuf::from("/x")
        );
        assert_eq!(
            docker_config_dir(&env(&[("HOME", "/home/u")])),
            PathBuf::from("/home/u/.docker")
        );
        assert_eq!(docker_config_dir(&env(&[])), PathBuf::from("/root/.docker"));
    }
}
