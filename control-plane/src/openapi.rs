//! The OpenAPI 3 document served at `/openapi.json`. A test checks that every route of the
//! router is in it, with the same methods.

use serde_json::{Value, json};

fn err(desc: &str) -> Value {
    json!({ "description": desc, "content": { "application/json": {
        "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn body(schema: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema } } })
}

fn ok_json(desc: &str, schema: Value) -> Value {
    json!({ "description": desc, "content": { "application/json": { "schema": schema } } })
}

fn path_param(name: &str, desc: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": desc,
            "schema": { "type": "string", "minLength": 1, "maxLength": 255 } })
}

fn op(summary: &str, params: Vec<Value>, request: Option<Value>, ok: (&str, Value)) -> Value {
    let mut o = json!({
        "summary": summary,
        "parameters": params,
        "responses": {
            ok.0: ok.1,
            "400": err("Invalid input"),
            "401": err("Missing or wrong admin key"),
            "503": err("The store is not accepting writes"),
            "429": err("The store is behind (commit_queue_bytes of changes wait to be written); retry later"),
        }
    });
    if let Some(r) = request {
        o["requestBody"] = r;
        o["responses"]["408"] = err("The request body did not arrive in time");
        o["responses"]["413"] = err("Request body over the limit (see the API description)");
    }
    o
}

/// `POST /v1/keys/{id}/withdraw`: its path parameter is an integer and it has a 404.
fn withdraw_op() -> Value {
    let mut o = op(
        "Withdraw a signing key at once (a leaked key): gateways drop it and close the sessions it signed (AUTH_REVOKED), logins with its credentials are refused (AUTH_FORGED); the signing key is first replaced by a new one. Idempotent",
        vec![json!({ "name": "id", "in": "path", "required": true, "description": "Key id",
                        "schema": { "type": "integer", "minimum": 0, "maximum": 4_294_967_295_u64 } })],
        None,
        (
            "200",
            ok_json(
                "Withdrawn",
                json!({ "type": "object", "properties": {
                        "key_id": { "type": "integer" },
                        "withdrawn_at": { "type": "integer", "description": "Unix seconds of the first withdrawal" },
                        "rotated_to": { "type": "integer", "nullable": true,
                            "description": "the new signing key, when the withdrawn key was the signing key" },
                        "current_key_id": { "type": "integer", "nullable": true } } }),
            ),
        ),
    );
    o["responses"]["404"] = err("Unknown key (never existed, or retired once its last credential expired)");
    o
}

/// The document.
pub(crate) fn document() -> Value {
    let mut doc = paths_and_components();
    // Routes open without the admin key say so, from the same table the router is built from.
    for r in crate::api::routes().iter().filter(|r| !r.auth) {
        for m in r.methods {
            doc["paths"][r.path][*m]["security"] = json!([]);
        }
    }
    // Only pushes store messages, so only they meet the stored-bytes caps.
    doc["paths"]["/v1/pushes"]["post"]["responses"]["507"] = err(
        "An inbox (max_inbox_bytes_per_user) or the store (max_stored_bytes) is full of undelivered messages; \
         nothing was accepted; retry once recipients acknowledged or messages expired",
    );
    doc
}

fn paths_and_components() -> Value {
    let names = json!({ "type": "array", "maxItems": 10_000, "items": { "type": "string", "minLength": 1, "maxLength": 255 } });
    let user_view = json!({ "$ref": "#/components/schemas/User" });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Herald control plane admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Credentials, groups and topics, pushes and their status. Every route but /healthz needs \
                 `Authorization: Bearer <admin key>`. Errors are JSON {{\"error\": reason}}, every status \
                 included (404 unknown route, 405, 408, 413). A request body may be up to {} bytes: the \
                 largest request the documented limits allow (10,000 names of 255 bytes, a 16 KiB payload), \
                 JSON-escaped; it must arrive within the body timeout (default 60 s) of the request head, \
                 and the head within the header timeout (default 10 s), which also closes idle keep-alive \
                 connections.",
                crate::api::MAX_BODY_BYTES
            ),
            "x-max-body-bytes": crate::api::MAX_BODY_BYTES
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/healthz": { "get": { "summary": "Liveness and store health",
                "responses": { "200": ok_json("Up, the store accepts writes", json!({ "type": "object" })),
                    "503": err("Store commits are failing (`\"store\": \"failing\"`); writes are refused until the store is reopened") } } },
            "/metrics": { "get": { "summary": "Prometheus metrics",
                "responses": { "200": { "description": "Prometheus text format",
                    "content": { "text/plain": { "schema": { "type": "string" } } } },
                    "401": err("Missing or wrong admin key") } } },
            "/openapi.json": { "get": { "summary": "This document",
                "responses": { "200": ok_json("OpenAPI 3", json!({ "type": "object" })),
                    "401": err("Missing or wrong admin key") } } },
            "/v1/credentials": { "post": op("Issue a terminal credential (registers the device)", vec![],
                Some(body(json!({ "type": "object", "required": ["user", "device"], "properties": {
                    "user": { "type": "string" }, "device": { "type": "string" },
                    "ttl_secs": { "type": "integer", "minimum": 1 } } }))),
                ("200", ok_json("Token", json!({ "type": "object", "properties": {
                    "token": { "type": "string" }, "expires_at": { "type": "integer" },
                    "user": { "type": "string" }, "device": { "type": "string" } } })))) },
            "/v1/credentials/revoke": { "post": op("Revoke a user's (or one device's) credentials issued so far; closes their connections", vec![],
                Some(body(json!({ "type": "object", "required": ["user"], "properties": {
                    "user": { "type": "string" }, "device": { "type": "string" } } }))),
                ("200", ok_json("Revoked", json!({ "type": "object", "properties": {
                    "revoked_issued_before": { "type": "integer" } } })))) },
            "/v1/keys/rotate": { "post": op("Make a new signing key current; older keys verify until their tokens expire", vec![], None,
                ("200", ok_json("Rotated", json!({ "type": "object", "properties": {
                    "key_id": { "type": "integer" }, "previous_key_id": { "type": "integer", "nullable": true },
                    "retiring": { "type": "array", "items": { "type": "object", "properties": {
                        "key_id": { "type": "integer" }, "valid_until": { "type": "integer" } } } } } })))) },
            "/v1/keys/{id}/withdraw": { "post": withdraw_op() },
            "/v1/users/{user}": { "get": op("A user's groups, effective topics, devices and presence",
                vec![path_param("user", "User id")], None, ("200", ok_json("User", user_view.clone()))) },
            "/v1/users/{user}/groups": { "put": op("Replace a user's groups",
                vec![path_param("user", "User id")],
                Some(body(json!({ "type": "object", "required": ["groups"], "properties": { "groups": names.clone() } }))),
                ("200", ok_json("User", user_view.clone()))) },
            "/v1/users/{user}/topics": { "put": op("Replace a user's direct topics",
                vec![path_param("user", "User id")],
                Some(body(json!({ "type": "object", "required": ["topics"], "properties": { "topics": names.clone() } }))),
                ("200", ok_json("User", user_view))) },
            "/v1/groups/{group}": {
                "get": op("The topics a group's members follow (default: the topic named after the group)",
                    vec![path_param("group", "Group name")], None,
                    ("200", ok_json("Group", json!({ "$ref": "#/components/schemas/Group" })))),
                "put": op("Set the topics a group's members follow",
                    vec![path_param("group", "Group name")],
                    Some(body(json!({ "type": "object", "required": ["topics"], "properties": { "topics": names } }))),
                    ("200", ok_json("Group", json!({ "$ref": "#/components/schemas/Group" })))) },
            "/v1/pushes": { "post": op("Accept a push; answered once it is durable", vec![],
                Some(body(json!({ "$ref": "#/components/schemas/PushRequest" }))),
                ("202", ok_json("Accepted", json!({ "type": "object", "properties": {
                    "push_id": { "type": "integer" }, "targeted": { "type": "integer" },
                    "replayed": { "type": "boolean", "description": "true when an idempotency key named an earlier push" } } })))) },
            "/v1/pushes/{id}": { "get": {
                "summary": "Delivery status of a push",
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } }],
                "responses": { "200": ok_json("Status", json!({ "$ref": "#/components/schemas/PushStatus" })),
                    "400": err("Not a push id"), "401": err("Missing or wrong admin key"), "404": err("Unknown push, or pruned: push records are kept push_record_retention_secs (default 24 h) after the push expires") } } },
            "/v1/topics/{topic}/subscribers": { "get": op("Users following a topic (directly or through a group), paged",
                vec![path_param("topic", "Topic name"),
                     json!({ "name": "cursor", "in": "query", "schema": { "type": "string" },
                             "description": "next_cursor of the previous page" }),
                     json!({ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 } })],
                None,
                ("200", ok_json("Page", json!({ "type": "object", "properties": {
                    "subscribers": { "type": "array", "items": { "type": "string" } },
                    "next_cursor": { "type": "string", "nullable": true } } })))) },
            "/v1/nodes": { "get": op("Connected gateway nodes", vec![], None,
                ("200", ok_json("Nodes", json!({ "type": "object" })))) },
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
                "Group": { "type": "object", "properties": { "group": { "type": "string" },
                    "topics": { "type": "array", "items": { "type": "string" } } } },
                "User": { "type": "object", "properties": {
                    "user": { "type": "string" },
                    "groups": { "type": "array", "items": { "type": "string" } },
                    "topics": { "type": "array", "items": { "type": "string" } },
                    "effective_topics": { "type": "array", "items": { "type": "string" } },
                    "devices": { "type": "array", "items": { "type": "string" } },
                    "presence": { "type": "array", "items": { "type": "object", "properties": {
                        "device": { "type": "string" }, "node": { "type": "string" },
                        "node_addr": { "type": "string" }, "session_id": { "type": "integer" } } } } } },
                "PushRequest": { "type": "object", "required": ["to"], "properties": {
                    "to": { "type": "object", "description": "exactly one of the properties",
                        "properties": { "user": { "type": "string" },
                            "users": { "type": "array", "items": { "type": "string" } },
                            "group": { "type": "string" }, "topic": { "type": "string" },
                            "condition": { "type": "string", "example": "'a' in topics && ('b' in topics || !('c' in topics))" } } },
                    "payload": { "type": "object", "properties": { "title": { "type": "string" },
                        "body": { "type": "string" },
                        "data": { "type": "object", "additionalProperties": { "type": "string" } } } },
                    "ttl_secs": { "type": "integer", "minimum": 0, "description": "0: fire-and-forget to whoever is online" },
                    "priority": { "type": "string", "enum": ["normal", "high"] },
                    "collapse_key": { "type": "string" },
                    "idempotency_key": { "type": "string" } } },
                "PushStatus": { "type": "object", "properties": {
                    "push_id": { "type": "integer" },
                    "state": { "type": "string", "enum": ["pending", "delivered", "expired", "collapsed", "fire_and_forget", "no_recipients"] },
                    "targeted": { "type": "integer", "description": "Devices the push was for when accepted (TTL > 0: every known device of every target user; TTL 0: the interested devices online then). For a stored push, targeted = delivered + awaiting_ack + pending_offline + expired + collapsed." },
                    "sent": { "type": "integer", "description": "Frames the gateways queued to connections, redeliveries included" },
                    "delivered": { "type": "integer", "description": "Targeted devices that acknowledged the push" },
                    "awaiting_ack": { "type": "integer", "description": "While the TTL runs: targeted devices that are online and hold a copy (sent live, as login backlog or as a resync) but have not acknowledged yet" },
                    "pending_offline": { "type": "integer", "description": "While the TTL runs: targeted devices with no copy in flight: not online when the push was dispatched, went offline before acknowledging, or on a gateway node that fell behind until it is resynced (they receive it at their next login); also devices whose user left the group or topic before acknowledging (no longer owed it)." },
                    "expired": { "type": "integer", "description": "Targeted devices that had not acknowledged when the TTL passed" },
                    "dropped": { "type": "integer", "description": "Recipients skipped by backpressure: by the gateways, and TTL-0 recipients on a node whose link queue was full" },
                    "collapsed": { "type": "integer", "description": "Targeted devices that never got it because a newer push with the same collapse key replaced it" },
                    "created_ms": { "type": "integer" }, "expires_ms": { "type": "integer" } } }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_router_is_documented_with_its_methods() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        let routes = crate::api::routes();
        for r in &routes {
            let (path, methods, auth) = (r.path, r.methods, r.auth);
            let item = paths.get(path).unwrap_or_else(|| panic!("{path} missing from openapi.json"));
            for m in methods {
                let op = &item[*m];
                assert!(op.is_object(), "{m} {path} missing from openapi.json");
                assert!(op["responses"].is_object(), "{m} {path} has no responses");
                if !auth {
                    assert_eq!(op["security"], json!([]), "{path} is open");
                }
            }
            let documented: Vec<&String> = item.as_object().unwrap().keys().collect();
            assert_eq!(documented.len(), methods.len(), "{path}: {documented:?}");
        }
        assert_eq!(paths.len(), routes.len(), "documented paths that are not routes");
    }
}
