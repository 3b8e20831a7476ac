//! The test application for Dockhand's integration tests and demo.
//!
//! Like the article's `training/webapp`: `GET /` answers `Hello <PROVIDER or
//! world>!` on port 5000. It is built as a static binary into a `FROM scratch`
//! image, so it uses only `std` and `libc` and speaks just enough HTTP/1.1.
//!
//! Knobs, all environment variables, let a test make a task misbehave:
//!
//! | variable            | effect                                                       |
//! |---------------------|--------------------------------------------------------------|
//! | `PORT`              | listen port (default 5000)                                   |
//! | `PROVIDER`          | the name in `Hello <PROVIDER>!` (default `world`)            |
//! | `STARTUP_DELAY_MS`  | sleep before listening                                       |
//! | `RESPONSE_DELAY_MS` | sleep before every response                                  |
//! | `EXIT_AFTER_MS`     | exit this long after start, with `EXIT_CODE` (default 1)     |
//! | `IGNORE_SIGTERM`    | `1`: ignore SIGTERM, so only SIGKILL stops it                |
//! | `UNHEALTHY`         | `1`: `GET /health` answers 500 from the start                |
//!
//! Endpoints: `GET /` (hello), `GET /health` (200 `ok` or 500 `unhealthy`),
//! `POST /admin/unhealthy` and `POST /admin/healthy` to flip health at run
//! time, `GET /slow?ms=N` to answer after N ms, `GET /env/NAME` to echo one
//! variable, `GET /headers` to echo the request headers, `POST /upload` to
//! count a body (Content-Length or chunked) without keeping it, and
//! `GET /echo` with `Upgrade:` to switch protocols (101) and echo bytes. `webapp check [URL-PATH]` exits 0 when its own `/health` (or the
//! path given) answers 200: a Docker HEALTHCHECK for an image without a shell.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn env_flag(name: &str) -> bool {
    matches!(std::env::var(name).as_deref(), Ok("1") | Ok("true"))
}

extern "C" fn on_sigterm(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

#[allow(unsafe_code)] // signal(2) has no safe std wrapper; the handler only calls _exit.
fn install_signal_handlers(ignore_sigterm: bool) {
    // As PID 1 in a container, a signal without a handler is ignored, so an
    // explicit handler is what makes `docker stop` work quickly.
    let handler = if ignore_sigterm {
        libc::SIG_IGN
    } else {
        on_sigterm as *const () as libc::sighandler_t
    };
    // SAFETY: installing a handler that is async-signal-safe, or SIG_IGN.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, on_sigterm as *const () as libc::sighandler_t);
    }
}

fn main() {
    let port = env_u64("PORT").unwrap_or(5000);
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("check") {
        let path = args.get(2).map(String::as_str).unwrap_or("/health");
        std::process::exit(check(port, path));
    }

    install_signal_handlers(env_flag("IGNORE_SIGTERM"));
    if let Some(ms) = env_u64("EXIT_AFTER_MS") {
        let code = std::env::var("EXIT_CODE")
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(1);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            eprintln!("webapp: exiting with code {code} after {ms} ms, as asked");
            std::process::exit(code);
        });
    }
    if let Some(ms) = env_u64("STARTUP_DELAY_MS") {
        std::thread::sleep(Duration::from_millis(ms));
    }

    let listener = match TcpListener::bind(("0.0.0.0", port as u16)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("webapp: cannot listen on port {port}: {e}");
            std::process::exit(2);
        }
    };
    eprintln!("webapp: listening on port {port}");
    let state = Arc::new(State {
        unhealthy: AtomicBool::new(env_flag("UNHEALTHY")),
        provider: std::env::var("PROVIDER").unwrap_or_else(|_| "world".to_string()),
        delay: Duration::from_millis(env_u64("RESPONSE_DELAY_MS").unwrap_or(0)),
    });
    for stream in listener.incoming().flatten() {
        let state = Arc::clone(&state);
        std::thread::spawn(move || {
            let _ = serve(stream, &state);
        });
    }
}

struct State {
    unhealthy: AtomicBool,
    provider: String,
    delay: Duration,
}

