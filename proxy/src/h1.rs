//! The HTTP/1.1 messages of the fast path, as bytes: a client's request
//! head checked and rewritten for the task, a task's response head checked
//! and rewritten for the client, and the framing of a chunked body.
//!
//! Only what is common and simple is handled here: an HTTP/1.1 request in
//! origin form with a `Host`, no body or a small `Content-Length` one already
//! in the buffer, no `Transfer-Encoding`, `Upgrade` or `Expect`, and a
//! `Connection` header naming nothing but `close` or `keep-alive`. Anything
//! else, malformed requests included, is [`Prep::Fallback`]: the connection
//! goes to hyper's full server (forward.rs), which answers it as before.
//! So this file never has to be right about a rare case; it only has to
//! recognise one.

use crate::forward::ClientInfo;
use crate::route::{Algorithm, Route, Table};
use std::sync::Arc;

/// Header slots parsed on the stack; a request with more goes to hyper.
pub(crate) const MAX_FAST_HEADERS: usize = 128;

/// A request body at most this large, already read, takes the fast path;
/// a larger one streams through hyper.
pub(crate) const MAX_FAST_BODY: usize = 16 * 1024;

/// What to do with the bytes buffered from a client.
#[derive(Debug)]
pub(crate) enum Prep {
    /// No complete request yet: read more.
    Partial,
    /// Not for the fast path: hand the connection to hyper.
    Fallback,
    /// Answered by the proxy itself; `close` when the client asked for it.
    Local {
        consumed: usize,
        close: bool,
        answer: Local,
    },
    /// Forward `out` (the rewritten request) on `route`.
    Forward(Forward),
}

pub(crate) enum Local {
    HostHealth,
    NoRoute {
        host: String,
        path: String,
    },
    /// The route takes HTTPS only: a permanent redirect there.
    Redirect {
        location: String,
        route: Arc<Route>,
    },
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Local::HostHealth => f.write_str("HostHealth"),
            Local::NoRoute { host, path } => f
                .debug_struct("NoRoute")
                .field("host", host)
                .field("path", path)
                .finish(),
            Local::Redirect { location, route } => f
                .debug_struct("Redirect")
                .field("location", location)
                .field("service", &route.service)
                .finish(),
        }
    }
}

pub(crate) struct Forward {
    /// Bytes of the client's buffer this request used.
    pub consumed: usize,
    pub route: Arc<Route>,
    pub algorithm: Algorithm,
    /// Sending it twice is harmless (and the whole message is in `out`).
    pub idempotent: bool,
    /// A `HEAD` request: the answer has no body whatever it says.
    pub head: bool,
    /// The client asked to close after this answer.
    pub close: bool,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("consumed", &self.consumed)
            .field("service", &self.route.service)
            .field("idempotent", &self.idempotent)
            .field("head", &self.head)
            .field("close", &self.close)
            .finish()
    }
}

/// Limits and local paths from the proxy settings.
pub(crate) struct Limits<'a> {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub health_path: &'a str,
    pub https_port: u16,
}

