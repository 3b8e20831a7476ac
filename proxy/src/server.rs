//! Listeners and client connections.
//!
//! Each listener accepts while it holds a connection permit (the
//! `max_connections` cap; further clients wait in the kernel backlog). A
//! client address holding `max_connections_per_client` connections has its
//! next ones closed at once, so one client opening thousands of idle
//! connections cannot lock everyone else out for the idle timeout. Each
//! connection is served by hyper's HTTP/1.1 server with upgrades, limits on
//! header size and count, and an idle timeout. On shutdown every listener
//! stops accepting at once (a socket-activated listener stays open in
//! systemd, which queues new clients for the next agent), each connection
//! finishes its in-flight request and closes, and after the grace period
//! whatever remains is dropped.

use crate::forward::{self, ClientInfo};
use crate::shard::{LoadGuard, Shard, Socket};
use crate::Inner;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// A TLS client has this long (or the idle timeout, if shorter) to finish
/// its handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// On shutdown, how long a keep-alive connection may take to send one more
/// request (answered with `Connection: close`) before it is closed idle.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// Open connections per client address.
pub(crate) struct PerClient {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection of a client; gives its place back when dropped.
struct ClientSlot(Arc<PerClient>, IpAddr);

impl PerClient {
    pub(crate) fn new(max: usize) -> PerClient {
        PerClient {
            max: max.max(1),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        // An IPv4 client on a dual-stack socket is one client either way.
        let ip = ip.to_canonical();
        let mut open = crate::sync::lock(&self.open);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot(Arc::clone(self), ip))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = crate::sync::lock(&self.0.open);
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// What every proxy thread's accept loops share.
#[derive(Clone)]
struct Shared {
    inner: Arc<Inner>,
    permits: Arc<Semaphore>,
    per_client: Arc<PerClient>,
    /// Set once shutdown is signaled; answers then carry `Connection: close`.
    closing: Arc<AtomicBool>,
    shutdown: drain::Watch,
    /// Every proxy thread's runtime, by index.
    threads: Arc<[tokio::runtime::Handle]>,
}

/// A listener and, for a TLS one, its acceptor.
type Listening = (std::net::TcpListener, Option<TlsAcceptor>);

/// Serves on `settings.threads` proxy threads (shard.rs) until `shutdown`
/// is signaled, and returns when every connection has ended: the accept
/// loops end at once; each open connection holds a clone of the watch
/// until it has finished, so whoever signaled learns when the last one is
/// done. Dropped, it stops the threads and whatever still runs on them.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    listeners: Vec<tokio::net::TcpListener>,
    tls_listeners: Vec<tokio::net::TcpListener>,
    tls: Option<TlsAcceptor>,
    shutdown: drain::Watch,
) -> Result<(), String> {
    let mut all: Vec<Listening> = Vec::new();
    let tagged = listeners
        .into_iter()
        .map(|l| (l, None))
        .chain(tls_listeners.into_iter().map(|l| (l, tls.clone())));
    for (listener, tls) in tagged {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, tls = tls.is_some(), "proxy listening");
        }
        let listener = listener
            .into_std()
            .map_err(|e| format!("cannot hand a proxy listener to its threads: {e}"))?;
        all.push((listener, tls));
    }
    // Each thread gets its own descriptor of every listener, all made
    // before a thread starts, so a failure leaves nothing running.
    let count = inner.settings.threads.max(1);
    let mut per_thread = Vec::with_capacity(count);
    for _ in 1..count {
        let mine = all
            .iter()
            .map(|(l, tls)| l.try_clone().map(|l| (l, tls.clone())))
            .collect::<Result<Vec<Listening>, _>>()
            .map_err(|e| format!("cannot duplicate a proxy listener: {e}"))?;
        per_thread.push(mine);
    }
    per_thread.push(all);
    let runtimes = (0..count)
        .map(crate::shard::runtime)
        .collect::<Result<Vec<_>, _>>()?;
    let loads = Arc::clone(&inner.loads);
    let shared = Shared {
        permits: Arc::clone(&inner.permits),
        per_client: Arc::new(PerClient::new(inner.settings.max_connections_per_client)),
        closing: Arc::new(AtomicBool::new(false)),
        inner,
        shutdown,
        threads: runtimes.iter().map(|r| r.handle().clone()).collect(),
    };
    let mut shards = Vec::with_capacity(count);
    for ((index, mine), runtime) in per_thread.into_iter().enumerate().zip(runtimes) {
        let shared = shared.clone();
        shards.push(Shard::spawn(index, runtime, move || {
            accept_all(shared, mine)
        })?);
    }
    drop(shared);
    // Once every accept loop has ended no connection can start, so the
    // count of open ones only falls (each ends within the grace period).
    for shard in &mut shards {
        shard.worked().await;
    }
    loads.none_open().await;
    Ok(())
}

