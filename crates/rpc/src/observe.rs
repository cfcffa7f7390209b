//! What every gRPC server adds besides coffer's services: a tower layer
//! that counts each call and times it (`coffer_grpc_requests_total`,
//! `coffer_grpc_request_duration_seconds`, by service and method) and runs
//! it in a `grpc` span (service, method, code: what a JSON log line and an
//! OpenTelemetry trace show of the call), the standard `grpc.health.v1`
//! service, and server reflection.
//!
//! The code of a call is read from the response headers: tonic sends an
//! error of a unary call, and any refusal, as a trailers-only response
//! whose headers hold `grpc-status`; a response without it in the headers
//! is counted `OK`. A stream that fails after it has started sending is
//! therefore counted `OK`, and a stream's duration is the time to its
//! first response, not to its end.

use std::task::{Context, Poll};
use std::time::Instant;

use tonic::body::Body;
use tracing::Instrument;

/// The layer that records every call.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> tower_layer::Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Metrics<S> {
    inner: S,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// `(service, method)` of a gRPC path `/package.Service/Method`.
fn split(path: &str) -> (String, String) {
    let p = path.trim_start_matches('/');
    match p.split_once('/') {
        Some((s, m)) => (s.to_string(), m.to_string()),
        None => (p.to_string(), String::new()),
    }
}

/// The name of a gRPC status code as grpc-go's `Code.String` writes it
/// (`OK`, `NotFound`, `Unavailable`), the usual label in dashboards.
fn code_name(raw: Option<&http::HeaderValue>) -> String {
    let n = raw.and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<i32>().ok()).unwrap_or(0);
    match tonic::Code::from_i32(n) {
        tonic::Code::Ok => "OK".to_string(),
        code => format!("{code:?}"),
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for Metrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (service, method) = split(req.uri().path());
        let started = Instant::now();
        // `otel.name` names the span in a trace as OpenTelemetry's RPC
        // conventions do; the other fields are those conventions' keys.
        let span = tracing::info_span!(
            "grpc",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let fut = span.in_scope(|| self.inner.call(req));
        Box::pin(
            async move {
                let res = fut.await;
                let code = match &res {
                    Ok(r) => code_name(r.headers().get("grpc-status")),
                    Err(_) => "Unknown".to_string(),
                };
                tracing::Span::current().record("rpc.grpc.status_code", code.as_str());
                coffer_admin::metrics::events().grpc_call(&service, &method, &code, started.elapsed().as_secs_f64());
                res
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_codes_are_named_as_grpc_names_them() {
        assert_eq!(split("/coffer.v1.Catalog/GetRepo"), ("coffer.v1.Catalog".into(), "GetRepo".into()));
        assert_eq!(code_name(None), "OK");
        assert_eq!(code_name(Some(&http::HeaderValue::from_static("14"))), "Unavailable");
        assert_eq!(code_name(Some(&http::HeaderValue::from_static("0"))), "OK");
    }
}