impl<'a> Limits<'a> {
    pub(crate) fn of(s: &'a crate::Settings) -> Limits<'a> {
        Limits {
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            health_path: &s.health_path,
            https_port: s.https_port,
        }
    }
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those this hop sets itself:
/// never copied from one side to the other.
fn dropped_request_header(name: &str) -> bool {
    // Lengths first: most names are none of these.
    match name.len() {
        2 => eq(name, "te"),
        7 => eq(name, "trailer"),
        10 => eq(name, "connection") || eq(name, "keep-alive"),
        15 => eq(name, "x-forwarded-for"),
        16 => {
            eq(name, "proxy-connection")
                || eq(name, "x-forwarded-host")
                || eq(name, "x-forwarded-port")
        }
        17 => eq(name, "x-forwarded-proto"),
        18 => eq(name, "proxy-authenticate"),
        19 => eq(name, "proxy-authorization"),
        _ => false,
    }
}

/// Whether a `Connection` value names only `close` / `keep-alive`; sets
/// `close` when it names close.
fn simple_connection(value: &[u8], close: &mut bool) -> bool {
    for token in value.split(|&b| b == b',') {
        let t = token.trim_ascii();
        if t.eq_ignore_ascii_case(b"close") {
            *close = true;
        } else if !(t.is_empty() || t.eq_ignore_ascii_case(b"keep-alive")) {
            return false;
        }
    }
    true
}

/// A decimal `Content-Length`, or `None` when it is anything else.
pub(crate) fn content_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether a `Host` (or `:authority`) is a host and an optional port
/// (RFC 9110 §7.2, RFC 3986 §3.2.2): a name or IPv4 address, or an IP
/// literal in brackets. No user info (`@`), path, query, fragment, space
/// or anything outside ASCII: routing reads the host up to the port, and
/// a task reading `victim:1@evil` its own way must not see another host
/// than the one routed on. Empty is allowed (RFC 9112 §3.2).
pub(crate) fn valid_host(raw: &[u8]) -> bool {
    let (host, port) = if raw.first() == Some(&b'[') {
        let Some(end) = raw.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &raw[1..end];
        let literal = !inside.is_empty()
            && inside
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !literal {
            return false;
        }
        match &raw[end + 1..] {
            [] => (&raw[..0], None),
            [b':', port @ ..] => (&raw[..0], Some(port)),
            _ => return false,
        }
    } else {
        match raw.iter().position(|&b| b == b':') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        }
    };
    let name = host
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
    name && port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit))
}

/// The host a request is for, lower case, without the port.
pub(crate) fn host_key(raw: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        // An IPv6 literal keeps its brackets.
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.split(':').next().unwrap_or("")
    };
    // Borrowed unless it needs lower-casing: no allocation per request.
    if without_port.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(without_port.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(without_port)
    }
}

fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

/// Looks at what a client has sent so far. On [`Prep::Forward`], `out`
/// holds the request to send to the task: head rewritten (hop-by-hop
/// headers dropped, `X-Forwarded-*` set), body as received.
pub(crate) fn prepare(
    buf: &[u8],
    limits: &Limits<'_>,
    client: &ClientInfo,
    table: &Table,
    out: &mut Vec<u8>,
) -> Prep {
    let mut slots = [httparse::EMPTY_HEADER; MAX_FAST_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= limits.max_header_bytes {
                Prep::Fallback // hyper answers 431
            } else {
                Prep::Partial
            };
        }
        Err(_) => return Prep::Fallback,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Prep::Fallback;
    };
    if head_len > limits.max_header_bytes
        || req.headers.len() > limits.max_headers
        || method == "CONNECT"
        || !target.starts_with('/')
    {
        return Prep::Fallback;
    }
    let mut host: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    let mut xff: Option<&[u8]> = None;
    let mut close = false;
    for h in req.headers.iter() {
        let n = h.name;
        let unusual = match n.len() {
            4 if eq(n, "host") => host.replace(h.value).is_some(),
            6 if eq(n, "expect") => true,
            7 if eq(n, "upgrade") => true,
            10 if eq(n, "connection") => !simple_connection(h.value, &mut close),
            14 if eq(n, "content-length") => match content_length(h.value) {
                Some(l) if length.is_none() => {
                    length = Some(l);
                    false
                }
                _ => true,
            },
            15 if eq(n, "x-forwarded-for") => xff.replace(h.value).is_some(),
            17 if eq(n, "transfer-encoding") => true,
            _ => false,
        };
        if unusual {
            return Prep::Fallback;
        }
    }
    // (An invalid host is the full server's 400.)
    let Some(host) = host
        .filter(|h| valid_host(h))
        .and_then(|h| std::str::from_utf8(h).ok())
    else {
        return Prep::Fallback;
    };
    let body = match length {
        None | Some(0) => 0,
        Some(l) if l as usize <= MAX_FAST_BODY => l as usize,
        Some(_) => return Prep::Fallback,
    };
    if buf.len() < head_len + body {
        return Prep::Partial;
    }
    let consumed = head_len + body;
    let path = target.split('?').next().unwrap_or(target);
    if path == limits.health_path {
        return Prep::Local {
            consumed,
            close,
            answer: Local::HostHealth,
        };
    }
    let key = host_key(host);
    let Some(found) = table.find(&key, path) else {
        return Prep::Local {
            consumed,
            close,
            answer: Local::NoRoute {
                host: key.into_owned(),
                path: path.to_string(),
            },
        };
    };

    if found.backend_h2 {
        // Sent to the task over HTTP/2: hyper's client (forward.rs).
        return Prep::Fallback;
    }
    if found.redirect_https && !client.tls {
        return Prep::Local {
            consumed,
            close,
            answer: Local::Redirect {
                location: crate::forward::https_location(&key, limits.https_port, target),
                route: Arc::clone(found.route),
            },
        };
    }

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        if !dropped_request_header(h.name) {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(prev) = xff.map(<[u8]>::trim_ascii).filter(|p| !p.is_empty()) {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    write_ip(out, client.peer.ip());
    out.extend_from_slice(if client.tls {
        b"\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: ".as_slice()
    } else {
        b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ".as_slice()
    });
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nX-Forwarded-Port: ");
    write_u64(out, u64::from(client.local.port()));
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&buf[head_len..consumed]);
    Prep::Forward(Forward {
        consumed,
        route: Arc::clone(found.route),
        algorithm: found.algorithm,
        // As on hyper's path: only a request without a body is sent again.
        idempotent: idempotent(method) && consumed == head_len,
        head: method == "HEAD",
        close,
    })
}

