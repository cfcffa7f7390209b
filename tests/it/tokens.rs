//! Tokens with roles, write-once holds and the audit log, against a real
//! cluster: a `backup` token backs up and does nothing else; revoked,
//! expired and missing tokens are refused (exit 12); a token of one
//! repository reads nothing of another; holds only ever grow; every refusal
//! leaves an audit line on the leader.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use coffer_testkit::{wait_until, write_sample_tree, Cluster, ClusterSpec, Output};

use crate::restore_and_compare;

/// The exit code of a refused call.
const REFUSED: i32 = 12;

/// Creates a token of `repo` with `role` as the cluster administrator and
/// returns the token string and its id.
fn token(c: &Cluster, repo: &str, role: &str, extra: &[&str]) -> Result<(String, String)> {
    let mut args = vec!["--repo", repo, "token", "create", "--role", role, "--name", "it", "--json"];
    args.extend_from_slice(extra);
    let v = c.cli(&args)?.ok()?.json()?;
    ensure!(v["role"] == role && v["repo"] == repo, "{v}");
    let t = v["token"].as_str().context("no token")?.to_string();
    let id = v["id"].as_str().context("no id")?.to_string();
    ensure!(t.starts_with("cft_") && t.contains(&id), "{v}");
    Ok((t, id))
}

fn refused(out: &Output, what: &str, needle: &str) -> Result<()> {
    ensure!(out.code == REFUSED, "{what}: expected exit {REFUSED}, got {out:?}");
    ensure!(out.stderr.contains(needle), "{what}: {needle:?} not in {:?}", out.stderr);
    Ok(())
}

/// The leader's log (the only metadata node of a default cluster).
fn leader_log(c: &Cluster) -> Result<String> {
    Ok(std::fs::read_to_string(c.dir().join("meta-1.log"))?)
}

#[test]
fn a_backup_token_backs_up_and_does_nothing_else() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let src = c.dir().join("src");
        write_sample_tree(&src, 7, 2)?;
        let (agent, agent_id) = token(c, "test", "backup", &[])?;
        let as_agent = |args: &[&str]| c.cli_as(Some(&agent), args);

        // It backs up, a full and an incremental (which reads its parent's
        // trees), and lists what it wrote.
        let p = src.display().to_string();
        let first = as_agent(&["backup", &p, "--kind", "full", "--json"])?.ok()?.json()?;
        std::fs::write(src.join("docs/more.txt"), b"more")?;
        let second = as_agent(&["backup", &p, "--json"])?.ok()?.json()?;
        ensure!(second["parent"] == first["snapshot_id"], "{second}");
        let snap = second["snapshot_id"].as_str().context("id")?.to_string();
        let listed = as_agent(&["snapshots", "--json"])?.ok()?.json()?;
        ensure!(listed.as_array().map(Vec::len) == Some(2), "{listed}");

        // It restores nothing, forgets nothing, collects nothing, administers nothing.
        let target = c.dir().join("restored");
        let t = target.display().to_string();
        refused(&as_agent(&["restore", &snap, &t])?, "restore", "restore or admin")?;
        refused(&as_agent(&["forget", &snap])?, "forget", "role admin")?;
        // RunGc is an admin-certificate call (like Condemn and Sweep were):
        // the transport refuses the agent certificate before any token check.
        refused(&as_agent(&["gc", "--wait", "5s"])?, "gc", "admin certificate")?;
        refused(&as_agent(&["status"])?, "status", "cluster administrator")?;
        refused(&as_agent(&["token", "create", "--role", "admin"])?, "token create", "role admin")?;
        refused(&as_agent(&["repo", "create", "mine"])?, "repo create", "cluster administrator")?;

        // It may hold a snapshot (holds only grow), never lift one.
        as_agent(&["hold", &snap, "+2h"])?.ok()?;
        refused(&as_agent(&["hold", &snap, "none"])?, "lift a hold", "role admin")?;

        // Holds are write-once for everyone: neither a repository admin nor
        // the cluster administrator shortens or lifts one; extending works.
        let (owner, _) = token(c, "test", "admin", &[])?;
        for who in [Some(owner.as_str()), None] {
            for until in ["none", "+1h"] {
                let out = match who {
                    Some(t) => c.cli_as(Some(t), &["hold", &snap, until])?,
                    None => c.cli(&["hold", &snap, until])?,
                };
                ensure!(out.code == 1 && out.stderr.contains("never shortened or lifted"), "{until}: {out:?}");
            }
        }
        c.cli_as(Some(&owner), &["hold", &snap, "+3h"])?.ok()?;
        let refused_forget = c.cli_as(Some(&owner), &["forget", &snap])?;
        ensure!(refused_forget.code == 1 && refused_forget.stderr.contains("held"), "{refused_forget:?}");

        // Whoever may read restores it all.
        let (reader, _) = token(c, "test", "restore", &[])?;
        let cmd = |args: &[&str]| c.cli_as(Some(&reader), args);
        cmd(&["restore", &snap, &t])?.ok()?;
        restore_and_compare(c, &snap, &src)?;

        // Every refusal is an audit line on the leader, naming who and what.
        let log = leader_log(c)?;
        for what in ["what=\"GetPacks(data)\"", "what=\"Forget\"", "what=\"Hold(lift)\""] {
            let line = log.lines().find(|l| l.contains("audit: refused") && l.contains(what) && l.contains(&agent_id));
            ensure!(line.is_some_and(|l| l.contains("repo=test")), "no audit line for {what} by {agent_id}");
        }
        // `coffer gc` is one RunGc call now, refused by the transport on the
        // agent's certificate before any token is read: its record is the
        // transport's refusal line, naming the call and the certificate.
        ensure!(
            log.lines()
                .any(|l| l.contains("call refused") && l.contains("Maintenance/RunGc") && l.contains("\"agent\"")),
            "no refusal line for RunGc"
        );
        ensure!(
            log.lines().any(|l| l.contains("audit: done") && l.contains("CreateToken")),
            "token creation is not audited"
        );
        ensure!(!log.contains(&agent), "a token's secret reached the log");
        Ok(())
    })
}

