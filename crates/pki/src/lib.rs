//! Certificates for people who have no PKI, the way `cockroach cert` does
//! it: a self-signed CA (`ca.crt`, `ca.key`) and certificates it signs for
//! the processes of a cluster (`NAME.crt`, `NAME.key`).
//!
//! A certificate carries its coffer role and name as a SAN URI,
//! `coffer://<role>/<name>` (role `meta`, `storage`, `client` or `admin`),
//! next to the DNS and IP SANs that peers verify host names against. The
//! rpc layer (`coffer_rpc::identity`) reads that URI back on both sides of
//! every connection. Keys are ECDSA P-256 (rcgen with ring); key files are
//! written with mode 0600.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The CA certificate's file name in a CA directory.
pub const CA_CERT: &str = "ca.crt";
/// The CA key's file name in a CA directory.
pub const CA_KEY: &str = "ca.key";
/// The URI scheme of the role SAN.
pub const ROLE_URI_SCHEME: &str = "coffer://";

/// How long generated certificates are valid.
const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 825;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid { what: &'static str, value: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_path_buf(), source }
}

/// A certificate and key in PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// What to put in a certificate.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// `meta`, `storage`, `client` or `admin`.
    pub role: String,
    /// The process or person it names (letters, digits, `-`, `_`, `.`).
    pub name: String,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// The roles a certificate can carry.
pub const ROLES: [&str; 4] = ["meta", "storage", "client", "admin"];

/// Whether `name` is a valid certificate name: it lands in a URI path and a
/// file name.
pub fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(PkiError::Invalid {
            what: "name",
            value: name.to_string(),
            reason: "use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'".into(),
        })
    }
}

/// How long before its issue a certificate is already valid. A node whose
/// clock runs behind the issuer's would otherwise refuse every peer's
/// certificate as not yet valid (the chaos suite found a node 2 days behind
/// cut off from its cluster); a week covers a clock that was never set
/// right, and a certificate that is valid early reveals nothing (its key
/// did not exist before it was issued).
pub const BACKDATE: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

fn validity(params: &mut CertificateParams, days: i64) {
    let start = std::time::SystemTime::now() - BACKDATE;
    let end = std::time::SystemTime::now() + std::time::Duration::from_secs(days as u64 * 86_400);
    params.not_before = start.into();
    params.not_after = end.into();
}

fn random_serial(params: &mut CertificateParams) {
    // The clock in nanoseconds and the process id: distinct for every
    // certificate one CA directory issues in practice, which is what
    // telling a renewed certificate from the old one needs.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut bytes = nanos.to_be_bytes().to_vec();
    bytes.extend_from_slice(&std::process::id().to_be_bytes());
    bytes[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&bytes));
}

/// A new self-signed CA.
pub fn new_ca(common_name: &str) -> Result<Pem, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "coffer");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, CA_DAYS);
    random_serial(&mut params);
    let cert = params.self_signed(&key)?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

