//! An HTTP/2 request's header block, decoded straight into the HTTP/1.1
//! head a task is sent (request line, `host` from `:authority`, the
//! headers, split cookies joined), checked on the way (RFC 9113 §8.2-8.3),
//! so the common stream goes through the fast path's rewrite (h1.rs) with
//! no `Request` built; and trailers, decoded into a `HeaderMap`.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Uri, Version};

/// Why a request cannot be served.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// Reset with PROTOCOL_ERROR.
    Protocol(&'static str),
    /// Answered 431.
    TooLarge,
}

use Malformed::Protocol;

/// The buffers a request's head is built in, kept by the connection.
#[derive(Default)]
pub(crate) struct Scratch {
    method: Vec<u8>,
    path: Vec<u8>,
    authority: Vec<u8>,
    lines: Vec<u8>,
    cookie: Vec<u8>,
    /// The HTTP/1.1 head, once [`Builder::finish`] made it.
    pub head: Vec<u8>,
}

/// What the head says beyond its bytes.
pub(crate) struct Facts {
    /// `content-length`.
    pub expect: Option<u64>,
    /// `te: trailers` (gRPC): the answer's trailers are wanted.
    pub trailers: bool,
}

/// A header block on its way into [`Scratch::head`].
pub(crate) struct Builder<'a> {
    s: &'a mut Scratch,
    limit: usize,
    max_count: usize,
    size: usize,
    count: usize,
    regular: bool,
    method: bool,
    scheme: bool,
    authority: bool,
    path: bool,
    host: bool,
    facts: Facts,
    error: Option<Malformed>,
}

/// A token character (RFC 9110 §5.6.2), upper case excluded: HTTP/2 names
/// are lower case.
fn name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A field value's bytes: no control characters but tab, so nothing can
/// end a line of the HTTP/1.1 head.
fn value_bytes(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Headers about one HTTP/1.1 connection, which HTTP/2 forbids.
pub(crate) fn connection_specific(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
    )
}

