//! One request on the fast path's raw task connections, whoever the client
//! is: pick a backend, send the request bytes, read the final answer's
//! head, and retry when that is safe. fast.rs (HTTP/1.1 clients) and raw.rs
//! (HTTP/2 streams) differ only in what they keep of the head and how they
//! pass the body on.
//!
//! Retries (at most three attempts, each on another backend when there is
//! one): a failed connect; a pooled connection the task had closed (once
//! per request, not counted, and only for a request that is safe to send
//! twice); and any failure before the head of an idempotent request.

use crate::backend::{Backend, InFlight, Upstream, UPSTREAM_BUF};
use crate::h1::RespHead;
use crate::health::describe_io;
use crate::route::{Algorithm, Route};
use crate::Inner;
use bytes::Buf;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

/// A deadline kept with one timer: moving it later costs a clock read, and
/// the timer is re-armed only when it fires early.
pub(crate) struct Deadline {
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
    at: Instant,
}

impl Deadline {
    pub(crate) fn new(at: Instant) -> Deadline {
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            armed: at,
            at,
        }
    }

    pub(crate) fn set(&mut self, at: Instant) {
        self.at = at;
        if at < self.armed {
            self.sleep.as_mut().reset(at);
            self.armed = at;
        }
    }

    pub(crate) async fn passed(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if Instant::now() >= self.at {
                return;
            }
            self.armed = self.at;
            self.sleep.as_mut().reset(self.at);
        }
    }
}

/// How an attempt to get a response head failed.
pub(crate) enum Failed {
    /// The task closed or reset the connection before a whole head.
    Closed(Option<std::io::Error>),
    /// What the task sent is not a response a proxy may pass on.
    Bad(&'static str),
    Timeout,
}

/// Writes `request` and reads the final answer's head within the response
/// timeout. `parse` reads a head from the buffer (`Ok(None)`: incomplete)
/// and returns what its caller keeps of it; interim 1xx answers are passed
/// to nobody (the fast path never sends `Expect`; 103 hints are dropped).
pub(crate) async fn send<X>(
    inner: &Inner,
    up: &mut Upstream,
    request: &[u8],
    deadline: &mut Deadline,
    mut parse: impl FnMut(&[u8]) -> Result<Option<(RespHead, X)>, &'static str>,
) -> Result<(RespHead, X), Failed> {
    if let Err(e) = up.stream.write_all(request).await {
        return Err(match e.kind() {
            // The task had closed this connection: the request was not read.
            std::io::ErrorKind::BrokenPipe => Failed::Closed(None),
            _ => Failed::Closed(Some(e)),
        });
    }
    deadline.set(Instant::now() + inner.settings.response_timeout);
    loop {
        match parse(&up.buf) {
            Ok(Some((h, _))) if h.status == 101 => return Err(Failed::Bad("unexpected 101")),
            Ok(Some((h, _))) if h.status < 200 => {
                up.buf.advance(h.len);
                continue;
            }
            Ok(Some((h, x))) => {
                up.buf.advance(h.len);
                return Ok((h, x));
            }
            Ok(None) => {}
            Err(why) => return Err(Failed::Bad(why)),
        }
        if up.buf.capacity() - up.buf.len() < 1024 {
            up.buf.reserve(UPSTREAM_BUF);
        }
        tokio::select! {
            biased;
            r = up.stream.read_buf(&mut up.buf) => match r {
                Ok(0) if up.buf.is_empty() => return Err(Failed::Closed(None)),
                Ok(0) => return Err(Failed::Bad("connection closed in the response head")),
                Ok(_) => {}
                Err(e) => return Err(Failed::Closed(Some(e))),
            },
            () = deadline.passed() => return Err(Failed::Timeout),
        }
    }
}

/// Where forwarding one request ended.
pub(crate) enum Sent<X> {
    /// A task answered: its head was read, its body is next on `up`.
    Answered {
        backend: Arc<Backend>,
        up: Upstream,
        head: RespHead,
        kept: X,
        /// Until the body is passed on.
        in_flight: InFlight,
    },
    /// No task answered: the proxy answers itself.
    Failed {
        status: u16,
        reason: &'static str,
        body: String,
    },
}

/// What is forwarded, and how an answer's head is read.
pub(crate) struct Request<'a, P> {
    pub route: &'a Arc<Route>,
    pub algorithm: Algorithm,
    /// Sending it twice is harmless.
    pub idempotent: bool,
    /// The request, whole (head and body).
    pub bytes: &'a [u8],
    /// Reads a head, as for [`send`].
    pub parse: P,
}

