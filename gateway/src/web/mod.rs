//! The web service: the HTTP router (device API, health, metrics) and its
//! listeners. Only this module and its children know axum and HTTP; they
//! reach the database through the data service, never directly.

pub mod api;
pub mod auth;
pub mod error;
pub mod health;
pub mod intake;
pub mod redact;
pub mod serve;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::{Json, Router};

use crate::core::Core;
use crate::web::error::ApiError;
use serve::ClientAddr;

/// JSON bodies other than uploads are small.
pub const JSON_BODY_LIMIT: usize = 64 * 1024;

/// The router. Tests call it directly; `serve` puts it behind the listeners.
pub fn app(core: Arc<Core>) -> Router {
    let uploads = Router::new()
        .route(
            "/api/v1/jobs/{job_id}",
            put(intake::submit).get(api::job_status),
        )
        // The intake enforces its own, configured limits while it streams.
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .route("/api/v1/devices/register", post(api::register))
        .route("/api/v1/device", get(api::device))
        .route("/api/v1/sessions", post(api::login))
        .route(
            "/api/v1/sessions/current",
            axum::routing::delete(api::logout),
        )
        .route("/api/v1/workflows", get(api::workflows))
        .route("/api/v1/jobs", get(api::list_jobs))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .merge(uploads)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(log_request))
        .with_state(core)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!(
        "there is nothing at {}; the API is under /api/v1 (see docs/API.md)",
        uri.path()
    ))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::BadRequest(format!("{method} is not allowed on {}", uri.path()))
}

/// One log line per request, with the client's address (as the PROXY
/// header gave it, behind a load balancer).
async fn log_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let client = req
        .extensions()
        .get::<ClientAddr>()
        .map(|c| c.0.to_string());
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let client = client.as_deref().unwrap_or("-");
    if path == "/health" || path == "/metrics" {
        tracing::debug!(%method, path, status, ms, client, "request");
    } else {
        tracing::info!(%method, path, status, ms, client, "request");
    }
    response
}

/// `Json` whose rejections come back in the API's error shape.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(ApiJson(Json::<T>::from_request(req, state).await?.0))
    }
}
