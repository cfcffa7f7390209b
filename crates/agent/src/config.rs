//! `agent.toml`: the file schema (every table `deny_unknown_fields`, so a
//! misspelt key is an error, not a silently ignored policy) and its
//! validation into an [`AgentConfig`] the daemon runs.
//!
//! The invariant: a configuration that loads is runnable. Every duration,
//! schedule, time zone, pattern and name is parsed here, and every error
//! names its key (`source[1].schedule.full`, `source "media".paths`), so the
//! CLI can exit 2 with a message that points at the line to fix. The key
//! names are a contract (issue 13); new keys are added, never renamed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use coffer_client::retention::KeepPolicy;
use coffer_client::Excludes;
use coffer_types::RepoName;
use serde::Deserialize;

use crate::schedule::{jitter_offset, parse_duration_ms, Expr, KindKey, Schedule};

/// The default state directory when `state_dir` is not given.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/coffer-agent";
/// The default jitter: enough to spread a fleet over a minute.
pub const DEFAULT_JITTER: &str = "30s";
/// The default debounce of `on_change`.
pub const DEFAULT_DEBOUNCE: &str = "10s";
/// The default `hook_timeout`: long enough for a database to checkpoint or
/// a snapshot of a volume to settle, short enough that a hung hook does not
/// hold the source's runs for a day.
pub const DEFAULT_HOOK_TIMEOUT: &str = "10m";