impl<'a> Builder<'a> {
    pub(crate) fn new(s: &'a mut Scratch, limit: usize, max_count: usize) -> Builder<'a> {
        s.method.clear();
        s.path.clear();
        s.authority.clear();
        s.lines.clear();
        s.cookie.clear();
        s.head.clear();
        Builder {
            s,
            limit,
            max_count,
            size: 0,
            count: 0,
            regular: false,
            method: false,
            scheme: false,
            authority: false,
            path: false,
            host: false,
            facts: Facts {
                expect: None,
                trailers: false,
            },
            error: None,
        }
    }

    pub(crate) fn field(&mut self, name: &[u8], value: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.take(name, value) {
            self.error = Some(e);
        }
    }

    fn take(&mut self, name: &[u8], value: &[u8]) -> Result<(), Malformed> {
        self.size += name.len() + value.len() + 32;
        self.count += 1;
        if self.size > self.limit || self.count > self.max_count {
            return Err(Malformed::TooLarge);
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular {
                return Err(Protocol("a pseudo-header after the regular ones"));
            }
            let (seen, into) = match pseudo {
                b"method" => (&mut self.method, &mut self.s.method),
                b"path" => (&mut self.path, &mut self.s.path),
                b"authority" => (&mut self.authority, &mut self.s.authority),
                b"scheme" => {
                    if std::mem::replace(&mut self.scheme, true) {
                        return Err(Protocol("two :scheme"));
                    }
                    return Ok(());
                }
                _ => return Err(Protocol("an unknown pseudo-header")),
            };
            if std::mem::replace(seen, true) {
                return Err(Protocol("a pseudo-header twice"));
            }
            // Each goes into the request line or `host`: no space, no
            // control character.
            if value.iter().any(|&b| b <= b' ' || b == 0x7f) {
                return Err(Protocol(
                    "a pseudo-header with a space or control character",
                ));
            }
            into.extend_from_slice(value);
            return Ok(());
        }
        self.regular = true;
        if name.is_empty() || !name.iter().all(|&b| name_byte(b)) {
            return Err(Protocol("an invalid or uppercase header name"));
        }
        if !value_bytes(value) {
            return Err(Protocol("a control character in a header value"));
        }
        if connection_specific(name) {
            return Err(Protocol("a connection-specific header"));
        }
        match name {
            b"te" => {
                if value != b"trailers" {
                    return Err(Protocol("TE other than trailers"));
                }
                self.facts.trailers = true;
            }
            b"cookie" => {
                // Split cookies are joined for HTTP/1.1 (RFC 9113 §8.2.3).
                if !self.s.cookie.is_empty() {
                    self.s.cookie.extend_from_slice(b"; ");
                }
                self.s.cookie.extend_from_slice(value);
                return Ok(());
            }
            b"host" => {
                if self.authority {
                    // `:authority` says it (RFC 9113 §8.3.1).
                    return Ok(());
                }
                if std::mem::replace(&mut self.host, true) {
                    return Err(Protocol("two host headers"));
                }
            }
            b"content-length" => {
                let n = crate::h1::content_length(value)
                    .ok_or(Protocol("an invalid content-length"))?;
                if self.facts.expect.is_some_and(|e| e != n) {
                    return Err(Protocol("two different content-lengths"));
                }
                self.facts.expect = Some(n);
            }
            _ => {}
        }
        let l = &mut self.s.lines;
        l.extend_from_slice(name);
        l.extend_from_slice(b": ");
        l.extend_from_slice(value);
        l.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// Writes the HTTP/1.1 head into the scratch's `head`.
    pub(crate) fn finish(self, end_stream: bool) -> Result<Facts, Malformed> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !self.method {
            return Err(Protocol("no :method"));
        }
        let s = self.s;
        let connect = s.method == b"CONNECT";
        if connect {
            if self.scheme || self.path || !self.authority {
                return Err(Protocol("CONNECT takes :authority alone"));
            }
        } else if !self.scheme || s.path.is_empty() {
            return Err(Protocol("no :scheme or :path"));
        }
        if !s
            .method
            .iter()
            .all(|&b| b.is_ascii_uppercase() || name_byte(b))
        {
            return Err(Protocol("an invalid :method"));
        }
        if end_stream && self.facts.expect.is_some_and(|n| n > 0) {
            return Err(Protocol("a content-length with no body"));
        }
        let h = &mut s.head;
        h.reserve(s.method.len() + s.path.len() + s.authority.len() + s.lines.len() + 64);
        h.extend_from_slice(&s.method);
        h.push(b' ');
        h.extend_from_slice(if connect { &s.authority } else { &s.path });
        h.extend_from_slice(b" HTTP/1.1\r\n");
        if self.authority {
            h.extend_from_slice(b"host: ");
            h.extend_from_slice(&s.authority);
            h.extend_from_slice(b"\r\n");
        }
        h.extend_from_slice(&s.lines);
        if !s.cookie.is_empty() {
            h.extend_from_slice(b"cookie: ");
            h.extend_from_slice(&s.cookie);
            h.extend_from_slice(b"\r\n");
        }
        h.extend_from_slice(b"\r\n");
        Ok(self.facts)
    }
}

/// The request a finished head describes, for forward.rs (streams the
/// fast path does not take).
pub(crate) fn from_head(head: &[u8], max_headers: usize) -> Result<Request<()>, Malformed> {
    let mut slots = vec![httparse::EMPTY_HEADER; max_headers + 2];
    let mut parsed = httparse::Request::new(&mut slots);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Protocol("a request HTTP/1.1 cannot carry")),
    }
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return Err(Protocol("a request HTTP/1.1 cannot carry"));
    };
    let mut req = Request::new(());
    *req.method_mut() =
        hyper::Method::from_bytes(method.as_bytes()).map_err(|_| Protocol("an invalid :method"))?;
    *req.uri_mut() = target
        .parse::<Uri>()
        .map_err(|_| Protocol("an invalid :path"))?;
    *req.version_mut() = Version::HTTP_2;
    let headers = req.headers_mut();
    headers.reserve(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Protocol("an invalid name"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| Protocol("an invalid value"))?;
        headers.append(name, value);
    }
    Ok(req)
}

/// Trailers: regular fields only, checked as a request's are.
pub(crate) struct Trailers {
    pub map: HeaderMap,
    limit: usize,
    size: usize,
    pub bad: bool,
}