/// One proxy thread's accept loops, one per listener, until shutdown.
async fn accept_all(shared: Shared, listeners: Vec<Listening>) {
    let mut accept_loops = tokio::task::JoinSet::new();
    for (listener, tls) in listeners {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => {
                accept_loops.spawn(accept_loop(shared.clone(), l, tls));
            }
            Err(e) => tracing::error!(cause = %e, "a proxy thread cannot watch a listener"),
        }
    }
    drop(shared);
    // Listeners close as their loops end.
    while accept_loops.join_next().await.is_some() {}
}

async fn accept_loop(shared: Shared, listener: tokio::net::TcpListener, tls: Option<TlsAcceptor>) {
    let Shared {
        inner,
        permits,
        per_client,
        closing,
        shutdown,
        threads,
    } = shared;
    let signaled = shutdown.clone().signaled();
    tokio::pin!(signaled);
    // Only the port of the address a client reached is used (for
    // `X-Forwarded-Port`): the listener's, without a system call per client.
    let listening = listener.local_addr().ok();
    let me = crate::shard::current();
    loop {
        let permit = tokio::select! {
            release = &mut signaled => {
                closing.store(true, Ordering::Release);
                drop(release);
                return;
            }
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            release = &mut signaled => {
                closing.store(true, Ordering::Release);
                drop(release);
                return;
            }
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(cause = %e, "proxy accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = per_client.admit(peer.ip()) else {
            // Closed at once: the client learns now, and its descriptor is
            // free again.
            inner.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "connection refused: too many from this client");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let local = listening.unwrap_or(peer);
        let client = ClientInfo {
            peer,
            local,
            tls: tls.is_some(),
        };
        let target = inner.loads.pick(me);
        let conn = Connection {
            inner: Arc::clone(&inner),
            client,
            closing: Arc::clone(&closing),
            watch: shutdown.clone(),
            tls: tls.clone(),
            _permit: permit,
            _slot: slot,
            load: inner.loads.enter(target),
            threads: Arc::clone(&threads),
        };
        let stream = Stream::Accepted(Socket::Watched(stream));
        if target == me {
            tokio::spawn(conn.serve(stream));
        } else {
            conn.move_to(stream);
        }
    }
}

/// An accepted connection and what it holds while open.
struct Connection {
    inner: Arc<Inner>,
    client: ClientInfo,
    closing: Arc<AtomicBool>,
    watch: drain::Watch,
    /// For a TLS listener's connection, until its handshake.
    tls: Option<TlsAcceptor>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    _slot: ClientSlot,
    load: LoadGuard,
    /// Every proxy thread's runtime, to move the connection to.
    threads: Arc<[tokio::runtime::Handle]>,
}

/// A client connection on its way to the thread that serves it.
enum Stream {
    /// As accepted (on a TLS listener, before the handshake).
    Accepted(Socket),
    /// Plain, between two requests.
    Kept(Socket),
    /// TLS, between two requests.
    Tls(Box<tokio_rustls::server::TlsStream<Socket>>),
}

impl Stream {
    fn socket(&mut self) -> &mut Socket {
        match self {
            Stream::Accepted(s) | Stream::Kept(s) => s,
            Stream::Tls(t) => t.get_mut().0,
        }
    }
}

impl Connection {
    /// Serves it on the thread it is counted on: the socket leaves this
    /// thread's event loop and joins that one's.
    fn move_to(self, mut stream: Stream) {
        let peer = self.client.peer;
        let Some(thread) = self.threads.get(self.load.thread()).cloned() else {
            return;
        };
        if let Err(e) = stream.socket().detach() {
            return tracing::debug!(%peer, cause = %e, "cannot hand over a connection");
        }
        thread.spawn(async move {
            match stream.socket().attach() {
                Ok(()) => self.serve(stream).await,
                Err(e) => tracing::debug!(%peer, cause = %e, "cannot take over a connection"),
            }
        });
    }

    /// Serves it (after the TLS handshake, for a TLS listener's new one) to
    /// the end, or until it moves to another thread between two requests.
    ///
    /// This future is what each connection's task holds, so a plain
    /// connection's stays small: TLS (the handshake's state, a rustls
    /// connection) lives in a box of its own. With the TLS branches inline
    /// it was 14 KB, moved and allocated for every accepted connection.
    async fn serve(mut self, stream: Stream) {
        let idle = match (stream, self.tls.take()) {
            (Stream::Accepted(socket), None) => self.plain(socket, true).await,
            (Stream::Accepted(socket), Some(acceptor)) => {
                Box::pin(self.serve_new_tls(acceptor, socket)).await
            }
            (Stream::Kept(socket), _) => self.plain(socket, false).await,
            (Stream::Tls(tls), _) => Box::pin(self.fast_tls(*tls, false)).await,
        };
        if let Some(stream) = idle {
            self.move_to(stream);
        }
    }

    /// [`Connection::serve`] for a new TLS connection: the handshake, then
    /// HTTP/2 or the fast path as ALPN says.
    async fn serve_new_tls(&mut self, acceptor: TlsAcceptor, socket: Socket) -> Option<Stream> {
        let tls = self.handshake(&acceptor, socket).await?;
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (inner, watch) = (Arc::clone(&self.inner), self.watch.clone());
            Box::pin(crate::http2::serve(inner, tls, &[], self.client, watch)).await;
            return None;
        }
        self.fast_tls(tls, true).await
    }

    /// [`Connection::fast`] for a TLS connection.
    async fn fast_tls(
        &mut self,
        tls: tokio_rustls::server::TlsStream<Socket>,
        fresh: bool,
    ) -> Option<Stream> {
        self.fast(tls, fresh)
            .await
            .map(|t| Stream::Tls(Box::new(t)))
    }

    /// [`Connection::fast`] for a plain connection: one call site, so one
    /// copy of its future in [`Connection::serve`]'s.
    async fn plain(&mut self, socket: Socket, fresh: bool) -> Option<Stream> {
        self.fast(socket, fresh).await.map(Stream::Kept)
    }

    /// The fast path (fast.rs), until the connection ends or is given back
    /// to move to another thread (`fresh`: no request served yet).
    async fn fast<S: crate::fast::Client>(&mut self, stream: S, fresh: bool) -> Option<S> {
        crate::fast::serve(
            Arc::clone(&self.inner),
            stream,
            self.client,
            Arc::clone(&self.closing),
            self.watch.clone(),
            &mut self.load,
            fresh,
        )
        .await
    }

    async fn handshake(
        &self,
        acceptor: &TlsAcceptor,
        socket: Socket,
    ) -> Option<tokio_rustls::server::TlsStream<Socket>> {
        let peer = self.client.peer;
        let handshake = tokio::time::timeout(
            HANDSHAKE_TIMEOUT.min(self.inner.settings.idle_timeout),
            acceptor.accept(socket),
        );
        match handshake.await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(%peer, cause = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }
}

/// Serves a client connection with hyper's HTTP/1.1 server and forward.rs:
/// everything the fast path (fast.rs) hands over, with the bytes it had
/// already read in front.
pub(crate) async fn serve_hyper<I>(
    inner: Arc<Inner>,
    io: I,
    client: ClientInfo,
    closing: Arc<AtomicBool>,
    watch: drain::Watch,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = client.peer;
    let settings = inner.settings.clone();
    let service = hyper::service::service_fn(move |req| {
        let closing = closing.load(Ordering::Acquire);
        observed(
            Arc::clone(&inner),
            client,
            req.map(forward::ClientBody::H1),
            closing,
        )
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.idle_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        // A client that shuts its write side after sending its
        // request (HTTP/1.0 tools, `nc -N`) still gets its answer.
        .half_close(true)
        .keep_alive(true);
    // hyper's default is 100 on the stack; any other count moves
    // header parsing to the heap, so only set it when asked.
    if settings.max_headers != 100 {
        builder.max_headers(settings.max_headers);
    }
    let mut conn = std::pin::pin!(builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades());
    // Held until this connection is done: shutdown waits for it.
    let signaled = watch.signaled();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(cause = %e, %peer, "client connection ended with an error");
            }
        }
        release = signaled => {
            // First let busy clients get one more answer with
            // `Connection: close`; then close what is still idle.
            let linger = settings.shutdown_grace.min(CLOSE_LINGER);
            if tokio::time::timeout(linger, conn.as_mut()).await.is_err() {
                conn.as_mut().graceful_shutdown();
                let rest = settings.shutdown_grace.saturating_sub(linger);
                let _ = tokio::time::timeout(rest, conn).await;
            }
            drop(release);
        }
    }
}