/// Forwards one request: sends it with [`send`] on a task connection of
/// its route, trying again where that is safe.
pub(crate) async fn forward<X, P>(
    inner: &Inner,
    r: Request<'_, P>,
    deadline: &mut Deadline,
) -> Sent<X>
where
    P: FnMut(&[u8]) -> Result<Option<(RespHead, X)>, &'static str>,
{
    let Request {
        route,
        algorithm,
        idempotent,
        bytes,
        mut parse,
    } = r;
    let settings = &inner.settings;
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut last_error = String::new();
    let mut attempts = 0;
    let mut stale_retry_left = true;
    while attempts < 3 {
        let Some(backend) = route.pick_attempt(algorithm, &tried) else {
            break;
        };
        let in_flight = backend.begin_request();
        let (mut up, reused) = match backend
            .checkout_raw(settings.connect_timeout, !idempotent)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                // Nothing was sent: safe to try elsewhere.
                let why = describe_io(&e);
                inner.eject(route, &backend, &why);
                last_error = format!("connect to {}: {why}", backend.addr);
                tried.push(backend);
                attempts += 1;
                continue;
            }
        };
        match send(inner, &mut up, bytes, deadline, &mut parse).await {
            Ok((head, kept)) => {
                return Sent::Answered {
                    backend,
                    up,
                    head,
                    kept,
                    in_flight,
                }
            }
            Err(Failed::Timeout) => {
                return Sent::Failed {
                    status: 504,
                    reason: "Gateway Timeout",
                    body: format!(
                        "dockhand: {} did not answer within {}s\n",
                        route.service,
                        settings.response_timeout.as_secs()
                    ),
                }
            }
            Err(Failed::Bad(why)) => {
                last_error = format!("{}: {why}", backend.addr);
                break;
            }
            Err(Failed::Closed(e)) => {
                if reused
                    && stale_retry_left
                    && e.as_ref()
                        .is_none_or(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
                {
                    // A pooled connection the task had closed (its
                    // keep-alive timeout): the others likely are too.
                    // Once per request, not counted as an attempt.
                    stale_retry_left = false;
                    backend.close_idle();
                    if idempotent {
                        continue;
                    }
                }
                last_error = match &e {
                    Some(e) => format!("{}: {}", backend.addr, describe_io(e)),
                    None => format!("{}: connection closed before an answer", backend.addr),
                };
                if let Some(e) = &e {
                    if !reused
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionRefused
                                | std::io::ErrorKind::ConnectionReset
                        )
                    {
                        inner.eject(route, &backend, &describe_io(e));
                    }
                }
                tried.push(backend);
                attempts += 1;
                if idempotent {
                    continue; // harmless to send again
                }
                // It may have reached the task: not retried.
                break;
            }
        }
    }
    if tried.is_empty() && last_error.is_empty() {
        return Sent::Failed {
            status: 503,
            reason: "Service Unavailable",
            body: format!(
                "dockhand: no healthy backend for service {}\n",
                route.service
            ),
        };
    }
    Sent::Failed {
        status: 502,
        reason: "Bad Gateway",
        body: format!(
            "dockhand: backend of service {} failed: {last_error}\n",
            route.service
        ),
    }
}
