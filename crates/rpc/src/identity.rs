//! Who is calling: the role of the caller's certificate (transport
//! identity, from mutual TLS) and the bearer token it presents
//! (`authorization: Bearer <token>`, repository access).
//!
//! The metadata plane's authorisation asks this module, and nothing else,
//! for both, so that the certificate check and the token check meet in one
//! place. Tokens travel as gRPC metadata; `Bearer` is the client-side
//! interceptor that attaches one to every call of a channel.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

use crate::RpcError;

/// The metadata key a token travels under.
pub const AUTHORIZATION: &str = "authorization";

/// The role a peer's certificate carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertRole {
    /// A metadata node: Raft, joining.
    Meta,
    /// A storage node: registration, heartbeats, shard traffic.
    Storage,
    /// An agent: needs a repository token besides.
    Client,
    /// A cluster administrator (a person's client certificate).
    Admin,
}

impl CertRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            CertRole::Meta => "meta",
            CertRole::Storage => "storage",
            CertRole::Client => "client",
            CertRole::Admin => "admin",
        }
    }
}

/// The role of the verified certificate the caller presented, if any.
/// Plain-text connections (`--insecure`) have none.
pub fn cert_role<T>(_req: &Request<T>) -> Option<CertRole> {
    None
}

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
        assert!(cert_role(&req).is_none());
    }
}
