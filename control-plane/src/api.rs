//! The admin HTTP API (axum). Every route but `/healthz` needs `Authorization: Bearer <admin
//! key>`; every error is a 4xx/5xx with a JSON body `{"error": reason}` (see [`ApiError`]).
//! Every mutating call answers after its changes are durable.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use herald_protocol::condition::Condition;
use herald_protocol::credential::MAX_ID_BYTES;
use serde::Deserialize;
use serde_json::{Value, json};

mod body;

pub(crate) use body::MAX_BODY_BYTES;

use crate::core::{Accepted, NewPush};
use crate::store::TargetSpec;
use crate::{Shared, now_ms};

/// Most names in one list (groups of a user, topics of a group, users of a push).
pub(crate) const MAX_LIST: usize = 10_000;
/// Largest archived payload of a push, in bytes.
pub(crate) const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// Longest collapse or idempotency key.
pub(crate) const MAX_KEY_BYTES: usize = 255;

/// An admin API failure: the status, the reason the caller may read, and (for 5xx) a cause
/// that is logged but never sent.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    reason: String,
    cause: Option<String>,
}

impl ApiError {
    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, reason: reason.into(), cause: None }
    }

    pub fn not_found(reason: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, reason: reason.into(), cause: None }
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            reason: "missing or wrong admin key (Authorization: Bearer <key>)".into(),
            cause: None,
        }
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            reason: "method not allowed on this route".into(),
            cause: None,
        }
    }

    /// A cap on what the control plane holds is reached (`507`): the reason names it.
    pub fn insufficient_storage(reason: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::INSUFFICIENT_STORAGE, reason: reason.into(), cause: None }
    }

    /// Back-pressure (`429`): the control plane is behind; the reason says on what.
    pub fn too_many_requests(reason: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::TOO_MANY_REQUESTS, reason: reason.into(), cause: None }
    }

    /// The service cannot take the request now (the store failed); the cause is logged.
    pub fn unavailable(cause: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "temporarily unavailable, retry later".into(),
            cause: Some(cause.into()),
        }
    }

    /// Writes are refused while the store is failing (see `health.rs`): the reason names the
    /// store error (the admin API is authenticated; `/healthz` does not show it).
    pub fn store_failing(error: &str) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: format!(
                "the store is failing ({error}); writes are refused until it is reopened, retry later"
            ),
            cause: None,
        }
    }

    /// A bug or an impossible state; the cause is logged, the caller learns nothing more.
    pub fn internal(cause: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            reason: "internal error".into(),
            cause: Some(cause.into()),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(cause) = &self.cause {
            tracing::error!(status = %self.status, %cause, "admin API error");
        }
        (self.status, axum::Json(json!({ "error": self.reason }))).into_response()
    }
}

type Api = Result<Response, ApiError>;

fn parse_json<T: for<'a> Deserialize<'a>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn check_name(kind: &str, s: &str) -> Result<(), ApiError> {
    if s.is_empty() || s.len() > MAX_ID_BYTES || s.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{kind} must be 1..={MAX_ID_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

fn check_names(kind: &str, list: &[String]) -> Result<(), ApiError> {
    if list.len() > MAX_LIST {
        return Err(ApiError::bad_request(format!("at most {MAX_LIST} {kind}s per request")));
    }
    list.iter().try_for_each(|n| check_name(kind, n))
}

fn ok(status: StatusCode, v: Value) -> Api {
    Ok((status, axum::Json(v)).into_response())
}

/// One route: path (OpenAPI syntax, which axum 0.8 shares), methods, whether the admin key is
/// required, and the handler.
pub(crate) struct Route {
    pub(crate) path: &'static str,
    pub(crate) methods: &'static [&'static str],
    pub(crate) auth: bool,
    pub(crate) handler: MethodRouter<Arc<Shared>>,
}

fn route(
    path: &'static str,
    methods: &'static [&'static str],
    auth: bool,
    handler: MethodRouter<Arc<Shared>>,
) -> Route {
    Route { path, methods, auth, handler }
}

/// Every route. The router and the OpenAPI test are both built from this list.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        route("/healthz", &["get"], false, get(healthz)),
        route("/metrics", &["get"], true, get(metrics)),
        route("/openapi.json", &["get"], true, get(openapi)),
        route("/v1/credentials", &["post"], true, post(issue_credential)),
        route("/v1/credentials/revoke", &["post"], true, post(revoke)),
        route("/v1/keys/rotate", &["post"], true, post(rotate_key)),
        route("/v1/keys/{id}/withdraw", &["post"], true, post(withdraw_key)),
        route("/v1/users/{user}", &["get"], true, get(get_user)),
        route("/v1/users/{user}/groups", &["put"], true, put(put_user_groups)),
        route("/v1/users/{user}/topics", &["put"], true, put(put_user_topics)),
        route("/v1/groups/{group}", &["get", "put"], true, get(get_group).put(put_group)),
        route("/v1/pushes", &["post"], true, post(create_push)),
        route("/v1/pushes/{id}", &["get"], true, get(get_push)),
        route("/v1/topics/{topic}/subscribers", &["get"], true, get(subscribers)),
        route("/v1/nodes", &["get"], true, get(nodes)),
    ]
}

