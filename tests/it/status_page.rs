//! The status page of a metadata node's admin port, read by a real browser:
//! headless Chromium (Debian's `chromium`; `make test` installs it) loads
//! it from a cluster with one site stopped, and the DOM it built shows that
//! site down and the packs that lost shards; a phone-sized screenshot is
//! taken too, so a rendering failure shows as a failed run, not a blank
//! image nobody looks at.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use coffer_testkit::{http_get, wait_until, write_sample_tree, Cluster, ClusterSpec};

use crate::{backup, list};

/// The Chromium binary: `CHROMIUM`, else `chromium` on the PATH.
fn chromium() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Ok(PathBuf::from(p));
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("no chromium on PATH (make test installs Debian's `chromium`; or set CHROMIUM)")
}

/// Runs headless Chromium on `url` with `args`, with a profile of its own
/// under `dir`, and returns its stdout.
fn run_chromium(dir: &Path, url: &str, args: &[&str]) -> Result<String> {
    let profile = tempfile::Builder::new().prefix("chromium-").tempdir_in(dir)?;
    let out = Command::new(chromium()?)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .context("run chromium")?;
    ensure!(out.status.success(), "chromium failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `data-count` of the pack-health row `health` in the DOM.
fn pack_count(dom: &str, health: &str) -> Option<u64> {
    let at = dom.find(&format!("data-health=\"{health}\" data-count=\""))?;
    let rest = &dom[at..];
    let start = rest.find("data-count=\"")? + "data-count=\"".len();
    rest[start..].split('"').next()?.parse().ok()
}

#[test]
fn the_status_page_shows_a_stopped_site_in_a_browser() -> Result<()> {
    let spec = ClusterSpec {
        meta_flags: vec!["--admin-listen".into(), "127.0.0.1:0".into()],
        suspect_after: Duration::from_secs(1),
        down_after: Duration::from_secs(3),
        ..ClusterSpec::default()
    };
    Cluster::run(spec, |c| {
        let src = c.dir().join("src");
        write_sample_tree(&src, 11, 1)?;
        backup(c, &src, &[])?;
        let admin = c.meta[0].admin_addr().context("the metadata node reported no admin port")?;
        let url = format!("http://{admin}/");

        c.kill_storage_site("site-c");
        wait_until("both nodes of site-c down", Duration::from_secs(30), || {
            let status = c.status().ok()?;
            let nodes = list(&status, "nodes").ok()?;
            let down = nodes.iter().filter(|n| n["site"] == "site-c" && n["state"] == "down").count();
            (down == 2).then_some(())
        })?;
        // The page answers with what the browser will get.
        let (code, _) = http_get(&admin, "/")?;
        ensure!(code == 200, "status page: {code}");

        let dom = run_chromium(c.dir(), &url, &["--dump-dom"])?;
        ensure!(dom.contains("coffer cluster"), "not the status page:\n{dom}");
        ensure!(dom.contains("data-site=\"site-c\" data-state=\"down\""), "site-c is not shown down:\n{dom}");
        ensure!(dom.contains("data-site=\"site-a\" data-state=\"up\""), "site-a is not shown up:\n{dom}");
        let hurt = pack_count(&dom, "degraded").unwrap_or(0) + pack_count(&dom, "at_risk").unwrap_or(0);
        ensure!(hurt > 0, "no degraded or at-risk packs shown:\n{dom}");
        ensure!(pack_count(&dom, "lost") == Some(0), "packs shown lost:\n{dom}");
        ensure!(dom.contains("http-equiv=\"refresh\""), "the page does not refresh itself:\n{dom}");
        ensure!(dom.contains("meta-1"), "no Raft member shown:\n{dom}");

        // A phone-sized screenshot: a PNG that is not trivially small.
        let shot = c.dir().join("status.png");
        run_chromium(c.dir(), &url, &[&format!("--screenshot={}", shot.display()), "--window-size=412,915"])?;
        let png = std::fs::read(&shot).context("read the screenshot")?;
        ensure!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000, "not a screenshot: {} bytes", png.len());
        if let Ok(keep) = std::env::var("COFFER_IT_SCREENSHOT") {
            std::fs::copy(&shot, keep)?;
        }
        Ok(())
    })
}
