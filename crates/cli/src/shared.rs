//! Helpers every command module shares: connecting to the metadata plane,
//! opening the repository (`--repo`, the password), formatting byte counts
//! and parsing the times holds are given in. Calendar arithmetic itself
//! lives in `coffer_types::time`.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use coffer_client::repo::{open_repo, Repository};
use coffer_rpc::MetaClient;
use coffer_types::time::days_from_civil;
use coffer_types::RepoName;

use crate::args::Global;

pub fn meta_client(g: &Global) -> Result<Arc<MetaClient>> {
    Ok(Arc::new(meta_client_with(g, g.retry_for)?))
}

/// A metadata client that sends the caller's token, retrying for `retry_for`.
pub fn meta_client_with(g: &Global, retry_for: std::time::Duration) -> Result<MetaClient> {
    if g.endpoint.is_empty() {
        bail!("no metadata endpoint: pass --endpoint or set COFFER_ENDPOINT (`. DIR/env` after `coffer dev`)");
    }
    let client = MetaClient::new(&g.endpoint, retry_for).context("parse --endpoint")?;
    match token(g)? {
        Some(t) => client.with_token(&t).context("use the access token"),
        None => Ok(client),
    }
}

/// The access token: `--token` / `COFFER_TOKEN`, or the first line of
/// `--token-file` / `COFFER_TOKEN_FILE`; none if neither is given.
pub fn token(g: &Global) -> Result<Option<String>> {
    if let Some(t) = &g.token {
        return Ok(Some(t.trim().to_string()));
    }
    if let Some(path) = &g.token_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("read the token file {}", path.display()))?;
        let t = text.lines().next().unwrap_or("").trim().to_string();
        if t.is_empty() {
            bail!("the token file {} is empty", path.display());
        }
        return Ok(Some(t));
    }
    Ok(None)
}

/// The token as every hand-made request carries it.
pub fn bearer(g: &Global) -> Result<coffer_rpc::identity::Bearer> {
    match token(g)? {
        Some(t) => coffer_rpc::identity::Bearer::new(&t).context("use the access token"),
        None => Ok(coffer_rpc::identity::Bearer::none()),
    }
}

pub fn password(g: &Global) -> Result<Vec<u8>> {
    if let Some(p) = &g.password {
        return Ok(p.as_bytes().to_vec());
    }
    if let Ok(file) = std::env::var("COFFER_PASSWORD_FILE") {
        let p = std::fs::read(&file).with_context(|| format!("read COFFER_PASSWORD_FILE {file}"))?;
        let trimmed = p.strip_suffix(b"\n").unwrap_or(&p);
        return Ok(trimmed.to_vec());
    }
    bail!("no password: pass --password, or set COFFER_PASSWORD or COFFER_PASSWORD_FILE")
}

pub fn repo_name(g: &Global) -> Result<RepoName> {
    let name = g.repo.clone().ok_or_else(|| anyhow!("no repository: pass --repo or set COFFER_REPO"))?;
    Ok(RepoName::new(name)?)
}

pub async fn open(g: &Global) -> Result<Repository> {
    let meta = meta_client(g)?;
    let name = repo_name(g)?;
    let pw = password(g)?;
    open_repo(meta, &name, &pw).await.with_context(|| format!("open repository {name}"))
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A time for a hold: `none` (clears it), `+N` with a unit (`s`, `m`, `h`,
/// `d`) from now, a date `YYYY-MM-DD` (midnight UTC), or
/// `YYYY-MM-DDTHH:MM:SSZ`. Returns milliseconds since the epoch.
pub fn parse_time(s: &str) -> Result<u64> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("none") {
        return Ok(0);
    }
    if let Some(rel) = s.strip_prefix('+') {
        let split = rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len());
        let (num, unit) = rel.split_at(split);
        let n: u64 = num.parse().with_context(|| format!("{s:?}: not a number of units"))?;
        let unit_ms = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => bail!("{s:?}: unknown unit {unit:?} (use s, m, h or d)"),
        };
        return Ok(now_ms().saturating_add(n.saturating_mul(unit_ms)));
    }
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => {
            (d, Some(t.strip_suffix('Z').with_context(|| format!("{s:?}: times must be UTC, ending in Z"))?))
        }
        None => (s, None),
    };
    let num = |p: &str, what: &str| -> Result<i64> { p.parse::<i64>().with_context(|| format!("{s:?}: bad {what}")) };
    let parts: Vec<&str> = date.split('-').collect();
    let [y, m, d] = parts.as_slice() else { bail!("{s:?}: expected YYYY-MM-DD[THH:MM:SSZ], +7d or none") };
    let (y, m, d) = (num(y, "year")?, num(m, "month")?, num(d, "day")?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        bail!("{s:?}: not a date after 1970");
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    if let Some(t) = time {
        let hms: Vec<&str> = t.split(':').collect();
        // Seconds may be left out: 2026-12-01T09:00Z.
        let (h, mi, se) = match hms.as_slice() {
            [h, mi, se] => (h, mi, *se),
            [h, mi] => (h, mi, "0"),
            _ => bail!("{s:?}: expected HH:MM[:SS]"),
        };
        let (h, mi, se) = (num(h, "hour")?, num(mi, "minute")?, num(se, "second")?);
        if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..61).contains(&se) {
            bail!("{s:?}: not a time of day");
        }
        secs += h * 3600 + mi * 60 + se;
    }
    Ok(secs as u64 * 1000)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use coffer_types::time::rfc3339;

    use super::*;

    #[test]
    fn times_parse_and_round_trip() {
        assert_eq!(parse_time("none").unwrap(), 0);
        assert_eq!(parse_time("2000-02-29").unwrap(), 951_782_400_000);
        assert_eq!(rfc3339(parse_time("2026-11-18T11:06:40Z").unwrap()), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(parse_time("2026-12-01T09:00Z").unwrap()), "2026-12-01T09:00:00Z");
        let soon = parse_time("+1d").unwrap();
        assert!(soon > now_ms() && soon <= now_ms() + 86_400_000);
        for bad in ["", "2026-13-01", "2026-11-18T11:06:40", "+5y", "tomorrow", "1960-01-01"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
