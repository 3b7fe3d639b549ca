//! `/health` for devices and load balancers, `/metrics` for Prometheus.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::core::Core;
use crate::metrics::Gauges;

/// `200` when the instance takes jobs, `503` with the reason and a
/// `Retry-After` when not (as every 503 of the API). Read from memory
/// only, so a health check never waits on the database.
pub async fn health(State(core): State<Arc<Core>>) -> Response {
    let report = core.health();
    let mut response = (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        Json(&report),
    )
        .into_response();
    if let Some(secs) = report.retry_after_secs {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

pub async fn metrics(State(core): State<Arc<Core>>) -> impl IntoResponse {
    let role = core.role.snapshot();
    let data = core.data.state();
    let queue_depth = if data.up {
        core.data.run(|s| s.queue_depth()).await.ok()
    } else {
        None
    };
    let text = core.metrics.render(&Gauges {
        instance: core.name(),
        role: role.role.as_str(),
        epoch: role.epoch.number,
        queue_depth,
        data_up: data.up,
        maintenance: core.in_maintenance(),
        config_version: core.config.current().map_or(0, |c| c.meta.version),
        replication: core
            .settings
            .instance
            .pair
            .as_ref()
            .map(|_| (core.peer_acks.unreplicated(), core.peer_acks.degraded())),
        commit_batches: core.data.parts().ok().map(|p| p.committer.batches()),
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