/// Method, target and `Host` of a request the fast path took, for the
/// access log (empty where absent).
pub(crate) fn request_line(head: &[u8]) -> (&str, &str, &str) {
    fn text(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap_or("")
    }
    let mut lines = head.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or(&[]);
    let mut parts = first.trim_ascii().splitn(3, |&b| b == b' ');
    let method = text(parts.next().unwrap_or(&[]));
    let target = text(parts.next().unwrap_or(&[]));
    let host = lines
        .take_while(|l| !l.trim_ascii().is_empty())
        .find_map(|l| {
            let colon = l.iter().position(|&b| b == b':')?;
            l[..colon]
                .eq_ignore_ascii_case(b"host")
                .then(|| text(l[colon + 1..].trim_ascii()))
        })
        .unwrap_or("");
    (method, target, host)
}

/// A `308 Permanent Redirect` to `location` (the method and body are kept
/// by the client, unlike 301).
pub(crate) fn redirect(out: &mut Vec<u8>, location: &str, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 308 Permanent Redirect\r\nLocation: ");
    out.extend_from_slice(location.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: 0\r\n");
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn write_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                write_u64(out, u64::from(*o));
            }
        }
        v6 => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Read until the task closes; the client's connection closes after.
    Close,
}

/// A task's response head, parsed.
#[derive(Debug)]
pub(crate) struct RespHead {
    pub len: usize,
    pub status: u16,
    pub body: BodyEnd,
    /// The task's connection can carry another request after this one.
    pub reusable: bool,
}

/// Response heads larger than this are the task's error (502).
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How a response is framed, and the headers it names in `Connection`.
struct Framing<'h> {
    body: BodyEnd,
    reusable: bool,
    named: Option<Vec<&'h [u8]>>,
    /// A `Transfer-Encoding` came with a `Content-Length`: the coding
    /// frames the body, and the length is not passed on (RFC 9112 §6.3).
    drop_length: bool,
}

/// Parses a response head: `Ok(None)` when incomplete.
fn parse_head<'b, 'h>(
    buf: &'b [u8],
    slots: &'h mut [httparse::Header<'b>],
) -> Result<Option<(usize, httparse::Response<'h, 'b>)>, &'static str> {
    let mut resp = httparse::Response::new(slots);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some((n, resp))),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
            Err("response head too large")
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err("too many response headers"),
        Err(_) => Err("malformed response head"),
    }
}

