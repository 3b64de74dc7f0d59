//! The network seam: one enum over tokio and turmoil sockets, so the identical node code
//! runs on real TCP and under turmoil's simulated network (docs/simulation.md, Determinism).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Which network the node's sockets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetKind {
    Tokio,
    Turmoil,
}

/// A connected stream from either network, in the clear or inside TLS.
pub enum NetStream {
    Tokio(tokio::net::TcpStream),
    Turmoil(turmoil::net::TcpStream),
    TlsClient(Box<tokio_rustls::client::TlsStream<NetStream>>),
    TlsServer(Box<tokio_rustls::server::TlsStream<NetStream>>),
}

impl NetStream {
    pub async fn connect(kind: NetKind, addr: &str) -> io::Result<Self> {
        match kind {
            NetKind::Tokio => {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                // Without NODELAY, small Raft messages wait on Nagle and delayed ACKs.
                stream.set_nodelay(true)?;
                Ok(NetStream::Tokio(stream))
            }
            NetKind::Turmoil => Ok(NetStream::Turmoil(turmoil::net::TcpStream::connect(addr).await?)),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            NetStream::Tokio($s) => $e,
            NetStream::Turmoil($s) => $e,
            NetStream::TlsClient($s) => $e,
            NetStream::TlsServer($s) => $e,
        }
    };
}

impl AsyncRead for NetStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for NetStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl Connection for NetStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// A bound listener from either network; serves axum directly.
pub enum NetListener {
    Tokio(tokio::net::TcpListener),
    Turmoil(turmoil::net::TcpListener),
}

impl NetListener {
    pub async fn bind(kind: NetKind, addr: &str) -> io::Result<Self> {
        Ok(match kind {
            NetKind::Tokio => NetListener::Tokio(tokio::net::TcpListener::bind(addr).await?),
            NetKind::Turmoil => NetListener::Turmoil(turmoil::net::TcpListener::bind(addr).await?),
        })
    }
}

impl axum::serve::Listener for NetListener {
    type Io = NetStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let accepted = match self {
                NetListener::Tokio(l) => tokio::net::TcpListener::accept(l).await.map(|(s, a)| {
                    let _ = s.set_nodelay(true);
                    (NetStream::Tokio(s), a)
                }),
                NetListener::Turmoil(l) => turmoil::net::TcpListener::accept(l)
                    .await
                    .map(|(s, a)| (NetStream::Turmoil(s), a)),
            };
            match accepted {
                Ok(pair) => return pair,
                Err(e) => {
                    // Running out of file descriptors must not spin the accept loop.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            NetListener::Tokio(l) => l.local_addr(),
            NetListener::Turmoil(l) => l.local_addr(),
        }
    }
}

/// Connector for hyper-util's pooled client, dialing through the seam; `https` URIs go
/// through TLS with the client's rustls configuration.
#[derive(Clone)]
pub struct Connector {
    kind: NetKind,
    connect_timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<NetStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let kind = self.kind;
        let timeout = self.connect_timeout;
        let tls = self.tls.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "uri without authority"))?
                .clone();
            let https = uri.scheme_str() == Some("https");
            let connect = async {
                let stream = NetStream::connect(kind, authority.as_str()).await?;
                if !https {
                    return Ok::<_, io::Error>(stream);
                }
                let config = tls.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "https needs a CA certificate (--ca-cert)")
                })?;
                let host = authority.host().trim_start_matches('[').trim_end_matches(']');
                let name = rustls_pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let stream = tokio_rustls::TlsConnector::from(config).connect(name, stream).await?;
                Ok(NetStream::TlsClient(Box::new(stream)))
            };
            let stream = tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Drops requests between nodes on purpose: the demo's fault injection (`crate::demo`).
pub trait LinkFilter: Send + Sync {
    /// Whether a request from node `from` to the node at `to_addr` is dropped.
    fn blocked(&self, from: u64, to_addr: &str) -> bool;
}

/// The one pooled HTTP client a node uses for Raft RPCs, PD calls and forwarding, with
/// the scheme its peers speak.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<Connector, Full<Bytes>>,
    scheme: &'static str,
    /// This node's id and the demo's filter, when the demo injects faults.
    links: Option<(u64, Arc<dyn LinkFilter>)>,
}

impl HttpClient {
    /// The same client, with requests from node `from` subject to `filter`.
    pub fn with_link_filter(mut self, from: u64, filter: Arc<dyn LinkFilter>) -> Self {
        self.links = Some((from, filter));
        self
    }

    /// Whether the link to `addr` is cut (only ever in the demo).
    pub fn link_cut(&self, addr: &str) -> bool {
        self.links
            .as_ref()
            .is_some_and(|(from, filter)| filter.blocked(*from, addr))
    }

    /// `scheme://addr/path` for a peer's address.
    pub fn url(&self, addr: &str, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme)
    }

    /// Only `network::send` calls this: it applies the demo's link filter and the timeout.
    pub(super) fn request(&self, request: hyper::Request<Full<Bytes>>) -> hyper_util::client::legacy::ResponseFuture {
        self.inner.request(request)
    }
}

/// Idle pooled connections kept per peer; bounds sockets at many groups × peers.
pub const POOL_MAX_IDLE_PER_HOST: usize = 32;
/// An idle pooled connection is dropped after this long. Servers close connections that
/// send no request head within `--header-read-timeout-ms`, which must be well above this
/// (checked at start), or a forwarded write could go out on a connection the peer is
/// closing and end with an unknown outcome.
pub const POOL_IDLE_TIMEOUT_MS: u64 = 2_000;
/// Under turmoil, idle connections are kept for the whole run: expiring them mid-run
/// made replays differ (seen with 2 s; the cause is inside hyper-util's pool), and the
/// simulated servers are configured not to close idle connections either.
pub const SIM_POOL_IDLE_TIMEOUT_MS: u64 = 3_600_000;
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;

/// A pooled client; with `tls`, peers are reached over `https` and verified with it.
pub fn http_client(kind: NetKind, tls: Option<Arc<rustls::ClientConfig>>) -> HttpClient {
    let scheme = if tls.is_some() { "https" } else { "http" };
    // TokioTimer keeps the pool on tokio's (under turmoil: simulated) clock.
    let inner = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_millis(match kind {
            NetKind::Tokio => POOL_IDLE_TIMEOUT_MS,
            NetKind::Turmoil => SIM_POOL_IDLE_TIMEOUT_MS,
        }))
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .build(Connector {
            kind,
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS),
            tls,
        });
    HttpClient {
        inner,
        scheme,
        links: None,
    }
}