/// The admin API router over the shared state.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let mut open = Router::new();
    let mut guarded = Router::new();
    for r in routes() {
        if r.auth {
            guarded = guarded.route(r.path, r.handler);
        } else {
            open = open.route(r.path, r.handler);
        }
    }
    // Layers run outermost last: the key is checked before a body is read.
    let guarded = guarded
        .layer(middleware::from_fn_with_state(shared.clone(), body::read_body))
        .layer(middleware::from_fn_with_state(shared.clone(), authorize));
    open.merge(guarded)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        // `read_body` has enforced the limit already; the extractors' own (2 MB) must not undercut it.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(body::json_errors))
        .with_state(shared)
}

fn keys_equal(a: &[u8], b: &[u8]) -> bool {
    // Constant time in the key's content: an attacker learns only the length.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let allowed = presented.is_some_and(|k| keys_equal(k.as_bytes(), shared.admin_key.as_bytes()));
    let resp = if allowed { next.run(req).await } else { ApiError::unauthorized().into_response() };
    if resp.status().is_client_error() || resp.status().is_server_error() {
        shared.metrics.api_errors.inc();
    }
    resp
}

/// 200 `{"status":"ok","store":"ok"}`, or 503 with `"store":"failing"` and a reason while store
/// commits fail (until the store is reopened and the state reloaded). The store's own error is
/// not shown here (no authentication); the metrics and the log have it.
async fn healthz(State(shared): State<Arc<Shared>>) -> Api {
    if shared.health.is_failing() {
        return ok(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "unavailable", "store": "failing",
                    "error": "store commits are failing; writes are refused while the store is reopened" }),
        );
    }
    ok(StatusCode::OK, json!({ "status": "ok", "store": "ok" }))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Api {
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics.render()).into_response())
}