/// Serves one keep-alive connection until the client closes it.
fn serve(stream: TcpStream, state: &State) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("/").to_string();
        let version = parts.next().unwrap_or("HTTP/1.0").to_string();

        let mut content_length = 0usize;
        let mut chunked = false;
        let mut upgrade = false;
        let mut headers = String::new();
        let mut close = version == "HTTP/1.0";
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            headers.push_str(line);
            headers.push('\n');
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.eq_ignore_ascii_case("chunked");
                } else if name.eq_ignore_ascii_case("upgrade") {
                    upgrade = true;
                }
            }
        }
        // Bodies are counted, never kept: uploads of any size stream through.
        let body_len = if chunked {
            read_chunked(&mut reader)?
        } else {
            std::io::copy(
                &mut (&mut reader).take(content_length as u64),
                &mut std::io::sink(),
            )?
        };

        if upgrade && target == "/echo" {
            out.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
            )?;
            // Whatever the reader already buffered is echoed first.
            let buffered = reader.buffer().to_vec();
            out.write_all(&buffered)?;
            let mut inner = reader.into_inner();
            std::io::copy(&mut inner, &mut out)?;
            return Ok(());
        }
        if target == "/headers" {
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{headers}",
                headers.len()
            );
            out.write_all(reply.as_bytes())?;
            if close {
                return Ok(());
            }
            continue;
        }
        if target == "/upload" {
            let text = format!("{body_len}\n");
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            );
            out.write_all(reply.as_bytes())?;
            if close {
                return Ok(());
            }
            continue;
        }

        if !state.delay.is_zero() {
            std::thread::sleep(state.delay);
        }
        let (status, text) = respond(&method, &target, state);
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{text}",
            text.len(),
            if close { "Connection: close\r\n" } else { "" },
        );
        out.write_all(reply.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

fn respond(method: &str, target: &str, state: &State) -> (&'static str, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match (method, path) {
        ("GET", "/") | ("HEAD", "/") => ("200 OK", format!("Hello {}!\n", state.provider)),
        ("GET", "/health") => {
            if state.unhealthy.load(Ordering::Relaxed) {
                ("500 Internal Server Error", "unhealthy\n".to_string())
            } else {
                ("200 OK", "ok\n".to_string())
            }
        }
        ("POST", "/admin/unhealthy") => {
            state.unhealthy.store(true, Ordering::Relaxed);
            ("200 OK", "now unhealthy\n".to_string())
        }
        ("POST", "/admin/healthy") => {
            state.unhealthy.store(false, Ordering::Relaxed);
            ("200 OK", "now healthy\n".to_string())
        }
        ("GET", "/slow") => {
            let ms = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            std::thread::sleep(Duration::from_millis(ms));
            ("200 OK", format!("slept {ms} ms\n"))
        }
        ("GET", "/bytes") => {
            // A body of n bytes (at most 1 MiB), for throughput benchmarks.
            let n = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("n="))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(1024)
                .min(1 << 20);
            ("200 OK", "x".repeat(n))
        }
        ("GET", p) if p.starts_with("/env/") => {
            let value = std::env::var(&p[5..]).unwrap_or_default();
            ("200 OK", format!("{value}\n"))
        }
        _ => ("404 Not Found", "not found\n".to_string()),
    }
}

/// Reads a chunked body to its end, returning its length.
fn read_chunked(reader: &mut BufReader<TcpStream>) -> std::io::Result<u64> {
    let mut total = 0u64;
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        let size = u64::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(total);
                }
            }
        }
        total += std::io::copy(&mut reader.by_ref().take(size), &mut std::io::sink())?;
        let mut crlf = String::new();
        reader.read_line(&mut crlf)?;
    }
}

/// `webapp check`: GET the path on localhost, exit 0 on 200.
fn check(port: u64, path: &str) -> i32 {
    let attempt = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect(("127.0.0.1", port as u16))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        Ok(response.starts_with("HTTP/1.1 200"))
    };
    match attempt() {
        Ok(true) => 0,
        Ok(false) => {
            eprintln!("webapp check: {path} did not answer 200");
            1
        }
        Err(e) => {
            eprintln!("webapp check: {e}");
            1
        }
    }
}