/// The framing of a parsed response (RFC 9112 §6.3).
fn framing<'b>(
    version: u8,
    status: u16,
    headers: &[httparse::Header<'b>],
    request_was_head: bool,
) -> Result<Framing<'b>, &'static str> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    // HTTP/1.1 keeps the connection unless `close`; HTTP/1.0 only with
    // `keep-alive`, and `close` wins over it too.
    let mut keep_alive = version == 1;
    let mut close = false;
    let mut named: Option<Vec<&[u8]>> = None;
    for h in headers {
        let n = h.name;
        if eq(n, "content-length") {
            match content_length(h.value) {
                Some(l) if length.is_none_or(|p| p == l) => length = Some(l),
                _ => return Err("invalid or conflicting Content-Length"),
            }
        } else if eq(n, "transfer-encoding") {
            // Only the last coding says how the message ends.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            other_coding |= !chunked;
        } else if eq(n, "connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if !t.is_empty() {
                    named.get_or_insert_with(Vec::new).push(t);
                }
            }
        }
    }
    // Not after a HEAD: a task that sends a body anyway sends it at once,
    // and it would be read as the next request's answer.
    let mut reusable = keep_alive && !close && !request_was_head;
    let drop_length = (chunked || other_coding) && length.is_some();
    let body = if request_was_head || (100..200).contains(&status) || status == 204 || status == 304
    {
        BodyEnd::None
    } else if other_coding && !chunked {
        reusable = false;
        BodyEnd::Close
    } else if chunked {
        BodyEnd::Chunked
    } else if let Some(l) = length {
        BodyEnd::Length(l)
    } else {
        reusable = false;
        BodyEnd::Close
    };
    Ok(Framing {
        body,
        reusable,
        named,
        drop_length,
    })
}

/// Whether a response header is this hop's, not passed on. `keep_chunked`:
/// the body is passed on with its chunked framing (HTTP/1.1 clients).
fn hop_response_header(n: &str, keep_chunked: bool, named: &Option<Vec<&[u8]>>) -> bool {
    (match n.len() {
        2 => eq(n, "te"),
        7 => eq(n, "trailer") || eq(n, "upgrade"),
        10 => eq(n, "connection") || eq(n, "keep-alive"),
        17 => eq(n, "transfer-encoding") && !keep_chunked,
        16 => eq(n, "proxy-connection"),
        18 => eq(n, "proxy-authenticate"),
        19 => eq(n, "proxy-authorization"),
        _ => false,
    }) || named
        .as_ref()
        .is_some_and(|v| v.iter().any(|t| t.eq_ignore_ascii_case(n.as_bytes())))
}

/// Parses a task's response head and hands `pass` the head, its reason
/// phrase and the headers to pass on (the hop's own dropped; with
/// `http1_client`, a chunked body keeps its `Transfer-Encoding`, since its
/// framing is passed on as received). `Ok(None)`: incomplete. `Err`: not
/// HTTP, or framed in a way a proxy must not pass on.
fn with_head<T>(
    buf: &[u8],
    request_was_head: bool,
    http1_client: bool,
    pass: impl FnOnce(
        &RespHead,
        &str,
        &mut dyn Iterator<Item = &httparse::Header<'_>>,
    ) -> Result<T, &'static str>,
) -> Result<Option<(RespHead, T)>, &'static str> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_FAST_HEADERS];
    let Some((len, resp)) = parse_head(buf, &mut slots)? else {
        return Ok(None);
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err("malformed response head");
    };
    let f = framing(version, status, resp.headers, request_was_head)?;
    let head = RespHead {
        len,
        status,
        body: f.body,
        reusable: f.reusable,
    };
    let keep_chunked = http1_client && f.body == BodyEnd::Chunked;
    let mut headers = resp.headers.iter().filter(|h| {
        let length_dropped = f.drop_length && eq(h.name, "content-length");
        !(hop_response_header(h.name, keep_chunked, &f.named) || length_dropped)
    });
    let kept = pass(&head, resp.reason.unwrap_or(""), &mut headers)?;
    Ok(Some((head, kept)))
}