/// A configuration error, naming the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    endpoint: Vec<String>,
    control: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    host: Option<String>,
    timezone: Option<String>,
    jitter: Option<String>,
    /// How often the agent writes its sources' records into the catalog.
    report_interval: Option<String>,
    /// The admin HTTP port (`/livez`, `/readyz`, `/metrics`), host:port.
    admin_listen: Option<String>,
    insecure: Option<bool>,
    cacert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    source: Vec<FileSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSource {
    name: String,
    repo: String,
    paths: Option<Vec<PathBuf>>,
    command: Option<String>,
    /// The file name the command's output gets in the snapshot.
    command_name: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    exclude_if_present: Vec<String>,
    #[serde(default)]
    exclude_caches: bool,
    schedule: Option<FileSchedule>,
    on_change: Option<FileOnChange>,
    realtime: Option<FileRealtime>,
    rpo: Option<String>,
    keep: Option<FileKeep>,
    /// Restore drills on a schedule (issue 13's contract key): a calendar
    /// expression (`drill = "weekly sat 03:00"`), or a table with the
    /// expression under `schedule` and the drill's options
    /// (`{ schedule = "...", sample = 0.1, verify_command = "..." }`).
    /// Parsed by hand from the TOML value, so that an error names the key.
    drill: Option<toml::Value>,
    pre_hook: Option<String>,
    post_hook: Option<String>,
    /// How long a pre or post hook may run before its process group is
    /// killed and the run fails.
    hook_timeout: Option<String>,
    password_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSchedule {
    full: Option<String>,
    differential: Option<String>,
    incremental: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOnChange {
    debounce: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRealtime {
    max_lag: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKeep {
    #[serde(default)]
    last: u32,
    #[serde(default)]
    hourly: u32,
    #[serde(default)]
    daily: u32,
    #[serde(default)]
    weekly: u32,
    #[serde(default)]
    monthly: u32,
    #[serde(default)]
    yearly: u32,
    #[serde(default)]
    tags: Vec<String>,
}

/// What a source backs up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    Paths(Vec<PathBuf>),
    /// A shell command whose standard output is the backup, and the name of
    /// that file in the snapshot.
    Command {
        command: String,
        name: String,
    },
}

/// A source's scheduled restore drill.
#[derive(Clone, Debug)]
pub struct DrillConfig {
    pub schedule: Schedule,
    /// Verify only this share (0 < p <= 1) of the files.
    pub sample: Option<f64>,
    /// A command run in the restored tree; the drill fails unless it exits 0.
    pub verify_command: Option<String>,
}

/// One validated `[[source]]`.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub name: String,
    pub repo: RepoName,
    pub what: What,
    /// The configured tags; the agent adds `source:<name>`.
    pub tags: Vec<String>,
    pub excludes: Excludes,
    pub schedules: BTreeMap<KindKey, Schedule>,
    pub on_change: Option<Duration>,
    pub realtime: Option<Duration>,
    pub rpo: Option<Duration>,
    pub keep: Option<KeepPolicy>,
    pub drill: Option<DrillConfig>,
    pub pre_hook: Option<String>,
    pub post_hook: Option<String>,
    pub hook_timeout: Duration,
    pub password_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

impl SourceConfig {
    /// The tag every snapshot of this source carries (a contract: other
    /// tools group snapshots per source by it).
    pub fn source_tag(&self) -> String {
        format!("source:{}", self.name)
    }
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub path: PathBuf,
    pub endpoint: Vec<String>,
    pub control: PathBuf,
    pub state_dir: PathBuf,
    pub host: String,
    pub tz: Tz,
    pub report_interval: Duration,
    /// The admin HTTP port's address (`--admin-listen` overrides it).
    pub admin_listen: Option<String>,
    pub tls: FileTls,
    pub sources: Vec<SourceConfig>,
}

/// The TLS keys of the file; flags and environment override them.
#[derive(Clone, Debug, Default)]
pub struct FileTls {
    pub insecure: Option<bool>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn dur(file: &str, key: &str, s: &str) -> Result<Duration, ConfigError> {
    parse_duration_ms(s).map(Duration::from_millis).map_err(|reason| ConfigError {
        file: file.into(),
        key: key.into(),
        reason,
    })
}

/// Reads and validates `path`; `host` is the agent's host name unless the
/// file sets `host`.
pub fn load(path: &Path, host: &str) -> Result<AgentConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        key: "(file)".into(),
        reason: format!("cannot read: {e}"),
    })?;
    parse(&text, path, host)
}

/// Validates the text of an `agent.toml` (read from `path`).
pub fn parse(text: &str, path: &Path, host: &str) -> Result<AgentConfig, ConfigError> {
    let file = path.display().to_string();
    let err = |key: &str, reason: String| ConfigError { file: file.clone(), key: key.to_string(), reason };
    let raw: FileConfig = toml::from_str(text).map_err(|e| {
        // toml names the key and the line; keep its message whole.
        err("(syntax)", e.to_string().trim().replace('\n', " "))
    })?;
    if raw.endpoint.is_empty() {
        return Err(err("endpoint", "at least one metadata endpoint (host:port) is needed".into()));
    }
    let host = raw.host.clone().unwrap_or_else(|| host.to_string());
    if host.is_empty() {
        return Err(err("host", "is empty".into()));
    }
    let tz: Tz = match &raw.timezone {
        None => Tz::UTC,
        Some(z) => z
            .parse()
            .map_err(|_| err("timezone", format!("{z:?} is not a time zone name (e.g. UTC, Europe/Berlin)")))?,
    };
    let jitter = dur(&file, "jitter", raw.jitter.as_deref().unwrap_or(DEFAULT_JITTER))?;
    let report_interval = dur(&file, "report_interval", raw.report_interval.as_deref().unwrap_or("10s"))?;
    if report_interval < Duration::from_secs(1) {
        return Err(err("report_interval", "must be at least 1s".into()));
    }
    if let Some(a) = &raw.admin_listen {
        if a.parse::<std::net::SocketAddr>().is_err() && !a.contains(':') {
            return Err(err("admin_listen", format!("{a:?} is not host:port")));
        }
    }
    let state_dir = raw.state_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let base = path.parent().unwrap_or(Path::new("."));
    let state_dir = if state_dir.is_absolute() { state_dir } else { base.join(state_dir) };
    let control = match &raw.control {
        Some(c) if c.is_absolute() => c.clone(),
        Some(c) => base.join(c),
        None => state_dir.join("control"),
    };
    let mut names = BTreeSet::new();
    let mut sources = Vec::new();
    for (i, s) in raw.source.into_iter().enumerate() {
        let at = format!("source[{i}]");
        let key = |k: &str| format!("{at}.{k}");
        if s.name.is_empty() || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(err(&key("name"), format!("{:?}: use letters, digits, '-', '_' and '.'", s.name)));
        }
        if !names.insert(s.name.clone()) {
            return Err(err(&key("name"), format!("{:?} is used by two sources", s.name)));
        }
        let repo = RepoName::new(s.repo.clone()).map_err(|e| err(&key("repo"), e.to_string()))?;
        let what = match (&s.paths, &s.command) {
            (Some(_), Some(_)) => return Err(err(&key("paths"), "give paths or command, not both".into())),
            (None, None) => return Err(err(&key("paths"), "give paths (a list) or command".into())),
            (Some(p), None) => {
                if p.is_empty() {
                    return Err(err(&key("paths"), "is empty".into()));
                }
                if let Some(rel) = p.iter().find(|p| !p.is_absolute()) {
                    return Err(err(&key("paths"), format!("{} is not an absolute path", rel.display())));
                }
                What::Paths(p.clone())
            }
            (None, Some(c)) => {
                if c.trim().is_empty() {
                    return Err(err(&key("command"), "is empty".into()));
                }
                What::Command { command: c.clone(), name: s.command_name.clone().unwrap_or_else(|| s.name.clone()) }
            }
        };
        let excludes = Excludes::new(&s.exclude, &s.exclude_if_present, s.exclude_caches)
            .map_err(|e| err(&key("exclude"), e.to_string()))?;
        if matches!(what, What::Command { .. }) && !excludes.is_empty() {
            return Err(err(&key("exclude"), "applies to paths, not to a command".into()));
        }
        let mut schedules = BTreeMap::new();
        if let Some(sc) = &s.schedule {
            for (k, text) in [
                (KindKey::Full, &sc.full),
                (KindKey::Differential, &sc.differential),
                (KindKey::Incremental, &sc.incremental),
            ] {
                let Some(text) = text else { continue };
                let expr = Expr::parse(text).map_err(|e| err(&key(&format!("schedule.{k}")), e.to_string()))?;
                let offset = jitter_offset(&host, &s.name, jitter.as_secs() as i64, &expr);
                schedules.insert(k, Schedule { expr, tz, offset });
            }
            if schedules.is_empty() {
                return Err(err(&key("schedule"), "names no kind (full, differential, incremental)".into()));
            }
        }
        let on_change = match &s.on_change {
            Some(o) => Some(dur(&file, &key("on_change.debounce"), o.debounce.as_deref().unwrap_or(DEFAULT_DEBOUNCE))?),
            None => None,
        };
        let realtime = match &s.realtime {
            Some(r) => {
                let lag = dur(&file, &key("realtime.max_lag"), &r.max_lag)?;
                if lag < Duration::from_millis(500) {
                    return Err(err(&key("realtime.max_lag"), "must be at least 500ms".into()));
                }
                Some(lag)
            }
            None => None,
        };
        if (on_change.is_some() || realtime.is_some()) && !matches!(what, What::Paths(_)) {
            return Err(err(
                &key("on_change"),
                "watching needs paths; a command source is scheduled or triggered".into(),
            ));
        }
        if on_change.is_some() && realtime.is_some() {
            return Err(err(&key("realtime"), "a source is either on_change or realtime".into()));
        }
        let rpo = s.rpo.as_deref().map(|r| dur(&file, &key("rpo"), r)).transpose()?;
        let keep = match s.keep {
            Some(k) => {
                let p = KeepPolicy {
                    last: k.last,
                    hourly: k.hourly,
                    daily: k.daily,
                    weekly: k.weekly,
                    monthly: k.monthly,
                    yearly: k.yearly,
                    tags: k.tags,
                };
                if p.is_empty() {
                    return Err(err(
                        &key("keep"),
                        "keeps nothing; give last, hourly, daily, weekly, monthly or yearly".into(),
                    ));
                }
                Some(p)
            }
            None => None,
        };
        for t in &s.tags {
            if t.is_empty() || t.starts_with("source:") {
                return Err(err(&key("tags"), format!("{t:?}: tags are non-empty and `source:` is the agent's own")));
            }
        }
        let drill = match &s.drill {
            None => None,
            Some(v) => Some(drill_config(v, &host, &s.name, jitter, tz).map_err(|(k, reason)| err(&key(&k), reason))?),
        };
        let hook_timeout = dur(&file, &key("hook_timeout"), s.hook_timeout.as_deref().unwrap_or(DEFAULT_HOOK_TIMEOUT))?;
        if hook_timeout.is_zero() {
            return Err(err(&key("hook_timeout"), "must be longer than 0".into()));
        }
        sources.push(SourceConfig {
            name: s.name,
            repo,
            what,
            tags: s.tags,
            excludes,
            schedules,
            on_change,
            realtime,
            rpo,
            keep,
            drill,
            pre_hook: s.pre_hook,
            post_hook: s.post_hook,
            hook_timeout,
            password_file: s.password_file,
            token_file: s.token_file,
        });
    }
    Ok(AgentConfig {
        path: path.to_path_buf(),
        endpoint: raw.endpoint,
        control,
        state_dir,
        host,
        tz,
        report_interval,
        admin_listen: raw.admin_listen,
        tls: FileTls { insecure: raw.insecure, cacert: raw.cacert, cert: raw.cert, key: raw.key },
        sources,
    })
}

