//! Who is on the other end of a connection: the role and name that the
//! peer's certificate carries, as the SAN URI `coffer://<role>/<name>`
//! (written by `coffer certs issue`, see `coffer-pki`).
//!
//! A TLS server puts the verified peer into every request's extensions
//! (`ConnInfo`); services read it with `peer`, `cert_role` or
//! `require_role`. With `--insecure` there is no peer identity: `peer`
//! returns `None`, and authorisation by certificate is off (bearer tokens,
//! checked by the metadata services, are not).
//!
//! Tokens travel as gRPC metadata (`authorization: Bearer <token>`);
//! `Bearer` is the client-side interceptor that attaches one to every call
//! of a channel, `bearer_token` reads it on the server.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

use crate::RpcError;

/// The role a certificate gives its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CertRole {
    /// A metadata (Raft) node.
    Meta,
    /// A storage node.
    Storage,
    /// An agent or a person running client commands on repositories.
    Client,
    /// A cluster administrator: a client that may also change membership,
    /// drain, decommission, scrub and collect garbage.
    Admin,
}

impl CertRole {
    pub const ALL: [CertRole; 4] = [CertRole::Meta, CertRole::Storage, CertRole::Client, CertRole::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            CertRole::Meta => "meta",
            CertRole::Storage => "storage",
            CertRole::Client => "client",
            CertRole::Admin => "admin",
        }
    }
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CertRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CertRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown certificate role {s:?} (expected meta, storage, client or admin)"))
    }
}

/// A verified peer: the role and name of its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    pub role: CertRole,
    pub name: String,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} certificate {:?}", self.role, self.name)
    }
}

/// The URI scheme of the role SAN.
pub const ROLE_URI_PREFIX: &str = "coffer://";

impl Peer {
    /// Parses one SAN URI; `None` for a URI that is not a coffer role URI.
    pub fn from_uri(uri: &str) -> Option<Result<Peer, String>> {
        let rest = uri.strip_prefix(ROLE_URI_PREFIX)?;
        Some(match rest.split_once('/') {
            Some((role, name)) if !name.is_empty() && !name.contains('/') => {
                role.parse().map(|role| Peer { role, name: name.to_string() })
            }
            _ => Err(format!("malformed role URI {uri:?} (expected coffer://ROLE/NAME)")),
        })
    }

    /// The identity in a DER certificate: its one `coffer://` SAN URI.
    pub fn from_cert_der(der: &[u8]) -> Result<Peer, String> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("unparsable certificate: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("bad subjectAltName: {e}"))?
            .ok_or_else(|| "the certificate has no subjectAltName, so no coffer role".to_string())?;
        let mut found = None;
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Some(p) = Peer::from_uri(uri) {
                    let p = p?;
                    if found.is_some() {
                        return Err("the certificate has more than one coffer:// role URI".into());
                    }
                    found = Some(p);
                }
            }
        }
        found.ok_or_else(|| {
            "the certificate carries no coffer://ROLE/NAME URI (issue it with `coffer certs issue`)".into()
        })
    }
}

/// What a server knows about the connection a request came on; tonic puts
/// it into every request's extensions.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The verified peer, on a TLS connection.
    pub peer: Option<Peer>,
    /// A plain-text connection to a server that requires TLS: every call on
    /// it is refused with a message saying so.
    pub plaintext_on_tls: bool,
}

/// The verified peer of a request, when the server runs with TLS.
pub fn peer<T>(req: &Request<T>) -> Option<Peer> {
    req.extensions().get::<ConnInfo>().and_then(|c| c.peer.clone())
}

/// The role of the caller's certificate, when the server runs with TLS.
/// This is the one question the token authorisation asks about transport
/// identity: an `admin` certificate is a cluster administrator.
pub fn cert_role<T>(req: &Request<T>) -> Option<CertRole> {
    req.extensions().get::<ConnInfo>().and_then(|c| c.peer.as_ref().map(|p| p.role))
}

/// Refuses a request whose certificate has none of `roles`, with
/// PERMISSION_DENIED naming the roles needed. A request without transport
/// identity (a server running `--insecure`) passes: there is nothing to
/// check, and the operator chose that.
pub fn require_role<T>(req: &Request<T>, roles: &[CertRole]) -> Result<(), Status> {
    match req.extensions().get::<ConnInfo>() {
        Some(ConnInfo { peer: Some(p), .. }) => check(p, roles, "this call"),
        Some(ConnInfo { plaintext_on_tls: true, .. }) => Err(plaintext_refusal()),
        _ => Ok(()),
    }
}

pub(crate) fn check(p: &Peer, roles: &[CertRole], what: &str) -> Result<(), Status> {
    if roles.contains(&p.role) {
        return Ok(());
    }
    let needed = roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or ");
    Err(Status::permission_denied(format!("{what} needs a {needed} certificate; the caller presented {p}")))
}

pub(crate) fn plaintext_refusal() -> Status {
    Status::unauthenticated(
        "this server requires TLS, and the client connected in plain text: is the client running with --insecure? \
         Give it --cacert, --cert and --key instead",
    )
}