#[test]
fn revoked_expired_and_missing_tokens_are_refused() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        // No token, or one that is not a token: UNAUTHENTICATED.
        let out = c.cli_as(None, &["snapshots"])?;
        refused(&out, "no token", "COFFER_TOKEN")?;
        ensure!(out.stderr.contains("nauthenticated"), "{out:?}");
        refused(&c.cli_as(Some("cft_0011223344556677_00"), &["snapshots"])?, "garbage", "not a coffer token")?;
        let forged = format!("cft_0011223344556677_{}", "ab".repeat(32));
        refused(&c.cli_as(Some(&forged), &["snapshots"])?, "forged", "unknown")?;

        // A revoked token: refused from then on, and listed as revoked.
        let (reader, id) = token(c, "test", "restore", &[])?;
        c.cli_as(Some(&reader), &["snapshots"])?.ok()?;
        // Its id with the secret of another token.
        let other = token(c, "test", "restore", &[])?.0;
        let wrong = format!("cft_{id}_{}", other.rsplit('_').next().context("secret")?);
        refused(&c.cli_as(Some(&wrong), &["snapshots"])?, "another token's secret", "unknown")?;
        c.cli(&["token", "revoke", &id])?.ok()?;
        refused(&c.cli_as(Some(&reader), &["snapshots"])?, "revoked", "revoked")?;
        let list = c.cli(&["token", "list", "--json"])?.ok()?;
        let v = list.json()?;
        let row = v["tokens"].as_array().context("tokens")?.iter().find(|t| t["id"] == id.as_str()).cloned();
        ensure!(row.is_some_and(|r| r["revoked_ms"].as_u64().unwrap_or(0) > 0), "{v}");
        let secret = reader.rsplit('_').next().context("secret")?;
        ensure!(!list.stdout.contains(secret), "token list shows a secret");

        // An expiring token works until it expires, then it is refused.
        let (brief, _) = token(c, "test", "restore", &["--expires", "+4s"])?;
        c.cli_as(Some(&brief), &["snapshots"])?.ok()?;
        wait_until("the token to expire", Duration::from_secs(30), || {
            c.cli_as(Some(&brief), &["snapshots"]).ok().filter(|o| o.code == REFUSED && o.stderr.contains("expired"))
        })?;
        let log = leader_log(c)?;
        ensure!(log.lines().any(|l| l.contains("audit: refused") && l.contains("unauthenticated")), "no audit line");
        Ok(())
    })
}

#[test]
fn a_token_of_one_repository_reads_nothing_of_another() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let src = c.dir().join("src");
        write_sample_tree(&src, 3, 1)?;
        c.cli(&["repo", "create", "other", "--k", "4", "--m", "2"])?.ok()?;
        let p = src.display().to_string();
        c.cli(&["--repo", "other", "backup", &p])?.ok()?;
        let (owner, _) = token(c, "test", "admin", &[])?;
        let as_owner = |args: &[&str]| c.cli_as(Some(&owner), args);
        // Its own repository: everything.
        as_owner(&["backup", &p])?.ok()?;
        as_owner(&["snapshots"])?.ok()?;
        // The other: not the snapshot list, not the key slots (opening it),
        // not a restore, not its tokens.
        for args in [
            &["--repo", "other", "snapshots"][..],
            &["--repo", "other", "restore", "latest", "-"],
            &["--repo", "other", "ls", "latest"],
            &["--repo", "other", "token", "create", "--role", "backup"],
            &["--repo", "other", "token", "list"],
            &["token", "list", "--all"],
        ] {
            let out = as_owner(args)?;
            ensure!(out.code == REFUSED, "{args:?}: {out:?}");
            ensure!(out.stderr.contains("permission denied"), "{args:?}: {out:?}");
        }
        let log = leader_log(c)?;
        ensure!(
            log.lines()
                .any(|l| l.contains("audit: refused") && l.contains("what=\"GetRepo\"") && l.contains("repo=other")),
            "no audit line for reading another repository's key slots"
        );
        Ok(())
    })
}