/// Validates `drill`: a schedule expression, or a table of `schedule`,
/// `sample` and `verify_command`. An error is `(key under the source,
/// reason)`.
fn drill_config(
    v: &toml::Value,
    host: &str,
    source: &str,
    jitter: Duration,
    tz: Tz,
) -> Result<DrillConfig, (String, String)> {
    let (text, sample, verify_command) = match v {
        toml::Value::String(s) => (s.clone(), None, None),
        toml::Value::Table(t) => {
            if let Some(k) = t.keys().find(|k| !matches!(k.as_str(), "schedule" | "sample" | "verify_command")) {
                return Err((format!("drill.{k}"), "unknown key (schedule, sample, verify_command)".into()));
            }
            let text = match t.get("schedule") {
                Some(toml::Value::String(s)) => s.clone(),
                Some(_) => {
                    return Err(("drill.schedule".into(), "must be a string such as \"weekly sat 03:00\"".into()))
                }
                None => return Err(("drill.schedule".into(), "is missing (when is the drill run?)".into())),
            };
            let sample = match t.get("sample") {
                None => None,
                Some(toml::Value::Float(p)) if *p > 0.0 && *p <= 1.0 => Some(*p),
                Some(toml::Value::Integer(1)) => Some(1.0),
                Some(other) => return Err(("drill.sample".into(), format!("{other}: a share in (0, 1]"))),
            };
            let verify_command = match t.get("verify_command") {
                None => None,
                Some(toml::Value::String(c)) if !c.trim().is_empty() => Some(c.clone()),
                Some(_) => return Err(("drill.verify_command".into(), "must be a non-empty command".into())),
            };
            (text, sample, verify_command)
        }
        other => {
            return Err((
                "drill".into(),
                format!("{other}: give a schedule (\"weekly sat 03:00\") or a table with `schedule`"),
            ))
        }
    };
    let at = if matches!(v, toml::Value::Table(_)) { "drill.schedule" } else { "drill" };
    let expr = Expr::parse(&text).map_err(|e| (at.to_string(), e.to_string()))?;
    // Its own jitter: a source's drill does not land on the second its
    // backups start.
    let offset = jitter_offset(host, &format!("{source}\0drill"), jitter.as_secs() as i64, &expr);
    Ok(DrillConfig { schedule: Schedule { expr, tz, offset }, sample, verify_command })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
endpoint = ["meta-0:7400", "meta-1:7400", "meta-2:7400"]
[[source]]
name = "orders-db"
repo = "orders"
command = "pg_dump --format=custom orders"
schedule = { full = "sun 01:00", differential = "daily 02:00", incremental = "every 1h" }
rpo = "1h"
keep = { last = 24, daily = 14, weekly = 8, monthly = 12 }
[[source]]
name = "media"
repo = "media"
paths = ["/srv/media"]
exclude = ["*.tmp", "cache/"]
on_change = { debounce = "30s" }
[[source]]
name = "orders-wal"
repo = "orders"
paths = ["/var/lib/postgresql/wal_archive"]
realtime = { max_lag = "5s" }
"#;

    fn parse_str(t: &str) -> Result<AgentConfig, ConfigError> {
        parse(t, Path::new("/etc/coffer/agent.toml"), "db-1")
    }

    #[test]
    fn the_issue_example_loads() {
        let c = parse_str(EXAMPLE).unwrap();
        assert_eq!(c.sources.len(), 3);
        assert_eq!(c.control, PathBuf::from(DEFAULT_STATE_DIR).join("control"));
        assert_eq!(c.sources[0].schedules.len(), 3);
        assert_eq!(c.sources[0].rpo, Some(Duration::from_secs(3600)));
        assert_eq!(c.sources[0].keep.as_ref().map(|k| k.daily), Some(14));
        assert_eq!(c.sources[1].on_change, Some(Duration::from_secs(30)));
        assert_eq!(c.sources[2].realtime, Some(Duration::from_secs(5)));
        assert_eq!(c.sources[0].source_tag(), "source:orders-db");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("endpoint = []", "endpoint"),
            ("endpoint = [\"a:1\"]\ntimezone = \"Mars/Olympus\"", "timezone"),
            ("endpoint = [\"a:1\"]\n[[source]]\nname = \"x\"\nrepo = \"r\"\npaths = [\"rel\"]", "source[0].paths"),
            (
                "endpoint = [\"a:1\"]\n[[source]]\nname = \"x\"\nrepo = \"r\"\ncommand = \"true\"\nschedule = { full = \"someday\" }",
                "source[0].schedule.full",
            ),
            (
                "endpoint = [\"a:1\"]\n[[source]]\nname = \"x\"\nrepo = \"r\"\ncommand = \"true\"\nrpo = \"5 parsecs\"",
                "source[0].rpo",
            ),
            ("endpoint = [\"a:1\"]\n[[source]]\nname = \"x\"\nrepo = \"r\"", "source[0].paths"),
            (
                "endpoint = [\"a:1\"]\n[[source]]\nname = \"x\"\nrepo = \"r\"\ncommand = \"true\"\n[[source]]\nname = \"x\"\nrepo = \"r\"\ncommand = \"true\"",
                "source[1].name",
            ),
            (
                "endpoint = [\"a:1\"]\n[[source]]\nname = \"x\"\nrepo = \"r\"\ncommand = \"true\"\nkeep = { last = 0 }",
                "source[0].keep",
            ),
        ];
        for (text, key) in cases {
            let e = parse_str(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
        // An unknown key is refused, and the message names it.
        let e =
            parse_str("endpoint = [\"a:1\"]\n[[source]]\nname = \"x\"\nrepo = \"r\"\ncommand = \"true\"\nschedul = {}")
                .unwrap_err();
        assert!(e.to_string().contains("schedul"), "{e}");
    }

    #[test]
    fn drills_hook_timeouts_and_the_admin_port_load_or_name_the_key() {
        let base = "endpoint = [\"a:1\"]\nadmin_listen = \"127.0.0.1:0\"\n[[source]]\nname = \"x\"\nrepo = \"r\"\ncommand = \"true\"\n";
        let c = parse_str(&format!("{base}drill = \"weekly sat 03:00\"\n")).unwrap();
        assert_eq!(c.admin_listen.as_deref(), Some("127.0.0.1:0"));
        let d = c.sources[0].drill.as_ref().unwrap();
        assert!(matches!(d.schedule.expr, Expr::Calendar(_)));
        assert_eq!((d.sample, d.verify_command.as_deref()), (None, None));
        assert_eq!(c.sources[0].hook_timeout, Duration::from_secs(600));
        let c = parse_str(&format!(
            "{base}hook_timeout = \"30s\"\ndrill = {{ schedule = \"every 2s\", sample = 0.5, verify_command = \"test -e x\" }}\n"
        ))
        .unwrap();
        let d = c.sources[0].drill.as_ref().unwrap();
        assert_eq!(d.schedule.expr, Expr::Every { secs: 2 });
        assert_eq!(d.sample, Some(0.5));
        assert_eq!(d.verify_command.as_deref(), Some("test -e x"));
        assert_eq!(c.sources[0].hook_timeout, Duration::from_secs(30));
        for (extra, key) in [
            ("drill = \"someday\"", "source[0].drill"),
            ("drill = 3", "source[0].drill"),
            ("drill = { sample = 0.5 }", "source[0].drill.schedule"),
            ("drill = { schedule = \"daily 25:00\" }", "source[0].drill.schedule"),
            ("drill = { schedule = \"daily 02:00\", sample = 1.5 }", "source[0].drill.sample"),
            ("drill = { schedule = \"daily 02:00\", verfy_command = \"x\" }", "source[0].drill.verfy_command"),
            ("hook_timeout = \"0s\"", "source[0].hook_timeout"),
            ("hook_timeout = \"soon\"", "source[0].hook_timeout"),
        ] {
            let e = parse_str(&format!("{base}{extra}\n")).unwrap_err();
            assert_eq!(e.key, key, "{extra}: {e}");
        }
        let e = parse_str("endpoint = [\"a:1\"]\nadmin_listen = \"nowhere\"\n").unwrap_err();
        assert_eq!(e.key, "admin_listen", "{e}");
    }
}