/// The metadata key a token travels under.
pub const AUTHORIZATION: &str = "authorization";

/// The bearer token of a request: `None` when it carries none, an
/// UNAUTHENTICATED status when the header is not a bearer token.
pub fn bearer_token<T>(req: &Request<T>) -> Result<Option<&str>, Status> {
    let Some(value) = req.metadata().get(AUTHORIZATION) else { return Ok(None) };
    let text = value.to_str().map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(Some(token.trim()))
        }
        _ => Err(Status::unauthenticated("the authorization header must be `Bearer <token>`")),
    }
}

/// Attaches a bearer token (or nothing) to every request it intercepts.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself: Debug output ends up in logs.
        f.write_str(if self.0.is_some() { "Bearer(<token>)" } else { "Bearer(none)" })
    }
}

impl Bearer {
    /// No token: requests go out as they are.
    pub fn none() -> Self {
        Self(None)
    }

    /// `token` as a header value; refused if it is empty or not printable
    /// ASCII (a token read from a file with stray bytes).
    pub fn new(token: &str) -> Result<Self, RpcError> {
        let token = token.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(RpcError::BadToken { reason: "a token is printable ASCII without spaces".into() });
        }
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|e| RpcError::BadToken { reason: e.to_string() })?;
        let mut value: MetadataValue<Ascii> = value;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Adds the token to one request built by hand.
    pub fn attach<T>(&self, req: &mut Request<T>) {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        self.attach(&mut req);
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_uris_parse_and_bad_ones_are_errors() {
        assert_eq!(
            Peer::from_uri("coffer://storage/site-a-0"),
            Some(Ok(Peer { role: CertRole::Storage, name: "site-a-0".into() }))
        );
        assert_eq!(Peer::from_uri("coffer://admin/ops").unwrap().unwrap().role, CertRole::Admin);
        assert!(Peer::from_uri("https://example.com/x").is_none());
        for bad in ["coffer://root/x", "coffer://meta/", "coffer://meta", "coffer://meta/a/b"] {
            assert!(matches!(Peer::from_uri(bad), Some(Err(_))), "{bad}");
        }
        for r in CertRole::ALL {
            assert_eq!(r.as_str().parse::<CertRole>(), Ok(r));
        }
    }

    #[test]
    fn require_role_names_the_role_needed() {
        let mut req = Request::new(());
        req.extensions_mut().insert(ConnInfo {
            peer: Some(Peer { role: CertRole::Storage, name: "s1".into() }),
            ..ConnInfo::default()
        });
        assert_eq!(cert_role(&req), Some(CertRole::Storage));
        let err = require_role(&req, &[CertRole::Meta]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("needs a meta certificate"), "{}", err.message());
        assert!(err.message().contains("storage certificate \"s1\""), "{}", err.message());
        require_role(&req, &[CertRole::Meta, CertRole::Storage]).unwrap();
        // No transport identity: nothing to check.
        require_role(&Request::new(()), &[CertRole::Meta]).unwrap();
        assert_eq!(peer(&Request::new(())), None);
    }

    #[test]
    fn certificates_from_coffer_pki_carry_their_role() {
        let ca = coffer_pki::new_ca("t").unwrap();
        let leaf = coffer_pki::Leaf { role: "meta".into(), name: "m1".into(), dns: vec![], ips: vec![] };
        let pem = coffer_pki::issue(&ca, &leaf).unwrap();
        let der = crate::tls::certs_from_pem(pem.cert.as_bytes()).unwrap().remove(0);
        assert_eq!(Peer::from_cert_der(&der), Ok(Peer { role: CertRole::Meta, name: "m1".into() }));
        let ca_der = crate::tls::certs_from_pem(ca.cert.as_bytes()).unwrap().remove(0);
        assert!(Peer::from_cert_der(&ca_der).is_err());
    }
}

#[cfg(test)]
mod bearer_tests {
    use super::*;

    #[test]
    fn a_bearer_token_round_trips_and_bad_headers_are_refused() {
        let b = Bearer::new("cft_0011223344556677_abc\n").unwrap();
        let mut req = Request::new(());
        b.attach(&mut req);
        assert_eq!(bearer_token(&req).unwrap(), Some("cft_0011223344556677_abc"));
        assert!(!format!("{b:?}").contains("cft_"), "Debug never shows the token");

        let none = Request::new(());
        assert_eq!(bearer_token(&none).unwrap(), None);
        for bad in ["Basic abc", "Bearer", "Bearer   ", "token"] {
            let mut req = Request::new(());
            req.metadata_mut().insert(AUTHORIZATION, bad.parse().unwrap());
            assert_eq!(bearer_token(&req).unwrap_err().code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        for bad in ["", "two words", "tab\there", "é"] {
            assert!(Bearer::new(bad).is_err(), "{bad:?}");
        }
        assert!(cert_role(&req).is_none(), "no TLS connection, no certificate role");
    }
}