/// A certificate for `leaf`, signed by the CA `ca`.
pub fn issue(ca: &Pem, leaf: &Leaf) -> Result<Pem, PkiError> {
    if !ROLES.contains(&leaf.role.as_str()) {
        return Err(PkiError::Invalid {
            what: "role",
            value: leaf.role.clone(),
            reason: format!("expected one of {}", ROLES.join(", ")),
        });
    }
    check_name(&leaf.name)?;
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, leaf.name.as_str());
    dn.push(DnType::OrganizationalUnitName, leaf.role.as_str());
    params.distinguished_name = dn;
    let uri = format!("{ROLE_URI_SCHEME}{}/{}", leaf.role, leaf.name);
    let mut sans = vec![SanType::URI(uri.as_str().try_into()?)];
    for d in &leaf.dns {
        sans.push(SanType::DnsName(d.as_str().try_into().map_err(|_| PkiError::Invalid {
            what: "DNS name",
            value: d.clone(),
            reason: "not a valid DNS name".into(),
        })?));
    }
    for ip in &leaf.ips {
        sans.push(SanType::IpAddress(*ip));
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    // Every process is both a server and a client of its peers.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, LEAF_DAYS);
    random_serial(&mut params);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

/// Writes `text` to `path`, creating it with `mode` (0600 for keys).
/// `overwrite` replaces an existing file through a rename, so a process
/// that re-reads it never sees half a file.
pub fn write_file(path: &Path, text: &str, mode: u32, overwrite: bool) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    if !overwrite && path.exists() {
        return Err(PkiError::Exists { path: path.to_path_buf() });
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// `coffer certs init-ca --dir D`: a new CA in `dir` (refuses to replace one).
pub fn init_ca(dir: &Path) -> Result<Pem, PkiError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    for f in [CA_CERT, CA_KEY] {
        if dir.join(f).exists() {
            return Err(PkiError::Exists { path: dir.join(f) });
        }
    }
    // A name of its own, so that two clusters' CAs are told apart by name
    // and not only by signature.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let ca = new_ca(&format!("coffer CA {:x}", nanos ^ u128::from(std::process::id())))?;
    write_file(&dir.join(CA_KEY), &ca.key, 0o600, false)?;
    write_file(&dir.join(CA_CERT), &ca.cert, 0o644, false)?;
    Ok(ca)
}

/// The CA kept in `dir` by `init_ca`.
pub fn load_ca(dir: &Path) -> Result<Pem, PkiError> {
    let cert = fs::read_to_string(dir.join(CA_CERT)).map_err(io(&dir.join(CA_CERT)))?;
    let key = fs::read_to_string(dir.join(CA_KEY)).map_err(io(&dir.join(CA_KEY)))?;
    Ok(Pem { cert, key })
}

/// The files `issue_to` writes for a certificate named `name` in `out`.
pub fn leaf_paths(out: &Path, name: &str) -> (PathBuf, PathBuf) {
    (out.join(format!("{name}.crt")), out.join(format!("{name}.key")))
}

/// `coffer certs issue`: a certificate for `leaf` signed by the CA in
/// `ca_dir`, written as `out/NAME.crt` and `out/NAME.key` (replacing older
/// ones: that is how a certificate is renewed), with a copy of the CA
/// certificate as `out/ca.crt` when `out` is another directory.
pub fn issue_to(ca_dir: &Path, leaf: &Leaf, out: &Path) -> Result<(PathBuf, PathBuf), PkiError> {
    let ca = load_ca(ca_dir)?;
    let pem = issue(&ca, leaf)?;
    fs::create_dir_all(out).map_err(io(out))?;
    let (crt, key) = leaf_paths(out, &leaf.name);
    write_file(&key, &pem.key, 0o600, true)?;
    write_file(&crt, &pem.cert, 0o644, true)?;
    let same_dir = fs::canonicalize(ca_dir).ok().zip(fs::canonicalize(out).ok()).is_some_and(|(a, b)| a == b);
    if !same_dir {
        write_file(&out.join(CA_CERT), &ca.cert, 0o644, true)?;
    }
    Ok((crt, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn leaf(role: &str, name: &str) -> Leaf {
        Leaf {
            role: role.into(),
            name: name.into(),
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
        }
    }

    #[test]
    fn init_ca_then_issue_writes_private_keys_and_refuses_a_second_ca() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        assert!(matches!(init_ca(dir.path()), Err(PkiError::Exists { .. })));
        let out = dir.path().join("out");
        let (crt, key) = issue_to(dir.path(), &leaf("storage", "s1"), &out).unwrap();
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(dir.path().join(CA_KEY)).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(fs::read_to_string(crt).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(out.join(CA_CERT).exists());
    }

    #[test]
    fn refuses_unknown_roles_and_bad_names() {
        let ca = new_ca("t").unwrap();
        assert!(matches!(issue(&ca, &leaf("root", "x")), Err(PkiError::Invalid { what: "role", .. })));
        for bad in ["", "a/b", "../x", "with space", ".hidden"] {
            assert!(matches!(issue(&ca, &leaf("meta", bad)), Err(PkiError::Invalid { what: "name", .. })), "{bad}");
        }
    }
}