/// Forwards one request from hyper's HTTP/1.1 server or an HTTP/2 stream and
/// counts it when its answer's body is done (or dropped). With `closing`
/// (shutting down), the answer ends its HTTP/1.1 connection, so the client
/// reconnects (to the next agent) instead of racing a close on an idle
/// socket.
///
/// This is the service's future itself, with no `async` block around it:
/// each such layer would hold another copy of it, and every request's
/// future is moved as it is created.
pub(crate) async fn observed(
    inner: Arc<Inner>,
    client: ClientInfo,
    req: hyper::Request<forward::ClientBody>,
    closing: bool,
) -> Result<hyper::Response<crate::ProxyBody>, std::convert::Infallible> {
    let started = Instant::now();
    let line = inner.log().is_some().then(|| RequestLine {
        version: if req.version() == hyper::Version::HTTP_2 {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        },
        method: req.method().to_string(),
        host: req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_string(),
        target: req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
    });
    let mut seen = forward::Seen::default();
    let mut resp = forward::handle(Arc::clone(&inner), client, req, &mut seen).await;
    if closing {
        resp.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    Ok(observe(inner, client, started, line, seen, resp))
}

/// An HTTP/2 stream the fast path took: its request already rewritten into
/// HTTP/1.1 bytes for the task (h1.rs), sent on a raw task connection
/// (raw.rs), and counted as [`observed`] counts.
pub(crate) async fn observed_raw(
    inner: Arc<Inner>,
    client: ClientInfo,
    f: crate::h1::Forward,
    request: Vec<u8>,
    line: Option<RequestLine>,
) -> Result<hyper::Response<crate::ProxyBody>, std::convert::Infallible> {
    let started = Instant::now();
    f.route.requests.fetch_add(1, Ordering::Relaxed);
    let mut seen = forward::Seen {
        route: Some(Arc::clone(&f.route)),
        backend: None,
    };
    let raw = crate::raw::Raw {
        route: &f.route,
        algorithm: f.algorithm,
        request,
        idempotent: f.idempotent,
        head: f.head,
    };
    let resp = crate::raw::forward(&inner, raw, &mut seen.backend).await;
    Ok(observe(inner, client, started, line, seen, resp))
}

/// The answer, with a body that records the request once it is done.
fn observe(
    inner: Arc<Inner>,
    client: ClientInfo,
    started: Instant,
    line: Option<RequestLine>,
    seen: forward::Seen,
    resp: hyper::Response<crate::ProxyBody>,
) -> hyper::Response<crate::ProxyBody> {
    let status = resp.status().as_u16();
    resp.map(|body| {
        use http_body_util::BodyExt;
        Observed {
            body,
            inner,
            client,
            started,
            status,
            bytes: 0,
            seen,
            line,
        }
        .boxed()
    })
}

/// What the access log says of a request, kept only when it is on.
pub(crate) struct RequestLine {
    pub version: &'static str,
    pub method: String,
    pub host: String,
    pub target: String,
}

/// An answer's body that records its request once it is done.
struct Observed {
    body: crate::ProxyBody,
    inner: Arc<Inner>,
    client: ClientInfo,
    started: Instant,
    status: u16,
    bytes: u64,
    seen: forward::Seen,
    line: Option<RequestLine>,
}

impl hyper::body::Body for Observed {
    type Data = bytes::Bytes;
    type Error = crate::BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, crate::BoxError>>> {
        let r = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                self.bytes += d.len() as u64;
            }
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        let line = self.line.take();
        let (version, method, host, target) = match &line {
            Some(l) => (
                l.version,
                l.method.as_str(),
                l.host.as_str(),
                l.target.as_str(),
            ),
            None => ("", "", "", ""),
        };
        crate::stats::record(
            self.inner.log(),
            &crate::stats::Record {
                started: self.started,
                client: self.client.peer,
                tls: self.client.tls,
                version,
                method,
                host,
                target,
                status: self.status,
                bytes: self.bytes,
                route: self.seen.route.as_deref(),
                task: self.seen.backend.as_deref().map(|b| b.task.as_str()),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, F, Fut>(_: &F) -> usize
    where
        F: FnOnce(A, B) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every accepted connection's task holds this future: it is allocated
    /// and moved once per connection, which `Connection: close` clients pay
    /// on every request. Inlining the TLS branches (a handshake's and a
    /// rustls connection's state), or keeping a pinned future twice, made
    /// it 14 KB; it is under 3 KB now.
    #[test]
    fn a_plain_connections_task_stays_small() {
        let size = future_size(&Connection::serve);
        assert!(size <= 4096, "Connection::serve's future is {size} bytes");
    }
}
