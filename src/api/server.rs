//! The HTTP server loop: one task per connection, bounded in number, with a TLS handshake
//! timeout, a request-head timeout, and graceful shutdown.
//!
//! axum's own `serve` has no header-read timeout and no connection cap, so a few thousand
//! slow clients could hold a node; this loop gives hyper a timer and counts connections.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use crate::node::Limits;
use crate::raft::transport::{NetListener, NetStream};

/// What the connection told us about the peer, for the handlers (a request extension).
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerInfo {
    /// The peer presented a client certificate that the cluster CA signed.
    pub client_cert_verified: bool,
}

/// Serves `router` on `listener` until `stop` turns true; then lets open requests finish.
pub async fn serve(
    mut listener: NetListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    node_label: String,
    mut stop: watch::Receiver<bool>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            _ = stop.changed() => return,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Closing at once costs nothing; queueing would let a flood hold memory.
            metrics::counter!("midasflow_connections_rejected_total", "node" => node_label.clone()).increment(1);
            drop(stream);
            continue;
        };
        let router = router.clone();
        let acceptor = acceptor.clone();
        let mut stop = stop.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (io, peer) = match acceptor {
                None => (stream, PeerInfo::default()),
                Some(acceptor) => {
                    let handshake = Duration::from_millis(limits.tls_handshake_timeout_ms);
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            // rustls verified any certificate offered against the CA.
                            let client_cert_verified =
                                tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                            (NetStream::TlsServer(Box::new(tls)), PeerInfo { client_cert_verified })
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            let service =
                TowerToHyperService::new(router.map_request(move |mut request: axum::extract::Request<_>| {
                    // Absent means unverified: most connections add nothing (no allocation).
                    if peer.client_cert_verified {
                        request.extensions_mut().insert(peer);
                    }
                    request
                }));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}
