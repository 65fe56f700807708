//! Request bodies and error bodies at the edge of the admin API: every body is read whole,
//! within a size limit derived from the documented maxima and a deadline, before a handler
//! runs; and every error the API answers is `{"error": reason}` JSON, also the ones axum and
//! its extractors make (413, 404, 405, 400, 415...), which are plain text by themselves.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald_protocol::condition::MAX_CONDITION_BYTES;
use herald_protocol::credential::MAX_ID_BYTES;
use http_body_util::BodyExt as _;

use super::{ApiError, MAX_KEY_BYTES, MAX_LIST, MAX_PAYLOAD_BYTES};
use crate::Shared;

/// Largest request body accepted, in bytes: the largest request the documented limits allow,
/// written as compact JSON with the escaping a JSON encoder does (names and keys without control
/// characters: at most 2 bytes per byte, `\"` or `\\`; payload strings and conditions: at most 6,
/// `\u001f`), with 8 bytes of whitespace per list entry and 64 KiB for the rest of the
/// structure. The largest is `PUT /v1/users/{user}/groups` or a push to `users`: 10,000 names
/// of 255 bytes (5.2 MB), the push with a 16 KiB payload and both keys beside it; a condition
/// (64 KiB) is smaller. About 5.1 MiB; `openapi.json` states it.
pub(crate) const MAX_BODY_BYTES: usize = {
    let names = MAX_LIST * (2 * MAX_ID_BYTES + 3 + 8);
    let payload = 6 * MAX_PAYLOAD_BYTES;
    let keys = 2 * 6 * MAX_KEY_BYTES;
    let condition = 6 * MAX_CONDITION_BYTES;
    let target = if names > condition { names } else { condition };
    target + payload + keys + 64 * 1024
};

/// Reads the whole body (bounded in bytes, and in time by
/// [`ControlPlaneConfig::admin_body_timeout_secs`](crate::ControlPlaneConfig): a client trickling
/// a body cannot hold a connection, and the memory read so far, longer) before the handler
/// runs. Runs after the admin key check, so an unauthenticated caller never gets a body buffered.
pub(crate) async fn read_body(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let timeout = Duration::from_secs(shared.config.admin_body_timeout_secs.max(1));
    let (parts, body) = req.into_parts();
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large().into_response();
    }
    let read = async {
        let mut body = body;
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > MAX_BODY_BYTES {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(buf))
    };
    let bytes = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return e.into_response(),
        Err(_) => {
            return ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                reason: format!("the request body did not arrive within {} s", timeout.as_secs()),
                cause: None,
            }
            .into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

fn too_large() -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        reason: format!(
            "request body over {MAX_BODY_BYTES} bytes (the largest request the API's limits allow)"
        ),
        cause: None,
    }
}

/// Longest error text of axum's own rejections that is passed on as the reason.
const MAX_REASON_BYTES: usize = 1024;

/// Turns every error response that is not JSON yet (axum's rejections are `text/plain`) into
/// `{"error": reason}` with the same status, so callers parse one error shape everywhere.
pub(crate) async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || is_json(resp.headers().get(header::CONTENT_TYPE))
    {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match http_body_util::Limited::new(body, MAX_REASON_BYTES).collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_owned(),
        Err(_) => String::new(),
    };
    let reason = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
    let mut out = ApiError { status, reason, cause: None }.into_response();
    // Keep what the rejection said besides its body (e.g. `Allow` on a 405).
    for (name, value) in
        parts.headers.iter().filter(|(n, _)| *n != header::CONTENT_TYPE && *n != header::CONTENT_LENGTH)
    {
        out.headers_mut().append(name, value.clone());
    }
    out
}

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type.and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"))
}