async fn openapi() -> Api {
    ok(StatusCode::OK, crate::openapi::document())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialReq {
    user: String,
    device: String,
    ttl_secs: Option<u64>,
}

async fn issue_credential(State(shared): State<Arc<Shared>>, body: Bytes) -> Api {
    let req: CredentialReq = parse_json(&body)?;
    check_name("user", &req.user)?;
    check_name("device", &req.device)?;
    let max = shared.config.max_credential_ttl_secs;
    let ttl = req.ttl_secs.unwrap_or(shared.config.credential_ttl_secs);
    if ttl == 0 || ttl > max {
        return Err(ApiError::bad_request(format!("ttl_secs must be 1..={max}")));
    }
    let now = now_ms() / 1000;
    let (token, expires_at) = shared
        .write(|core| {
            let r = core.issue_credential(&req.user, &req.device, ttl, now)?;
            Ok((r, Vec::new()))
        })
        .await?;
    ok(
        StatusCode::OK,
        json!({ "token": token, "user": req.user, "device": req.device, "expires_at": expires_at }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeReq {
    user: String,
    device: Option<String>,
}

async fn revoke(State(shared): State<Arc<Shared>>, body: Bytes) -> Api {
    let req: RevokeReq = parse_json(&body)?;
    check_name("user", &req.user)?;
    if let Some(d) = &req.device {
        check_name("device", d)?;
    }
    let now = now_ms() / 1000;
    let before =
        shared.write(|core| Ok((core.revoke(&req.user, req.device.as_deref(), now), Vec::new()))).await?;
    ok(StatusCode::OK, json!({ "user": req.user, "device": req.device, "revoked_issued_before": before }))
}

async fn rotate_key(State(shared): State<Arc<Shared>>, body: Bytes) -> Api {
    if !body.is_empty() {
        let _: serde_json::Map<String, Value> = parse_json(&body)?;
    }
    let secret = shared.random();
    let now = now_ms() / 1000;
    let (id, previous, retiring) =
        shared.write(|core| Ok((core.rotate_key(secret, now), Vec::new()))).await?;
    ok(StatusCode::OK, json!({ "key_id": id, "previous_key_id": previous, "retiring": retiring }))
}

/// `POST /v1/keys/{id}/withdraw` (see `Core::withdraw_key`). The body, if any, is an empty
/// JSON object.
async fn withdraw_key(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Api {
    if !body.is_empty() {
        let _: serde_json::Map<String, Value> = parse_json(&body)?;
    }
    let id: u32 =
        id.parse().map_err(|_| ApiError::bad_request("key id must be an integer 0..=4294967295"))?;
    let secret = shared.random();
    let now = now_ms() / 1000;
    let w = shared.write(|core| Ok((core.withdraw_key(id, secret, now)?, Vec::new()))).await?;
    ok(StatusCode::OK, json!(w))
}

async fn get_user(State(shared): State<Arc<Shared>>, Path(user): Path<String>) -> Api {
    check_name("user", &user)?;
    let view = shared.lock().user_view(&user);
    match view {
        Some(v) => ok(StatusCode::OK, json!(v)),
        None => Err(ApiError::not_found(format!("unknown user {user:?}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupsReq {
    groups: Vec<String>,
}

async fn put_user_groups(State(shared): State<Arc<Shared>>, Path(user): Path<String>, body: Bytes) -> Api {
    check_name("user", &user)?;
    let req: GroupsReq = parse_json(&body)?;
    check_names("group", &req.groups)?;
    let view = shared.write(|core| Ok((core.set_user(&user, Some(req.groups), None), Vec::new()))).await?;
    ok(StatusCode::OK, json!(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsReq {
    topics: Vec<String>,
}

async fn put_user_topics(State(shared): State<Arc<Shared>>, Path(user): Path<String>, body: Bytes) -> Api {
    check_name("user", &user)?;
    let req: TopicsReq = parse_json(&body)?;
    check_names("topic", &req.topics)?;
    let view = shared.write(|core| Ok((core.set_user(&user, None, Some(req.topics)), Vec::new()))).await?;
    ok(StatusCode::OK, json!(view))
}

async fn put_group(State(shared): State<Arc<Shared>>, Path(group): Path<String>, body: Bytes) -> Api {
    check_name("group", &group)?;
    let req: TopicsReq = parse_json(&body)?;
    check_names("topic", &req.topics)?;
    let topics = shared.write(|core| Ok((core.set_group(&group, req.topics), Vec::new()))).await?;
    ok(StatusCode::OK, json!({ "group": group, "topics": topics }))
}

async fn get_group(State(shared): State<Arc<Shared>>, Path(group): Path<String>) -> Api {
    check_name("group", &group)?;
    // A group nobody configured follows the topic named after it.
    let topics = shared.lock().group_topics(&group).unwrap_or_else(|| vec![group.clone()]);
    ok(StatusCode::OK, json!({ "group": group, "topics": topics }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ToReq {
    user: Option<String>,
    users: Option<Vec<String>>,
    group: Option<String>,
    topic: Option<String>,
    condition: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PayloadReq {
    title: Option<String>,
    body: Option<String>,
    data: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushReq {
    to: ToReq,
    #[serde(default)]
    payload: PayloadReq,
    ttl_secs: Option<u32>,
    priority: Option<String>,
    collapse_key: Option<String>,
    idempotency_key: Option<String>,
}

fn target_of(to: ToReq) -> Result<TargetSpec, ApiError> {
    let given = [
        to.user.is_some(),
        to.users.is_some(),
        to.group.is_some(),
        to.topic.is_some(),
        to.condition.is_some(),
    ]
    .iter()
    .filter(|&&b| b)
    .count();
    if given != 1 {
        return Err(ApiError::bad_request(
            "\"to\" must name exactly one of user, users, group, topic, condition",
        ));
    }
    if let Some(u) = to.user {
        check_name("user", &u)?;
        return Ok(TargetSpec::User(u));
    }
    if let Some(mut us) = to.users {
        if us.is_empty() {
            return Err(ApiError::bad_request("users must not be empty"));
        }
        check_names("user", &us)?;
        us.sort();
        us.dedup();
        return Ok(TargetSpec::Users(us));
    }
    if let Some(g) = to.group {
        check_name("group", &g)?;
        return Ok(TargetSpec::Group(g));
    }
    if let Some(t) = to.topic {
        check_name("topic", &t)?;
        return Ok(TargetSpec::Topic(t));
    }
    let c = to.condition.unwrap_or_default();
    Condition::parse(&c).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(TargetSpec::Condition(c))
}

async fn create_push(State(shared): State<Arc<Shared>>, body: Bytes) -> Api {
    let req: PushReq = parse_json(&body)?;
    let target = target_of(req.to)?;
    let max_ttl = shared.config.max_ttl_secs;
    let ttl_secs = req.ttl_secs.unwrap_or(shared.config.default_ttl_secs);
    if ttl_secs > max_ttl {
        return Err(ApiError::bad_request(format!("ttl_secs must be 0..={max_ttl}")));
    }
    let high_priority = match req.priority.as_deref() {
        None | Some("normal") => false,
        Some("high") => true,
        Some(_) => return Err(ApiError::bad_request("priority must be \"normal\" or \"high\"")),
    };
    for (what, k) in [("collapse_key", &req.collapse_key), ("idempotency_key", &req.idempotency_key)] {
        if let Some(k) = k
            && (k.is_empty() || k.len() > MAX_KEY_BYTES)
        {
            return Err(ApiError::bad_request(format!("{what} must be 1..={MAX_KEY_BYTES} bytes")));
        }
    }
    let data: Vec<(String, String)> = req.payload.data.unwrap_or_default().into_iter().collect();
    let size = req.payload.title.as_ref().map_or(0, String::len)
        + req.payload.body.as_ref().map_or(0, String::len)
        + data.iter().map(|(k, v)| k.len() + v.len() + 16).sum::<usize>();
    if size > MAX_PAYLOAD_BYTES {
        return Err(ApiError::bad_request(format!("payload must be at most {MAX_PAYLOAD_BYTES} bytes")));
    }
    let new = NewPush {
        target,
        title: req.payload.title,
        body: req.payload.body,
        data,
        ttl_secs,
        high_priority,
        collapse_key: req.collapse_key,
        idempotency_key: req.idempotency_key,
    };
    let now = now_ms();
    let accepted = shared
        .write(|core| {
            let a = core.accept_push(new, now)?;
            let publish = match a {
                Accepted::New { push_id, .. } => vec![push_id],
                Accepted::Existing { .. } => Vec::new(),
            };
            Ok((a, publish))
        })
        .await?;
    match accepted {
        Accepted::New { push_id, targeted } => {
            shared.metrics.pushes_accepted.inc();
            ok(
                StatusCode::ACCEPTED,
                json!({ "push_id": push_id, "targeted": targeted, "ttl_secs": ttl_secs, "replayed": false }),
            )
        }
        Accepted::Existing { push_id } => {
            shared.wait_committed(push_id).await?;
            // A push whose commit failed is gone once the state is rebuilt from the store
            // (push ids are not reused): never answer `replayed` for it.
            let Some(status) = shared.lock().push_status(push_id, now) else {
                return Err(ApiError::unavailable("the push was not stored; retry"));
            };
            shared.metrics.pushes_idempotent.inc();
            let targeted = status.targeted;
            ok(StatusCode::ACCEPTED, json!({ "push_id": push_id, "targeted": targeted, "replayed": true }))
        }
    }
}

async fn get_push(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Api {
    let id: u64 = id.parse().map_err(|_| ApiError::bad_request("push id must be a decimal integer"))?;
    let (status, pruned) = {
        let core = shared.lock();
        (core.push_status(id, now_ms()), core.was_pruned(id))
    };
    match status {
        Some(s) => ok(StatusCode::OK, json!(s)),
        None if pruned => Err(ApiError::not_found(format!(
            "push {id} was pruned: push records are kept {} s after the push expires",
            shared.config.push_record_retention_secs
        ))),
        None => Err(ApiError::not_found(format!("unknown push {id}"))),
    }
}

/// Default and largest page of `GET /v1/topics/{topic}/subscribers`.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

async fn subscribers(
    State(shared): State<Arc<Shared>>,
    Path(topic): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Api {
    check_name("topic", &topic)?;
    if let Some(k) = q.keys().find(|k| *k != "cursor" && *k != "limit") {
        return Err(ApiError::bad_request(format!("unknown query parameter {k:?}")));
    }
    let limit = match q.get("limit") {
        None => DEFAULT_PAGE,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(ApiError::bad_request(format!("limit must be 1..={MAX_PAGE}"))),
        },
    };
    let cursor = q.get("cursor").filter(|c| !c.is_empty());
    let (page, next) = shared.lock().subscribers(&topic, cursor.map(String::as_str), limit);
    ok(StatusCode::OK, json!({ "topic": topic, "subscribers": page, "next_cursor": next }))
}

async fn nodes(State(shared): State<Arc<Shared>>) -> Api {
    let list: Vec<Value> = shared
        .lock()
        .node_list()
        .into_iter()
        .map(|(id, addr, s)| {
            json!({ "node": id, "public_addr": addr, "connections": s.connections,
                    "deliveries": s.deliveries, "drops": s.drops })
        })
        .collect();
    ok(StatusCode::OK, json!({ "nodes": list }))
}
