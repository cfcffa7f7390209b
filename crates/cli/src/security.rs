//! Transport security from the command line: `--insecure` (`COFFER_INSECURE`)
//! or the three PEM files `--cacert`, `--cert`, `--key` (`COFFER_CACERT`,
//! `COFFER_CERT`, `COFFER_KEY`; for the daemons also the config-file keys
//! `insecure`, `cacert`, `cert`, `key`, which flags and environment
//! override). TLS is the default: without either, a process refuses to
//! start and says what to pass. Also `coffer certs`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use coffer_rpc::{Security, TlsPaths};

use crate::args::{CertsCommand, Global};
use crate::config::UsageError;

/// The TLS settings a daemon's config file may carry.
#[derive(Debug, Default, Clone)]
pub struct FileTls {
    pub insecure: Option<bool>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg))
}

/// The security `g` (over `file`) asks for, with a warning when it is
/// plain text.
pub fn resolve(g: &Global, file: &FileTls) -> Result<Security> {
    if g.insecure || file.insecure == Some(true) {
        tracing::warn!(
            "running with --insecure: plain-text gRPC, no certificates, no peer authentication; \
             use it only on a trusted network"
        );
        return Ok(Security::Insecure);
    }
    let cacert = g.cacert.clone().or_else(|| file.cacert.clone());
    let cert = g.cert.clone().or_else(|| file.cert.clone());
    let key = g.key.clone().or_else(|| file.key.clone());
    let (Some(ca), Some(cert), Some(key)) = (cacert.clone(), cert.clone(), key.clone()) else {
        let missing: Vec<&str> = [("--cacert", cacert.is_none()), ("--cert", cert.is_none()), ("--key", key.is_none())]
            .into_iter()
            .filter_map(|(n, m)| m.then_some(n))
            .collect();
        return Err(usage(format!(
            "TLS is on by default and {} is not set: give --cacert, --cert and --key (or COFFER_CACERT, \
             COFFER_CERT and COFFER_KEY; `coffer certs init-ca` and `coffer certs issue` make them), \
             or --insecure (COFFER_INSECURE=1) to talk plain text",
            missing.join(", ")
        )));
    };
    Security::tls(TlsPaths { ca, cert, key }).map_err(|e| usage(format!("cannot use the TLS files: {e}")))
}

/// Sets the process default from `g`, for client commands.
pub fn init_client(g: &Global) -> Result<()> {
    coffer_rpc::tls::set_process_default(resolve(g, &FileTls::default())?);
    Ok(())
}

/// `coffer certs init-ca`, `issue` and `probe`.
pub async fn certs(c: CertsCommand, g: &Global) -> Result<()> {
    let json = g.json;
    match c {
        CertsCommand::Probe { addr, role } => {
            let role: coffer_rpc::CertRole = role.parse().map_err(usage)?;
            let security = resolve(g, &FileTls::default())?;
            let peer = coffer_rpc::tls::probe(&addr, &security, role).await.map_err(anyhow::Error::msg)?;
            if json {
                println!("{}", serde_json::json!({"role": peer.role.as_str(), "name": peer.name}));
            } else {
                println!("{addr}: {peer}");
            }
        }
        CertsCommand::InitCa { dir } => {
            coffer_pki::init_ca(&dir).with_context(|| format!("create a CA in {}", dir.display()))?;
            let (crt, key) = (dir.join(coffer_pki::CA_CERT), dir.join(coffer_pki::CA_KEY));
            report(json, "ca", &crt, &key);
        }
        CertsCommand::Issue { ca, role, name, dns, ip, out } => {
            let leaf = coffer_pki::Leaf { role, name, dns, ips: ip };
            let (crt, key) = coffer_pki::issue_to(&ca, &leaf, &out)
                .map_err(|e| match e {
                    coffer_pki::PkiError::Invalid { .. } => usage(e.to_string()),
                    e => anyhow::Error::new(e),
                })
                .context("issue the certificate")?;
            report(json, &leaf.role, &crt, &key);
        }
    }
    Ok(())
}

fn report(json: bool, role: &str, crt: &Path, key: &Path) {
    if json {
        println!("{}", serde_json::json!({"role": role, "cert": crt, "key": key}));
    } else {
        println!("wrote {} and {} (mode 0600)", crt.display(), key.display());
    }
}
