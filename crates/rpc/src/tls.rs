//! Transport security: mutual TLS with rustls (the ring provider only), or
//! plain text when the operator says `--insecure`.
//!
//! ```text
//!   Security::Insecure | Security::Tls(TlsFiles { ca, cert, key })
//!        │                          │  files re-read when their mtime/size change (checked at most every RELOAD_CHECK)
//!        ▼                          ▼
//!   Server: accept ─► peek 1st byte ─► TLS handshake (client cert required, CA-verified)
//!                       │ plain text on a TLS port: served only to refuse every call, saying why
//!                       ▼
//!                   Conn { ConnInfo { peer: coffer://ROLE/NAME } } ─► policy table ─► services
//!   Client: TCP ─► TLS handshake (server cert CA-verified, host name against DNS/IP SANs,
//!                  role checked: meta for metadata endpoints, storage for storage nodes)
//! ```
//!
//! Every process holds one `Security`: the binary sets a process-wide
//! default (`set_process_default`) from its flags; `ChannelConfig`,
//! `MetaClient`, `ShardPool` and `Server` take it unless given another one
//! (`coffer dev` runs nodes of several roles in one process, each with its
//! own). A library that never sets one talks plain text: choosing is the
//! binary's job, and the binary refuses to start without a choice.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::identity::{CertRole, ConnInfo, Peer};

/// How often, at most, the certificate files are looked at for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);
/// How long a peer may take to open a connection (first byte, handshake).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Where a process's CA, certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// The CA certificate(s) that sign every peer (PEM).
    pub ca: PathBuf,
    /// This process's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS client verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

/// How a process talks to its peers.
#[derive(Clone, Debug)]
pub enum Security {
    /// Plain text, no identities (`--insecure`).
    Insecure,
    /// Mutual TLS with the certificates in these files.
    Tls(Arc<TlsFiles>),
}

impl Security {
    /// Mutual TLS from `paths`; the files are read now, so that a bad file
    /// is an error at start-up.
    pub fn tls(paths: TlsPaths) -> Result<Security, TlsError> {
        Ok(Security::Tls(Arc::new(TlsFiles::load(paths)?)))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Security::Tls(_))
    }

    /// This process's own identity, with TLS.
    pub fn identity(&self) -> Option<Peer> {
        match self {
            Security::Insecure => None,
            Security::Tls(f) => Some(f.current().identity.clone()),
        }
    }
}

static PROCESS_DEFAULT: RwLock<Option<Security>> = RwLock::new(None);

/// Sets the security every channel and server of this process uses unless
/// given another one.
pub fn set_process_default(security: Security) {
    *PROCESS_DEFAULT.write().unwrap_or_else(|p| p.into_inner()) = Some(security);
}

/// The process default (plain text if the binary never chose).
pub fn process_default() -> Security {
    PROCESS_DEFAULT.read().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or(Security::Insecure)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// PEM certificates, as DER.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in the file".into());
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn parse_err(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Parse { path: path.to_path_buf(), reason: reason.into() }
}

/// One generation of the files, parsed.
struct Loaded {
    identity: Peer,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    server: Arc<ServerConfig>,
    clients: Mutex<Vec<(CertRole, Arc<ClientConfig>)>>,
}

type Stamp = [Option<(SystemTime, u64)>; 3];

struct State {
    loaded: Arc<Loaded>,
    stamp: Stamp,
    checked: Instant,
}

/// The CA, certificate and key files of a process, re-read when they
/// change: cert-manager and friends rotate them in place. A new file that
/// does not load is logged and the previous generation stays in use.
pub struct TlsFiles {
    paths: TlsPaths,
    state: Mutex<State>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles").field("paths", &self.paths).finish_non_exhaustive()
    }
}

fn stamp(paths: &TlsPaths) -> Stamp {
    let one = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
    [one(&paths.ca), one(&paths.cert), one(&paths.key)]
}

