//! The admin HTTP server: `/livez`, `/readyz`, `/metrics` and the pages a
//! daemon adds. Every handler answers within a bound (a hook that hangs
//! gets `HOOK_DEADLINE` and then a 503 or a scrape without its samples), so
//! a stuck dependency never makes a probe hang past kubelet's timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::metrics::{self, Sample};

/// A boxed future, the shape of every hook.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

type Check = Arc<dyn Fn() -> BoxFuture<Result<(), String>> + Send + Sync>;
type Scrape = Arc<dyn Fn() -> BoxFuture<Vec<Sample>> + Send + Sync>;
type Page = Arc<dyn Fn() -> BoxFuture<Reply> + Send + Sync>;

/// The longest a readiness check, scrape hook or page may take.
pub const HOOK_DEADLINE: Duration = Duration::from_secs(5);

/// A page's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn html(status: u16, body: String) -> Self {
        Reply { status, content_type: "text/html; charset=utf-8", body }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Reply { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }

    pub fn json(status: u16, body: String) -> Self {
        Reply { status, content_type: "application/json", body }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, [(header::CONTENT_TYPE, self.content_type), (header::CACHE_CONTROL, "no-store")], self.body)
            .into_response()
    }
}

/// An admin server being assembled (see the crate documentation).
pub struct AdminServer {
    role: &'static str,
    ready: Vec<Check>,
    scrape: Vec<Scrape>,
    pages: Vec<(&'static str, Page)>,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pages: Vec<&str> = self.pages.iter().map(|(p, _)| *p).collect();
        f.debug_struct("AdminServer").field("role", &self.role).field("pages", &pages).finish_non_exhaustive()
    }
}

impl AdminServer {
    /// `role` names the daemon in `coffer_build_info` (meta, storage, agent).
    pub fn new(role: &'static str) -> Self {
        AdminServer { role, ready: Vec::new(), scrape: Vec::new(), pages: Vec::new() }
    }

    /// Adds a readiness condition: `/readyz` is 200 only when every one
    /// holds, else 503 with the first failure's reason. Without any,
    /// a server that answers is ready.
    pub fn readiness<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.ready.push(Arc::new(move || Box::pin(check())));
        self
    }

    /// Adds a hook whose samples every `/metrics` scrape includes.
    pub fn scrape<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Sample>> + Send + 'static,
    {
        self.scrape.push(Arc::new(move || Box::pin(hook())));
        self
    }

    /// Serves `page` at `path` (GET only).
    pub fn page<F, Fut>(mut self, path: &'static str, page: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        self.pages.push((path, Arc::new(move || Box::pin(page()))));
        self
    }

    /// The routes, for a caller that serves them itself (the tests do).
    pub fn router(self) -> Router {
        let role = self.role;
        let ready = Arc::new(self.ready);
        let scrape = Arc::new(self.scrape);
        let mut router = Router::new()
            .route("/livez", get(|| async { Reply::text(200, "ok\n") }))
            .route(
                "/readyz",
                get(move || {
                    let ready = ready.clone();
                    async move {
                        match readiness(&ready).await {
                            Ok(()) => Reply::text(200, "ok\n"),
                            Err(why) => Reply::text(503, format!("not ready: {why}\n")),
                        }
                    }
                }),
            )
            .route(
                "/metrics",
                get(move || {
                    let scrape = scrape.clone();
                    async move {
                        let mut samples = Vec::new();
                        for hook in scrape.iter() {
                            match tokio::time::timeout(HOOK_DEADLINE, hook()).await {
                                Ok(s) => samples.extend(s),
                                Err(_) => tracing::warn!("a metrics hook took longer than {HOOK_DEADLINE:?}; left out"),
                            }
                        }
                        Reply {
                            status: 200,
                            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            body: metrics::encode(role, samples),
                        }
                    }
                }),
            );
        for (path, page) in self.pages {
            router = router.route(
                path,
                get(move || {
                    let page = page.clone();
                    async move {
                        match tokio::time::timeout(HOOK_DEADLINE, page()).await {
                            Ok(reply) => reply,
                            Err(_) => Reply::text(503, format!("no answer within {HOOK_DEADLINE:?}\n")),
                        }
                    }
                }),
            );
        }
        router
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router()).with_graceful_shutdown(shutdown).await
    }

    /// Serves on a task of its own until `shutdown` resolves; an error of
    /// the server is logged (the daemon goes on: its data path does not
    /// depend on the admin port).
    pub fn spawn(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tokio::spawn(async move {
            if let Err(e) = self.serve(listener, shutdown).await {
                tracing::warn!(%addr, error = %e, "admin port stopped");
            }
        })
    }
}

async fn readiness(checks: &[Check]) -> Result<(), String> {
    for check in checks {
        match tokio::time::timeout(HOOK_DEADLINE, check()).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(why),
            Err(_) => return Err(format!("readiness check took longer than {HOOK_DEADLINE:?}")),
        }
    }
    Ok(())
}
