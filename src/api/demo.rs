//! `/v1/demo/*`: fault injection and background load, on `midasflow demo`'s nodes only
//! (`midasflow server` answers 404, as for any unknown route).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::ApiError;
use super::Api;
use crate::demo::{DemoControl, Fault, InjectError};

/// A fault or load request is a small JSON object.
pub const MAX_DEMO_BODY_BYTES: usize = 1 << 10;

fn control(node: &Api) -> Result<&Arc<DemoControl>, ApiError> {
    node.config
        .demo
        .as_ref()
        .ok_or_else(|| ApiError::not_found("no such route (fault injection exists in `midasflow demo` only)"))
}

/// A JSON body, declared as such: a plain form or text POST from another site's page
/// (which a browser sends without asking) must not crash the user's demo.
async fn json_body<T: serde::de::DeserializeOwned>(node: &Api, request: Request) -> Result<T, ApiError> {
    let is_json = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return Err(ApiError::unsupported_media_type(
            "send the body as JSON with Content-Type: application/json",
        ));
    }
    let body = super::read_body_within(
        request.into_body(),
        MAX_DEMO_BODY_BYTES,
        node.config.limits.body_read_timeout_ms,
    )
    .await?;
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

/// `GET /v1/demo/faults`: the faults in force and the background load's counters.
pub async fn faults(State(node): State<Arc<Api>>) -> Result<Response, ApiError> {
    Ok(axum::Json(control(&node)?.state()).into_response())
}

/// `POST /v1/demo/faults`: `{"kind":"isolate","node":2}`, `{"kind":"cut","nodes":[1,3]}`,
/// `{"kind":"crash","node":3}`, `{"kind":"restart","node":3}` or `{"kind":"heal"}`.
pub async fn inject(State(node): State<Arc<Api>>, request: Request) -> Result<Response, ApiError> {
    let control = control(&node)?.clone();
    let fault: Fault = json_body(&node, request).await?;
    tracing::info!(?fault, "demo fault injected");
    // The main loop carries out crashes; a crash of this very node must not cancel it.
    let outcome = tokio::spawn({
        let control = control.clone();
        async move { control.inject(fault).await }
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    outcome.map_err(|e| match e {
        InjectError::Refused(why) => ApiError::bad_request(why),
        InjectError::Failed(why) => ApiError::unavailable(why),
    })?;
    Ok(axum::Json(control.state()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadSwitch {
    enabled: bool,
}

/// `POST /v1/demo/load`: `{"enabled":true}` starts the background writers, `false` stops them.
pub async fn set_load(State(node): State<Arc<Api>>, request: Request) -> Result<Response, ApiError> {
    let control = control(&node)?.clone();
    let switch: LoadSwitch = json_body(&node, request).await?;
    control.set_load(switch.enabled);
    Ok(axum::Json(control.state()).into_response())
}