impl Trailers {
    pub(crate) fn new(limit: usize) -> Trailers {
        Trailers {
            map: HeaderMap::new(),
            limit,
            size: 0,
            bad: false,
        }
    }

    pub(crate) fn field(&mut self, name: &[u8], value: &[u8]) {
        self.size += name.len() + value.len() + 32;
        if self.bad
            || self.size > self.limit
            || name.is_empty()
            || !name.iter().all(|&b| name_byte(b))
            || connection_specific(name)
        {
            self.bad = true;
            return;
        }
        match (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            (Ok(n), Ok(v)) => {
                self.map.append(n, v);
            }
            _ => self.bad = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(fields: &[(&str, &str)], end_stream: bool) -> Result<String, Malformed> {
        let mut s = Scratch::default();
        let mut b = Builder::new(&mut s, 64 * 1024, 100);
        for (n, v) in fields {
            b.field(n.as_bytes(), v.as_bytes());
        }
        b.finish(end_stream)?;
        Ok(String::from_utf8(s.head).unwrap())
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/a?b=c"),
        (":authority", "example.com"),
    ];

    #[test]
    fn a_request_becomes_its_http1_head() {
        let mut f = GET.to_vec();
        f.extend([
            ("cookie", "a=1"),
            ("accept", "*/*"),
            ("host", "ignored.example"),
            ("cookie", "b=2"),
        ]);
        assert_eq!(
            build(&f, true).unwrap(),
            "GET /a?b=c HTTP/1.1\r\nhost: example.com\r\naccept: */*\r\ncookie: a=1; b=2\r\n\r\n"
        );
        // Without :authority, the host header stays.
        let f = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            ("host", "h"),
        ];
        assert_eq!(
            build(&f, true).unwrap(),
            "GET / HTTP/1.1\r\nhost: h\r\n\r\n"
        );
        let req = from_head(build(&GET, true).unwrap().as_bytes(), 100).unwrap();
        assert_eq!(req.uri(), "/a?b=c");
        assert_eq!(req.headers()["host"], "example.com");
        assert_eq!(req.version(), Version::HTTP_2);
    }

    #[test]
    fn what_http2_forbids_or_http1_cannot_carry_is_malformed() {
        let bad: &[(&str, &str)] = &[
            ("X-Upper", "1"),
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("x-a", "line\r\nx-injected: 1"),
            ("x-a", "nul\0"),
            (":status", "200"),
            ("content-length", "x"),
        ];
        for (n, v) in bad {
            let mut f = GET.to_vec();
            f.push((n, v));
            assert!(
                matches!(build(&f, true), Err(Malformed::Protocol(_))),
                "{n}: {v:?}"
            );
        }
        let mut late = vec![("accept", "*/*")];
        late.extend(GET);
        assert!(
            build(&late, true).is_err(),
            "pseudo-header after a regular one"
        );
        let mut twice = GET.to_vec();
        twice.push((":path", "/b"));
        assert!(build(&twice, true).is_err());
        let spaced = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/ HTTP/1.1\r\nx: y"),
        ];
        assert!(
            build(&spaced, true).is_err(),
            "a path that would split the line"
        );
        assert!(build(&GET[..3], true).is_ok());
        assert!(build(&GET[1..], true).is_err(), "no :method");
        let mut body = GET.to_vec();
        body.push(("content-length", "3"));
        assert!(build(&body, true).is_err(), "content-length without a body");
        assert!(build(&body, false).is_ok());
    }

    #[test]
    fn headers_over_the_limits_are_too_large() {
        let mut s = Scratch::default();
        let mut b = Builder::new(&mut s, 200, 100);
        for (n, v) in GET {
            b.field(n.as_bytes(), v.as_bytes());
        }
        b.field(b"x-big", &[b'a'; 200]);
        assert_eq!(b.finish(true).err(), Some(Malformed::TooLarge));
        let mut s = Scratch::default();
        let mut b = Builder::new(&mut s, 64 * 1024, 5);
        for (n, v) in GET {
            b.field(n.as_bytes(), v.as_bytes());
        }
        b.field(b"a", b"1");
        b.field(b"b", b"2");
        assert_eq!(b.finish(true).err(), Some(Malformed::TooLarge));
    }
}