/// Parses a task's response head and writes the client's version of it to
/// `out` (hop-by-hop headers dropped; `Connection: close` added when
/// `close_client`), as [`with_head`].
pub(crate) fn response(
    buf: &[u8],
    request_was_head: bool,
    close_client: bool,
    out: &mut Vec<u8>,
) -> Result<Option<RespHead>, &'static str> {
    let parsed = with_head(buf, request_was_head, true, |head, reason, headers| {
        out.extend_from_slice(b"HTTP/1.1 ");
        write_u64(out, u64::from(head.status));
        out.push(b' ');
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in headers {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        if close_client || head.body == BodyEnd::Close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Ok(())
    })?;
    Ok(parsed.map(|(head, ())| head))
}

/// [`response`] for a client that is not HTTP/1.1 (HTTP/2): the head as a
/// status and header map, without the hop's headers or any framing.
pub(crate) fn response_parts(
    buf: &[u8],
    request_was_head: bool,
) -> Result<Option<(RespHead, hyper::HeaderMap)>, &'static str> {
    with_head(buf, request_was_head, false, |_, _, headers| {
        let mut map = hyper::HeaderMap::new();
        for h in headers {
            let name = hyper::header::HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| "invalid response header name")?;
            let value = hyper::header::HeaderValue::from_bytes(h.value)
                .map_err(|_| "invalid response header value")?;
            map.append(name, value);
        }
        Ok(map)
    })
}

