//! `/health` for devices and load balancers, `/metrics` for Prometheus.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::instance::Gateway;
use crate::metrics::Gauges;

/// `200` when the instance takes jobs, `503` with the reason when not. Read
/// from memory only, so a health check never waits on the database.
pub async fn health(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    let report = gw.health();
    let status = if report.accepting {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [(header::CACHE_CONTROL, "no-store")], Json(report))
}

pub async fn metrics(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    let role = gw.role.snapshot();
    let data = gw.data.state();
    let queue_depth = if data.up {
        gw.data.run(|s| s.queue_depth()).await.ok()
    } else {
        None
    };
    let text = gw.metrics.render(&Gauges {
        instance: gw.name(),
        role: role.role.as_str(),
        epoch: role.epoch,
        queue_depth,
        data_up: data.up,
        maintenance: gw.in_maintenance(),
        config_version: gw.config.current().map_or(0, |c| c.meta.version),
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