impl TlsFiles {
    pub fn load(paths: TlsPaths) -> Result<TlsFiles, TlsError> {
        let stamp = stamp(&paths);
        let loaded = Arc::new(load(&paths)?);
        Ok(TlsFiles { paths, state: Mutex::new(State { loaded, stamp, checked: Instant::now() }) })
    }

    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    /// The current generation, re-reading the files if they changed and
    /// were last looked at more than `RELOAD_CHECK` ago.
    fn current(&self) -> Arc<Loaded> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.checked.elapsed() >= RELOAD_CHECK {
            st.checked = Instant::now();
            let now = stamp(&self.paths);
            if now != st.stamp {
                st.stamp = now;
                match load(&self.paths) {
                    Ok(l) => {
                        tracing::info!(cert = %self.paths.cert.display(), identity = %l.identity, "TLS certificate files reloaded");
                        st.loaded = Arc::new(l);
                    }
                    Err(e) => tracing::error!(
                        error = %e,
                        "the changed TLS certificate files do not load; keeping the previous ones"
                    ),
                }
            }
        }
        st.loaded.clone()
    }

    fn server_config(&self) -> Arc<ServerConfig> {
        self.current().server.clone()
    }

    fn client_config(&self, expect: CertRole) -> Result<Arc<ClientConfig>, TlsError> {
        let l = self.current();
        let mut clients = l.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = clients.iter().find(|(r, _)| *r == expect) {
            return Ok(c.clone());
        }
        let p = provider();
        let inner = WebPkiServerVerifier::builder_with_provider(l.roots.clone(), p.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut cfg = ClientConfig::builder_with_provider(p)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RoleVerifier { inner, expect }))
            .with_client_auth_cert(l.chain.clone(), l.key.clone_key())?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let cfg = Arc::new(cfg);
        clients.push((expect, cfg.clone()));
        Ok(cfg)
    }
}

fn load(paths: &TlsPaths) -> Result<Loaded, TlsError> {
    let ca = certs_from_pem(&read(&paths.ca)?).map_err(|e| parse_err(&paths.ca, e))?;
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c).map_err(|e| parse_err(&paths.ca, format!("not a usable CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);
    let chain = certs_from_pem(&read(&paths.cert)?).map_err(|e| parse_err(&paths.cert, e))?;
    let identity = Peer::from_cert_der(&chain[0]).map_err(|e| parse_err(&paths.cert, e))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&paths.key)?)
        .map_err(|e| parse_err(&paths.key, format!("no usable private key: {e}")))?;
    let p = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), p.clone()).build()?;
    let mut server = ServerConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| parse_err(&paths.key, format!("does not match the certificate {}: {e}", paths.cert.display())))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded { identity, roots, chain, key: Arc::new(key), server: Arc::new(server), clients: Mutex::new(Vec::new()) })
}

/// The usual CA and host-name verification, then the role: a metadata
/// endpoint must present a meta certificate, a storage node a storage one.
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expect: CertRole,
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        let peer = Peer::from_cert_der(end_entity).map_err(rustls::Error::General)?;
        if peer.role != self.expect {
            return Err(rustls::Error::General(format!(
                "the server presented a {peer} where a {} certificate is expected",
                self.expect
            )));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A readable account of a failed client handshake with `addr`.
fn explain_client_error(addr: &str, e: &io::Error) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidMessage(_)) | Some(rustls::Error::InappropriateMessage { .. }) => {
            format!("{addr} does not speak TLS (it answered in plain text): is it running with --insecure?")
        }
        Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
        )) => {
            format!("the certificate of {addr} is not signed by our CA (--cacert): wrong cluster or wrong CA file?")
        }
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
        | Some(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
            format!(
                "the certificate of {addr} does not name that host: issue it with --dns/--ip for the address peers use"
            )
        }
        Some(rustls::Error::AlertReceived(alert)) => {
            format!("{addr} refused the TLS handshake ({alert:?}): is our certificate signed by the cluster's CA?")
        }
        Some(other) => format!("TLS handshake with {addr}: {other}"),
        None if matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset) => format!(
            "{addr} closed the connection during the TLS handshake: is it running with --insecure, \
             or did it refuse our certificate?"
        ),
        None => format!("TLS handshake with {addr}: {e}"),
    }
}

/// Opens TLS connections for a tonic channel.
#[derive(Clone)]
pub(crate) struct TlsConnector {
    pub(crate) files: Arc<TlsFiles>,
    pub(crate) expect: CertRole,
    /// For TCP connect and handshake together. It is applied here rather
    /// than by the endpoint so that a peer that accepts but never answers
    /// (a stalled process) fails as a connect error, which tonic reports
    /// UNAVAILABLE and callers retry elsewhere.
    pub(crate) timeout: Duration,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = BoxFuture<Result<Self::Response, io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (files, expect, timeout) = (self.files.clone(), self.expect, self.timeout);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connect(&files, expect, &uri)).await {
                Ok(conn) => conn.map(hyper_util::rt::TokioIo::new),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no TLS connection to {uri} within {timeout:?}"),
                )),
            }
        })
    }
}

