//! The admin API's HTTP server: the axum router on hyper's HTTP/1 connections, with the bounds
//! `axum::serve` does not offer, so that the API stays usable when it is exposed:
//!
//! - **A deadline for each request head** ([`ControlPlaneConfig::admin_header_timeout_secs`]):
//!   hyper starts it whenever it waits for a request head, so it also bounds how long an idle
//!   keep-alive connection is kept, and a client trickling a header (slow loris) is closed when
//!   it passes. The body has its own deadline
//!   ([`ControlPlaneConfig::admin_body_timeout_secs`], `api::body`).
//! - **At most [`ControlPlaneConfig::admin_max_connections`] connections at once.** Past it the
//!   server stops accepting until one closes (callers wait in the kernel's backlog): the
//!   process's file descriptors are shared with the gateway's terminals, the store and the link,
//!   and the binary reserves this many for the API (`herald serve`'s fd budget).
//!
//! Connections that end on a timeout or a protocol error are counted in
//! `herald_cp_api_connections_failed_total`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Semaphore, watch};

use crate::{ControlPlaneConfig, Metrics, stopped};

/// How long in-flight requests may take to finish after shutdown was asked for.
const DRAIN: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of descriptors, most likely): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `shutdown` is set, then lets open requests finish (bounded).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    config: &ControlPlaneConfig,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let max = config.admin_max_connections.clamp(1, 65_536);
    let permits = Arc::new(Semaphore::new(max));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.admin_header_timeout_secs.max(1)))
        .keep_alive(true);
    let service = TowerToHyperService::new(app);
    let mut failed_accepts = 0u64;
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stopped(&mut shutdown) => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => r,
            () = stopped(&mut shutdown) => break,
        };
        let stream = match stream {
            Ok((s, _)) => s,
            Err(e) => {
                // One line per failure streak, not one per retry.
                if failed_accepts == 0 {
                    tracing::warn!(error = %e, "admin API: accept failed; retrying every {ACCEPT_BACKOFF:?}");
                }
                failed_accepts += 1;
                metrics.api_connections_failed.inc();
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if failed_accepts > 0 {
            tracing::info!(failed = failed_accepts, "admin API: accepting again");
            failed_accepts = 0;
        }
        let conn = builder.serve_connection(TokioIo::new(stream), service.clone());
        let mut stop = shutdown.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(DRAIN, conn.as_mut()).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "admin API connection failed");
                metrics.api_connections_failed.inc();
            }
            drop(permit);
        });
    }
    drop(listener);
    // Every connection holds a permit: having them all back means every request has finished.
    let _ = tokio::time::timeout(DRAIN, permits.acquire_many(max as u32)).await;
}