/// A short plain-text answer from the proxy itself.
pub(crate) fn text(out: &mut Vec<u8>, status: u16, reason: &str, body: &str, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    write_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    write_u64(out, body.len() as u64);
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// Where a chunked body is, byte by byte, so it can be passed on as
/// received and its end found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// In a chunk-size line: the size so far, and whether an extension began.
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    LineStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

impl Chunked {
    pub(crate) fn new() -> Chunked {
        Chunked::Size {
            size: 0,
            digits: 0,
            ext: false,
        }
    }

    /// Reads `bytes`; returns how many belong to the body (all of them, or
    /// fewer when the body ends inside), or an error for bad framing.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < bytes.len() {
            if *self == Chunked::Done {
                return Ok(i);
            }
            if let Chunked::Data(left) = *self {
                let take = left.min((bytes.len() - i) as u64);
                i += take as usize;
                *self = if left == take {
                    Chunked::DataCr
                } else {
                    Chunked::Data(left - take)
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            *self = match (*self, b) {
                (
                    Chunked::Size {
                        ext: true, size, ..
                    },
                    b'\r',
                ) => Chunked::SizeLf { size },
                (s @ Chunked::Size { ext: true, .. }, _) => s,
                (Chunked::Size { size, digits, .. }, b';' | b' ' | b'\t') if digits > 0 => {
                    Chunked::Size {
                        size,
                        digits,
                        ext: true,
                    }
                }
                (Chunked::Size { size, digits, .. }, b'\r') if digits > 0 => {
                    Chunked::SizeLf { size }
                }
                (Chunked::Size { size, digits, .. }, _) => {
                    let d = (b as char).to_digit(16).ok_or("bad chunk size")?;
                    if digits >= 15 {
                        return Err("chunk size too large");
                    }
                    Chunked::Size {
                        size: size * 16 + u64::from(d),
                        digits: digits + 1,
                        ext: false,
                    }
                }
                (Chunked::SizeLf { size: 0 }, b'\n') => Chunked::LineStart,
                (Chunked::SizeLf { size }, b'\n') => Chunked::Data(size),
                (Chunked::DataCr, b'\r') => Chunked::DataLf,
                (Chunked::DataLf, b'\n') => Chunked::new(),
                (Chunked::LineStart, b'\r') => Chunked::FinalLf,
                (Chunked::Trailer, b'\r') => Chunked::TrailerLf,
                (Chunked::LineStart | Chunked::Trailer, _) => Chunked::Trailer,
                (Chunked::TrailerLf, b'\n') => Chunked::LineStart,
                (Chunked::FinalLf, b'\n') => Chunked::Done,
                _ => return Err("bad chunked framing"),
            };
        }
        Ok(i)
    }

    /// Bytes of chunk data known to follow (0 between chunks).
    pub(crate) fn left(&self) -> u64 {
        match *self {
            Chunked::Data(n) => n,
            _ => 0,
        }
    }

    pub(crate) fn done(&self) -> bool {
        *self == Chunked::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::RouteSpec;

    #[test]
    fn a_host_is_a_name_or_address_and_a_port_only() {
        for ok in [
            &b"example.com"[..],
            b"Example.COM:8080",
            b"10.1.2.3:80",
            b"[::1]",
            b"[2001:db8::1]:443",
            b"",
            b"a_b.example",
        ] {
            assert!(valid_host(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"victim.example:1@evil.example"[..],
            b"user@example.com",
            b"example.com/path",
            b"example.com?q",
            b"example.com#f",
            b"example .com",
            b"example.com:80:80",
            b"example.com:http",
            b"[::1",
            b"[::1]x",
            b"[evil.example]",
            "ex\u{e4}mple.com".as_bytes(),
        ] {
            assert!(!valid_host(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn close_wins_over_keep_alive_and_a_coding_over_a_length() {
        let header = |name, value: &'static [u8]| httparse::Header { name, value };
        let both = [header("Connection", b"close, keep-alive")];
        assert!(!framing(0, 200, &both, false).unwrap().reusable);
        assert!(!framing(1, 200, &both, false).unwrap().reusable);
        let kept = [
            header("Connection", b"keep-alive"),
            header("Content-Length", b"2"),
        ];
        assert!(framing(0, 200, &kept, false).unwrap().reusable);
        assert!(!framing(0, 200, &kept[1..], false).unwrap().reusable);
        let coded = [
            header("Content-Length", b"3"),
            header("Transfer-Encoding", b"chunked"),
        ];
        let f = framing(1, 200, &coded, false).unwrap();
        assert_eq!((f.body, f.drop_length), (BodyEnd::Chunked, true));
        // A HEAD's connection is not reused, whatever the task says.
        assert!(framing(1, 200, &kept[1..], false).unwrap().reusable);
        assert!(!framing(1, 200, &kept[1..], true).unwrap().reusable);
        assert!(!framing(1, 200, &coded[..1], false).unwrap().drop_length);
    }

    fn client() -> ClientInfo {
        ClientInfo {
            peer: "10.1.2.3:5555".parse().unwrap(),
            local: "0.0.0.0:8080".parse().unwrap(),
            tls: false,
        }
    }

    fn table() -> Table {
        let spec = RouteSpec {
            hosts: vec!["example.com".into()],
            ..RouteSpec::default()
        };
        Table::new(vec![Arc::new(Route::new("web", 0, spec))])
    }

    const LIMITS: Limits = Limits {
        max_header_bytes: 1024,
        max_headers: 100,
        health_path: crate::DEFAULT_HEALTH_PATH,
        https_port: 443,
    };

    fn prep(raw: &[u8]) -> (Prep, String) {
        let mut out = Vec::new();
        let p = prepare(raw, &LIMITS, &client(), &table(), &mut out);
        (p, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_plain_request_is_rewritten_for_the_task() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: Example.com:8080\r\nConnection: keep-alive, close\r\nKeep-Alive: 5\r\nX-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\r\nGET /next";
        let (p, out) = prep(raw);
        let Prep::Forward(f) = p else { panic!("{p:?}") };
        assert_eq!(f.consumed, raw.len() - "GET /next".len());
        assert!(f.close && f.idempotent && !f.head);
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: Example.com:8080\r\nAccept: */*\r\n\
             X-Forwarded-For: 192.0.2.1, 10.1.2.3\r\nX-Forwarded-Proto: http\r\n\
             X-Forwarded-Host: Example.com:8080\r\nX-Forwarded-Port: 8080\r\n\r\n"
        );
    }

    #[test]
    fn a_small_body_waits_until_whole_and_travels_with_the_head() {
        let raw = b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhel";
        assert!(matches!(prep(raw).0, Prep::Partial));
        let raw = b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello";
        let (p, out) = prep(raw);
        let Prep::Forward(f) = p else { panic!("{p:?}") };
        assert!(!f.idempotent);
        assert!(out.ends_with("\r\n\r\nhello"), "{out}");
        // A PUT with a body is not sent twice either (a PUT without is).
        let raw = b"PUT / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello";
        let Prep::Forward(f) = prep(raw).0 else {
            panic!()
        };
        assert!(!f.idempotent);
        let raw = b"PUT / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n";
        let Prep::Forward(f) = prep(raw).0 else {
            panic!()
        };
        assert!(f.idempotent);
    }

    #[test]
    fn anything_unusual_goes_to_the_full_server() {
        for raw in [
            &b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: x-secret\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 99999\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : example.com\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: example.com\r\nX: a\0b\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            let (p, _) = prep(raw);
            assert!(
                matches!(p, Prep::Fallback),
                "{:?}: {p:?}",
                String::from_utf8_lossy(raw)
            );
        }
        // A head that cannot complete within the limit.
        let long = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}", "a".repeat(2000));
        assert!(matches!(prep(long.as_bytes()).0, Prep::Fallback));
    }

    #[test]
    fn the_host_health_path_and_unknown_hosts_are_answered_here() {
        let (p, _) = prep(b"GET /dockhand/health?x HTTP/1.1\r\nHost: anything\r\n\r\n");
        assert!(
            matches!(
                p,
                Prep::Local {
                    answer: Local::HostHealth,
                    ..
                }
            ),
            "{p:?}"
        );
        let (p, _) = prep(b"GET /x HTTP/1.1\r\nHost: other.org\r\n\r\n");
        let Prep::Local {
            answer: Local::NoRoute { host, path },
            ..
        } = p
        else {
            panic!("{p:?}")
        };
        assert_eq!((host.as_str(), path.as_str()), ("other.org", "/x"));
    }

    fn resp(raw: &[u8], head: bool, close: bool) -> (RespHead, String) {
        let mut out = Vec::new();
        let r = response(raw, head, close, &mut out).unwrap().unwrap();
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_framing_and_reuse() {
        let (r, out) = resp(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: 5\r\n\r\nhello",
            false,
            false,
        );
        assert_eq!(
            (r.status, r.body, r.reusable),
            (200, BodyEnd::Length(5), true)
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        let (r, out) = resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close, X-A\r\nX-A: 1\r\n\r\n", false, true);
        assert_eq!((r.body, r.reusable), (BodyEnd::Chunked, false));
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        let (r, out) = resp(b"HTTP/1.1 200 OK\r\n\r\n", false, false);
        assert_eq!((r.body, r.reusable), (BodyEnd::Close, false));
        assert!(out.ends_with("Connection: close\r\n\r\n"));
        let (r, _) = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, false);
        assert_eq!(r.body, BodyEnd::None);
        let (r, _) = resp(
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
        );
        assert!(!r.reusable);
        let (r, _) = resp(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            false,
            false,
        );
        assert_eq!(r.body, BodyEnd::None);
        let mut out = Vec::new();
        assert!(response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            false,
            false,
            &mut out
        )
        .is_err());
        assert!(
            response(b"HTTP/1.1 200 OK\r\nContent-Le", false, false, &mut out)
                .unwrap()
                .is_none()
        );
        assert!(response(b"SSH-2.0-OpenSSH\r\n\r\n", false, false, &mut out).is_err());
    }

    #[test]
    fn chunked_framing_finds_the_end_in_any_split() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut c = Chunked::new();
            let a = c.feed(&body[..split]).unwrap();
            assert_eq!(a, split.min(end));
            let b = c.feed(&body[split..]).unwrap();
            assert_eq!(a + b, end, "split at {split}");
            assert!(c.done());
        }
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloX",
            b"fffffffffffffffff\r\n",
            b"\r\n",
        ] {
            assert!(
                Chunked::new().feed(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
