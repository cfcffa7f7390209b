//! Mutual TLS on a real cluster: a plain-text client, a client with a
//! certificate from another CA, a storage certificate asking to add a
//! voter and a client certificate registering a storage node are each
//! refused with a clear error and change nothing; a certificate replaced on
//! disk is served without a restart.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use coffer_testkit::{wait_until, Cluster, ClusterSpec, Output};

/// `coffer ARGS` with the cluster's environment but the given certificate.
fn cli_as(c: &Cluster, cacert: &Path, cert: &Path, key: &Path, args: &[&str]) -> Result<Output> {
    let out = c
        .command(args)
        .env("COFFER_CACERT", cacert)
        .env("COFFER_CERT", cert)
        .env("COFFER_KEY", key)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run coffer {args:?}"))?;
    Ok(Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn refused(out: &Output, says: &[&str]) -> Result<()> {
    ensure!(out.code != 0, "expected a refusal, got success: {}", out.stdout);
    for s in says {
        ensure!(out.stderr.contains(s), "the error should say {s:?}: {}", out.stderr);
    }
    Ok(())
}

fn voter_ids(c: &Cluster) -> Result<Vec<u64>> {
    let m = c.members()?;
    let mut ids: Vec<u64> =
        m["members"].as_array().context("members")?.iter().filter_map(|x| x["id"].as_u64()).collect();
    ids.sort();
    Ok(ids)
}

fn node_count(c: &Cluster) -> Result<usize> {
    Ok(c.status()?["nodes"].as_array().context("nodes")?.len())
}

#[test]
fn plain_text_and_foreign_or_wrong_role_certificates_are_refused() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let ca = c.tls_dir().join("ca.crt");

        // Plain text against the TLS port.
        let out = c.cli(&["status", "--insecure", "--retry-for", "2s"])?;
        refused(&out, &["requires TLS", "--insecure"])?;

        // A client certificate of another CA, even one naming itself admin.
        let other = c.dir().join("other-ca");
        let bin = c.command(&[]).get_program().to_owned();
        let made = std::process::Command::new(&bin)
            .args(["certs", "init-ca", "--dir", &other.display().to_string()])
            .output()?;
        ensure!(made.status.success(), "init-ca: {}", String::from_utf8_lossy(&made.stderr));
        let made = std::process::Command::new(&bin)
            .args(["certs", "issue", "--ca", &other.display().to_string(), "--role", "admin", "--name", "intruder"])
            .args(["--ip", "127.0.0.1", "--out", &other.display().to_string()])
            .output()?;
        ensure!(made.status.success(), "issue: {}", String::from_utf8_lossy(&made.stderr));
        let (icrt, ikey) = (other.join("intruder.crt"), other.join("intruder.key"));
        let out = cli_as(c, &ca, &icrt, &ikey, &["repo", "create", "stolen", "--retry-for", "2s"])?;
        refused(&out, &[])?;
        // And trusting that CA instead: the cluster's servers are not signed by it.
        let out = cli_as(c, &other.join("ca.crt"), &icrt, &ikey, &["status", "--retry-for", "2s"])?;
        refused(&out, &["not signed by our CA"])?;
        // Nothing was created: the administrator can create that name now.
        c.cli(&["repo", "create", "stolen"])?.ok()?;

        // A storage certificate asking to add a metadata voter.
        let before = voter_ids(c)?;
        let (scrt, skey) = c.issue_cert("storage", "sneaky-storage")?;
        let out = cli_as(c, &ca, &scrt, &skey, &["cluster", "add-voter", "9", "127.0.0.1:9", "--retry-for", "2s"])?;
        refused(&out, &["needs a meta or admin certificate", "storage certificate"])?;
        ensure!(voter_ids(c)? == before, "membership changed");
        Ok(())
    })
}

#[test]
fn a_client_certificate_cannot_register_a_storage_node() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let nodes = node_count(c)?;
        let (crt, key) = c.issue_cert("client", "not-a-node")?;
        let data = c.dir().join("rogue-storage");
        // Its output goes to a file the log check does not read: the
        // refusals it logs are what this test wants.
        let out_path: PathBuf = c.dir().join("rogue-storage.out");
        let out = std::fs::File::create(&out_path)?;
        let mut child = c
            .command(&["storage", "--data", &data.display().to_string(), "--listen", "127.0.0.1:0"])
            .args(["--site", "site-a", "--meta", &c.endpoint(), "--heartbeat-interval", "200ms"])
            .args(["--cert", &crt.display().to_string(), "--key", &key.display().to_string()])
            .env("COFFER_LOG", "info")
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let seen = wait_until("the rogue node's registration refused", Duration::from_secs(20), || {
            let text = std::fs::read_to_string(&out_path).ok()?;
            text.contains("needs a storage certificate").then_some(())
        });
        let _ = child.kill();
        let _ = child.wait();
        seen.with_context(|| std::fs::read_to_string(&out_path).unwrap_or_default())?;
        ensure!(node_count(c)? == nodes, "a node was registered with a client certificate");
        Ok(())
    })
}

#[test]
fn a_certificate_replaced_on_disk_is_served_without_a_restart() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let addr = c.meta[0].addr.clone();
        let probe = |c: &Cluster| -> Result<String> {
            let out = c.cli(&["certs", "probe", &addr, "--json"])?.ok()?;
            Ok(out.json()?["name"].as_str().context("name")?.to_string())
        };
        ensure!(probe(c)? == "meta-1", "the first certificate");

        // Renew into a temporary name, then move it over the node's files,
        // the way a Secret is updated in place.
        let (new_crt, new_key) = c.issue_cert("meta", "meta-1-renewed")?;
        let tls = c.tls_dir();
        std::fs::rename(&new_key, tls.join("meta-1.key"))?;
        std::fs::rename(&new_crt, tls.join("meta-1.crt"))?;
        wait_until("the renewed certificate served", Duration::from_secs(20), || {
            (probe(c).ok()? == "meta-1-renewed").then_some(())
        })?;
        // The cluster keeps working on new connections with it.
        c.cli(&["status"])?.ok()?;
        Ok(())
    })
}

#[test]
fn an_insecure_cluster_runs_and_a_tls_client_is_told_why_it_fails() -> Result<()> {
    Cluster::run(ClusterSpec { insecure: true, ..ClusterSpec::default() }, |c| {
        c.cli(&["status"])?.ok()?;
        // A client with certificates against the plain-text cluster.
        let pki = c.dir().join("pki");
        let bin = c.command(&[]).get_program().to_owned();
        let run = |args: &[&str]| -> Result<()> {
            let o = std::process::Command::new(&bin).args(args).output()?;
            ensure!(o.status.success(), "coffer {args:?}: {}", String::from_utf8_lossy(&o.stderr));
            Ok(())
        };
        let dir = pki.display().to_string();
        run(&["certs", "init-ca", "--dir", &dir])?;
        run(&["certs", "issue", "--ca", &dir, "--role", "admin", "--name", "a", "--ip", "127.0.0.1", "--out", &dir])?;
        let out = c
            .command(&["status", "--retry-for", "2s"])
            .env_remove("COFFER_INSECURE")
            .env("COFFER_CACERT", pki.join("ca.crt"))
            .env("COFFER_CERT", pki.join("a.crt"))
            .env("COFFER_KEY", pki.join("a.key"))
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "a TLS client reached a plain-text cluster");
        ensure!(stderr.contains("--insecure"), "the error should point at --insecure: {stderr}");
        Ok(())
    })
}
