//! `KEY=VALUE` configuration, the ECS agent's `ecs.config` format, shared by
//! the agent (`/etc/ecs/ecs.config`) and the control endpoint
//! (`/etc/dockhand/control.conf`).
//!
//! Settings come from three layers, highest first: the process environment,
//! the file (`KEY=VALUE` lines, as systemd's `EnvironmentFile=` reads them)
//! and the built-in defaults. [`parse`] reads every layer, checks every
//! value through its key's [`KeySpec`], and returns either the whole config
//! with where each setting came from, or every problem at once as
//! `PATH:LINE: KEY: why`. Reading the file is the caller's business: this
//! module only sees text.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Exit code for a configuration error: EX_CONFIG from sysexits.h, which the
/// systemd units name in `RestartPreventExitStatus=` so a bad config is not
/// retried in a loop.
pub const EXIT_CONFIG: u8 = 78;

/// A config file larger than this is refused (they are a few hundred bytes).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Where one setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File { path: PathBuf, line: usize },
    Environment,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { path, line: 0 } => write!(f, "{}", path.display()),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::Environment => f.write_str("environment"),
        }
    }
}

/// One invalid line or value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source: Source,
    /// The key, when the line had one.
    pub key: Option<String>,
    pub why: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: {key}: {}", self.source, self.why),
            None => write!(f, "{}: {}", self.source, self.why),
        }
    }
}

/// Every problem found while loading, reported together.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::error::Error for ConfigErrors {}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A loaded config, with the provenance of each key and the warnings met.
#[derive(Debug, Clone)]
pub struct Loaded<C> {
    pub config: C,
    /// For every key of the scheme: its effective value as text, and its
    /// source.
    pub effective: Vec<(&'static str, String, Source)>,
    /// Ignored keys and similar: worth a log line, not a failure.
    pub warnings: Vec<String>,
}

/// Applies a value to a config.
pub type Apply<C> = fn(&mut C, &str) -> Result<(), String>;

/// One configuration key.
pub struct KeySpec<C> {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
    pub apply: Apply<C>,
}

/// What a program reads: its keys, and how it treats keys it does not know.
pub struct Scheme<C: 'static> {
    pub keys: &'static [KeySpec<C>],
    /// An unknown key with one of these prefixes is an error (with a
    /// did-you-mean): it is this program's namespace.
    pub owned_prefixes: &'static [&'static str],
    /// An unknown key with one of these prefixes is a warning, not an
    /// error (the ECS agent has many keys that mean nothing here).
    pub foreign_prefixes: &'static [&'static str],
    /// Keys accepted without a warning though they are not read.
    pub quiet: &'static [&'static str],
    /// Whether an environment variable is a setting for this program.
    pub from_env: fn(&str) -> bool,
}

impl<C> Scheme<C> {
    /// The key nearest to an unknown one, if close enough.
    fn did_you_mean(&self, key: &str) -> Option<&'static str> {
        self.keys
            .iter()
            .map(|k| (edit_distance(key, k.name), k.name))
            .filter(|(d, _)| *d <= 4)
            .min()
            .map(|(_, name)| name)
    }
}

/// Whether a key holds a secret, whose value is never shown.
pub fn is_secret(key: &str) -> bool {
    key.ends_with("SECRET_ACCESS_KEY") || key.ends_with("PASSWORD")
}