async fn connect(
    files: &TlsFiles,
    expect: CertRole,
    uri: &http::Uri,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, io::Error> {
    let host = uri.host().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
    let port = uri.port_u16().unwrap_or(443);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addr = if bare.contains(':') { format!("[{bare}]:{port}") } else { format!("{bare}:{port}") };
    let name = ServerName::try_from(bare.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{bare:?} is not a host name: {e}")))?;
    let config = files.client_config(expect).map_err(io::Error::other)?;
    let tcp = TcpStream::connect(&addr).await?;
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| io::Error::new(e.kind(), explain_client_error(&addr, &e)))
}

/// Connects to `addr` with `security`, completes the TLS handshake
/// expecting a server certificate of role `expect`, and returns the
/// identity the server presented: for diagnostics, and to see a rotated
/// certificate being served.
pub async fn probe(addr: &str, security: &Security, expect: CertRole) -> Result<Peer, String> {
    let Security::Tls(files) = security else { return Err("probe needs TLS".into()) };
    let uri: http::Uri = format!("https://{addr}").parse().map_err(|e| format!("bad address {addr:?}: {e}"))?;
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect(files, expect, &uri))
        .await
        .map_err(|_| format!("no TLS handshake with {addr} within {HANDSHAKE_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let der = conn.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or("no server certificate")?;
    Peer::from_cert_der(der)
}

/// One accepted connection, plain or TLS, with what the server learnt
/// about its peer.
pub struct Conn {
    io: ConnIo,
    info: ConnInfo,
}

enum ConnIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            ConnIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.io {
            ConnIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            ConnIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ConnIo::Plain(s) => s.is_write_vectored(),
            ConnIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            ConnIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            ConnIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The first byte the peer sent, without consuming it.
async fn first_byte(tcp: &TcpStream) -> Option<u8> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut b)).await {
        Ok(Ok(1)) => Some(b[0]),
        _ => None,
    }
}

/// Opens one accepted connection: the TLS handshake and the peer's
/// identity, or the reason to drop it.
async fn open(security: &Security, tcp: TcpStream, remote: SocketAddr) -> Option<Conn> {
    let first = first_byte(&tcp).await?;
    match security {
        Security::Insecure => {
            if first == TLS_HANDSHAKE_RECORD {
                tracing::warn!(%remote, "a TLS client connected, but this server runs with --insecure (plain text); dropping it");
                return None;
            }
            Some(Conn { io: ConnIo::Plain(tcp), info: ConnInfo { remote: Some(remote), ..ConnInfo::default() } })
        }
        Security::Tls(files) => {
            if first != TLS_HANDSHAKE_RECORD {
                tracing::warn!(%remote, "a plain-text client connected to this TLS server (is it running with --insecure?); refusing its calls");
                let info = ConnInfo { remote: Some(remote), peer: None, plaintext_on_tls: true };
                return Some(Conn { io: ConnIo::Plain(tcp), info });
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(files.server_config());
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::warn!(%remote, error = %e, "TLS handshake refused");
                    return None;
                }
                Err(_) => {
                    tracing::warn!(%remote, "TLS handshake timed out");
                    return None;
                }
            };
            let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Peer::from_cert_der(c));
            let peer = match peer {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    tracing::warn!(%remote, error = %e, "client certificate carries no coffer identity; dropping");
                    return None;
                }
                None => {
                    tracing::warn!(%remote, "client presented no certificate; dropping");
                    return None;
                }
            };
            let info = ConnInfo { remote: Some(remote), peer: Some(peer), plaintext_on_tls: false };
            Some(Conn { io: ConnIo::Tls(Box::new(tls)), info })
        }
    }
}

/// The connections a server serves: accepted on `listener`, opened (TLS
/// handshakes run concurrently, each bounded by `HANDSHAKE_TIMEOUT`), in
/// the order they are ready. Dropping the stream closes the listener.
pub(crate) fn incoming(
    listener: TcpListener,
    security: Security,
) -> tokio_stream::wrappers::ReceiverStream<Result<Conn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((tcp, remote)) => {
                    // Catalog, Raft and shard traffic is request/response:
                    // with Nagle's algorithm on, each small reply waits for
                    // the peer's delayed ACK (~40 ms).
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY");
                    }
                    let (tx, security) = (tx.clone(), security.clone());
                    tokio::spawn(async move {
                        if let Some(conn) = open(&security, tcp, remote).await {
                            let _ = tx.send(Ok(conn)).await;
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off a
                    // little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