/// Parses file `text` (as read from `path`) with `env` layered on top, into
/// `config` (which holds the defaults on entry).
pub fn parse<C>(
    scheme: &Scheme<C>,
    mut config: C,
    path: &Path,
    text: &str,
    env: &BTreeMap<String, String>,
) -> Result<Loaded<C>, ConfigErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    // key -> (value, source); the environment overrides the file.
    let mut chosen: BTreeMap<String, (String, Source)> = BTreeMap::new();
    // A byte-order mark (an editor's UTF-8 "with BOM") would otherwise be
    // part of the first key: an unknown key, and line 1 lost.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw) in text.lines().enumerate() {
        let source = Source::File {
            path: path.to_path_buf(),
            line: index + 1,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            errors.push(ConfigError {
                source,
                key: None,
                why: format!("expected KEY=VALUE, got {line:?}"),
            });
            continue;
        };
        let key = key.trim();
        match unquote(value.trim()) {
            Ok(value) => {
                chosen.insert(key.to_string(), (value.to_string(), source));
            }
            Err(why) => errors.push(ConfigError {
                source,
                key: Some(key.to_string()),
                why,
            }),
        }
    }
    for (key, value) in env {
        if (scheme.from_env)(key) {
            chosen.insert(key.clone(), (value.trim().to_string(), Source::Environment));
        }
    }
    for (key, (value, source)) in &chosen {
        if scheme.keys.iter().any(|k| k.name == key) || scheme.quiet.contains(&key.as_str()) {
            continue;
        }
        if scheme.owned_prefixes.iter().any(|p| key.starts_with(p)) {
            let why = match scheme.did_you_mean(key) {
                Some(near) => format!("unknown key (did you mean {near}?)"),
                None => "unknown key".to_string(),
            };
            errors.push(ConfigError {
                source: source.clone(),
                key: Some(key.clone()),
                why,
            });
        } else if scheme.foreign_prefixes.iter().any(|p| key.starts_with(p))
            || matches!(source, Source::File { .. })
        {
            warnings.push(format!(
                "{source}: {key}: not used by Dockhand, ignored (value {value:?})"
            ));
        }
    }
    let mut effective = Vec::with_capacity(scheme.keys.len());
    for spec in scheme.keys {
        match chosen.get(spec.name) {
            Some((value, source)) => {
                if let Err(why) = (spec.apply)(&mut config, value) {
                    errors.push(ConfigError {
                        source: source.clone(),
                        key: Some(spec.name.to_string()),
                        why,
                    });
                }
                // A secret is never printed back (`config check`, logs).
                let shown = if is_secret(spec.name) && !value.is_empty() {
                    "(set, not shown)".to_string()
                } else {
                    value.clone()
                };
                effective.push((spec.name, shown, source.clone()));
            }
            None => effective.push((spec.name, spec.default.to_string(), Source::Default)),
        }
    }
    sort(&mut errors);
    if errors.is_empty() {
        Ok(Loaded {
            config,
            effective,
            warnings,
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Sorts errors in reading order: the file by line, then the environment.
pub fn sort(errors: &mut [ConfigError]) {
    errors.sort_by_key(|e| match &e.source {
        Source::File { line, .. } => (0, *line),
        Source::Environment => (1, 0),
        Source::Default => (2, 0),
    });
}

/// Applies every key's default to `config` (the defaults are constants of
/// the scheme, each checked by a unit test of its program).
pub fn defaults<C>(scheme: &Scheme<C>, config: &mut C) -> Result<(), String> {
    for key in scheme.keys {
        (key.apply)(config, key.default).map_err(|why| format!("{}: {why}", key.name))?;
    }
    Ok(())
}

/// The source of `name` among the effective settings.
pub fn source_of(effective: &[(&'static str, String, Source)], name: &str) -> Source {
    effective
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, s)| s.clone())
        .unwrap_or(Source::Default)
}

/// Strips one pair of matching single or double quotes.
fn unquote(v: &str) -> Result<&str, String> {
    for q in ['"', '\''] {
        if let Some(rest) = v.strip_prefix(q) {
            return rest
                .strip_suffix(q)
                .ok_or_else(|| format!("unterminated {q} quote"));
        }
    }
    Ok(v)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// Value parsers for keys.

pub const ZERO: Duration = Duration::ZERO;
pub const MILLI: Duration = Duration::from_millis(1);
pub const SECOND: Duration = Duration::from_secs(1);
pub const MINUTE: Duration = Duration::from_secs(60);
pub const HOUR: Duration = Duration::from_secs(3600);
pub const DAY: Duration = Duration::from_secs(86_400);

/// Parses `300ms`, `30s`, `5m`, `3h`, and sums such as `1m30s`; refuses
/// values that overflow.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration such as 300ms, 30s, 5m or 3h, got {v:?}");
    let too_big = || format!("{v:?} is too large");
    let mut total = Duration::ZERO;
    let mut rest = v.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| too_big())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_big)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_big)?),
            _ => return Err(bad()),
        };
        total = total.checked_add(part).ok_or_else(too_big)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// A duration within its documented range: every duration is added to
/// clocks and deadlines, so an unbounded one would overflow them.
pub fn duration_in(v: &str, lo: Duration, hi: Duration) -> Result<Duration, String> {
    let d = parse_duration(v)?;
    if d < lo || d > hi {
        Err(format!("must be {}-{}, got {v:?}", human(lo), human(hi)))
    } else {
        Ok(d)
    }
}

/// A duration as its largest whole unit: `0s`, `300ms`, `5m`, `24h`.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("expected true or false, got {v:?}")),
    }
}

pub fn bounded(v: &str, lo: usize, hi: usize) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number {lo}-{hi}, got {v:?}")),
    }
}

pub fn absolute_path(v: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(v);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!("expected an absolute path, got {v:?}"))
    }
}

pub fn non_empty(v: &str) -> Result<String, String> {
    if v.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("3h"), Ok(Duration::from_secs(10800)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        for bad in [
            "",
            "s",
            "30",
            "1.5s",
            "-1s",
            "10d",
            "18446744073709551616s",
            "5124095576030432h",
            "18446744073709551615s1s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(
            duration_in("2h", ZERO, HOUR).unwrap_err(),
            "must be 0s-1h, got \"2h\""
        );
    }
}
