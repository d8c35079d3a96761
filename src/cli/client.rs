//! One HTTP/1 request to a Lessl on a fresh connection (TCP or Unix socket), answered whole
//! or as live events read line by line ([`Lines`], a pure decoder), the `--url` parser, and
//! the API's error body turned into a [`CliError`].

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use super::{CliError, Connection};
use crate::util::error_chain;

/// Where the daemon is.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// `http://host[:port][/]`, `unix:/path`, or the bare `host:port` that `--listen` takes.
fn parse_url(url: &str) -> Result<Target, String> {
    if let Some(path) = url.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err("a Unix socket needs an absolute path, as in unix:/run/lessl.sock".into());
        }
        return Ok(Target::Unix(path));
    }
    let authority = match url.split_once("://") {
        Some(("http", rest)) => rest.strip_suffix('/').unwrap_or(rest),
        Some((scheme, _)) => {
            return Err(format!(
                "scheme `{scheme}` is not supported; use http://host:port or unix:/path"
            ))
        }
        None => url,
    };
    if authority.contains(['/', '?', '#', '@']) {
        return Err("only http://host:port is supported, without a path, query or user".into());
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address needs its closing `]`")?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or("expected `:port` after `]`")?,
                ),
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("`{p}` is not a port"))?,
    };
    Ok(Target::Tcp {
        host: host.to_string(),
        port,
    })
}

/// One Lessl, as configured on the command line.
pub(super) struct Client {
    url: String,
    target: Target,
    token: Option<String>,
}

impl Client {
    pub(super) fn new(conn: &Connection) -> Result<Client, CliError> {
        let target = parse_url(&conn.url).map_err(|message| CliError::Url {
            url: conn.url.clone(),
            message,
        })?;
        let token = match &conn.token_file {
            None => None,
            Some(path) => {
                let fail = |message| CliError::ReadTokenFile {
                    path: path.clone(),
                    message,
                };
                let raw = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
                // Trimmed as the server trims it, so a trailing newline matches.
                let token = raw.trim();
                if token.is_empty() {
                    return Err(fail("it is empty".into()));
                }
                Some(token.to_string())
            }
        };
        Ok(Client {
            url: conn.url.clone(),
            target,
            token,
        })
    }

    /// One request on a fresh connection; the body of a 2xx answer, or the API's error.
    pub(super) async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, CliError> {
        let mut whole = Vec::new();
        self.request(method, path_and_query, body, false, |_, b| {
            whole.extend_from_slice(b);
            Ok(())
        })
        .await?;
        Ok(Bytes::from(whole))
    }

    /// One request asking for live events: each line of a 2xx answer (without its newline)
    /// goes to `on_line` as soon as it arrived; an error answer is the API's error.
    pub(super) async fn stream(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        mut on_line: impl FnMut(&[u8]) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let what = format!(
            "{method} {}",
            path_and_query.split('?').next().unwrap_or("")
        );
        let mut lines = Lines::default();
        let mut failed = None;
        self.request(method, path_and_query, body, true, |_, chunk| {
            lines.feed(chunk, |l| {
                if failed.is_none() {
                    failed = on_line(l).err();
                }
            });
            Ok(())
        })
        .await?;
        if let Some(e) = failed {
            return Err(e);
        }
        lines.finish().map_err(|cut| CliError::Request {
            what,
            error: format!("the answer ended inside a line ({cut} bytes)"),
        })
    }

    /// Sends the request; a 2xx answer's body goes to `on_body` chunk by chunk as it comes.
    async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        events: bool,
        on_body: impl FnMut(&str, &[u8]) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let what = format!(
            "{method} {}",
            path_and_query.split('?').next().unwrap_or("")
        );
        let host = match &self.target {
            Target::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Target::Tcp { host, port } => format!("{host}:{port}"),
            Target::Unix(_) => "localhost".to_string(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(HOST, host);
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        if events {
            req = req.header(ACCEPT, NDJSON);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CliError::Request {
                what: what.clone(),
                error: e.to_string(),
            })?;
        let connect = |error| CliError::Connect {
            url: self.url.clone(),
            error,
        };
        let mut error_body = Vec::new();
        let mut on_body = on_body;
        let mut sink = |status: StatusCode, content_type: &str, chunk: &[u8]| {
            if status.is_success() {
                on_body(content_type, chunk)
            } else {
                error_body.extend_from_slice(chunk);
                Ok(())
            }
        };
        let status = match &self.target {
            Target::Tcp { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(connect)?;
                exchange(s, req, &mut sink).await
            }
            Target::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect)?;
                exchange(s, req, &mut sink).await
            }
        };
        let status = match status {
            Ok(s) => s,
            Err(Exchange::Body(e)) => return Err(e),
            Err(Exchange::Http(error)) => {
                return Err(CliError::Request {
                    what: what.clone(),
                    error,
                })
            }
        };
        if status.is_success() {
            return Ok(());
        }
        Err(api_error(status, &error_body, self.token.is_some()))
    }

    /// A GET whose 2xx body goes to `sink` a frame at a time as it arrives (never held whole),
    /// with the answer's Content-Type; an error answer is the API's error.
    pub(super) async fn get_streamed(
        &self,
        path: &str,
        sink: &mut Sink<'_>,
    ) -> Result<(), CliError> {
        self.request(Method::GET, path, None, false, sink).await
    }
}

/// Takes a streamed body a chunk at a time, with the answer's Content-Type.
pub(super) type Sink<'a> = dyn FnMut(&str, &[u8]) -> Result<(), CliError> + 'a;

/// The media type of live events.
const NDJSON: &str = "application/x-ndjson";

/// Why an exchange stopped.
enum Exchange {
    Http(String),
    /// What was done with the body failed (output closed).
    Body(CliError),
}

/// Sends `req` and hands each piece of the answer's body to `sink` as it arrives.
async fn exchange<S>(
    stream: S,
    req: Request<Full<Bytes>>,
    sink: &mut impl FnMut(StatusCode, &str, &[u8]) -> Result<(), CliError>,
) -> Result<StatusCode, Exchange>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| Exchange::Http(error_chain(&e));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // The connection is driven beside the request; it ends once the answer is read.
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(http)?.into_data() {
            sink(status, &content_type, &data).map_err(Exchange::Body)?;
        }
    }
    drop(sender);
    let _ = driver.await;
    Ok(status)
}

/// Splits a byte stream into lines, whatever the pieces it arrives in. Pure.
#[derive(Debug, Default)]
pub(super) struct Lines {
    /// The start of a line whose end has not arrived.
    partial: Vec<u8>,
}

impl Lines {
    /// Calls `line` with each line (without its newline) that `chunk` completes.
    pub(super) fn feed(&mut self, mut chunk: &[u8], mut line: impl FnMut(&[u8])) {
        while let Some(p) = chunk.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                line(&chunk[..p]);
            } else {
                self.partial.extend_from_slice(&chunk[..p]);
                line(&self.partial);
                self.partial.clear();
            }
            chunk = &chunk[p + 1..];
        }
        self.partial.extend_from_slice(chunk);
    }

    /// The end of the stream: Err with the length of a last line cut short.
    pub(super) fn finish(self) -> Result<(), usize> {
        match self.partial.len() {
            0 => Ok(()),
            n => Err(n),
        }
    }
}

/// The API's `{"error": {...}}` body as a [`CliError::Api`]; a body that is not one (a proxy's
/// page) still gives one line, with the HTTP status.
fn api_error(status: StatusCode, body: &[u8], sent_token: bool) -> CliError {
    #[derive(Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        code: String,
        message: String,
        #[serde(default)]
        field: Option<String>,
    }
    let hint = (status == StatusCode::UNAUTHORIZED && !sent_token)
        .then_some("no token was sent: set LESSL_TOKEN_FILE or --token-file");
    match serde_json::from_slice::<Body>(body) {
        Ok(Body { error: d }) => {
            // The server's message may start with the field, which the line names anyway.
            let message = match &d.field {
                Some(f) => d
                    .message
                    .strip_prefix(f.as_str())
                    .and_then(|rest| rest.strip_prefix(": "))
                    .map(str::to_string)
                    .unwrap_or(d.message),
                None => d.message,
            };
            CliError::Api {
                status: status.as_u16(),
                code: d.code,
                message,
                field: d.field,
                hint,
            }
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let first = text.lines().map(str::trim).find(|l| !l.is_empty());
            CliError::Api {
                status: status.as_u16(),
                code: format!("HTTP {}", status.as_u16()),
                message: first
                    .unwrap_or(status.canonical_reason().unwrap_or("error"))
                    .to_string(),
                field: None,
                hint,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(input: &[u8], cuts: &[usize]) -> (Vec<Vec<u8>>, Result<(), usize>) {
        let mut lines = Lines::default();
        let mut seen = Vec::new();
        let mut from = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            lines.feed(&input[from..c], |l| seen.push(l.to_vec()));
            from = c;
        }
        (seen, lines.finish())
    }

    #[test]
    fn lines_come_whole_at_every_split() {
        let input = b"{\"a\":1}\n\n{\"b\":\"x\\ny\"}\nlast\n";
        let want: Vec<Vec<u8>> = [&b"{\"a\":1}"[..], b"", b"{\"b\":\"x\\ny\"}", b"last"]
            .iter()
            .map(|l| l.to_vec())
            .collect();
        assert_eq!(split(input, &[]), (want.clone(), Ok(())));
        for i in 0..=input.len() {
            for j in i..=input.len() {
                assert_eq!(split(input, &[i, j]), (want.clone(), Ok(())), "{i},{j}");
            }
        }
        let every: Vec<usize> = (0..input.len()).collect();
        assert_eq!(split(input, &every), (want, Ok(())));
        // A last line without its newline: the stream was cut.
        assert_eq!(split(b"a\nbc", &[3]).1, Err(2));
    }

    use crate::cli::DEFAULT_URL;

    #[test]
    fn urls() {
        let tcp = |h: &str, p| {
            Ok(Target::Tcp {
                host: h.into(),
                port: p,
            })
        };
        assert_eq!(parse_url(DEFAULT_URL), tcp("127.0.0.1", 8734));
        assert_eq!(parse_url("http://localhost:9000/"), tcp("localhost", 9000));
        assert_eq!(parse_url("http://example.com"), tcp("example.com", 80));
        assert_eq!(parse_url("127.0.0.1:8734"), tcp("127.0.0.1", 8734));
        assert_eq!(parse_url("http://[::1]:8734"), tcp("::1", 8734));
        assert_eq!(parse_url("http://[::1]"), tcp("::1", 80));
        assert_eq!(
            parse_url("unix:/run/lessl.sock"),
            Ok(Target::Unix("/run/lessl.sock".into()))
        );
        assert_eq!(
            parse_url("unix:///run/lessl.sock"),
            Ok(Target::Unix("///run/lessl.sock".into()))
        );
        for bad in [
            "unix:run/lessl.sock",
            "https://host:8734",
            "http://host:8734/api",
            "http://user@host:8734",
            "http://host:0",
            "http://host:99999",
            "http://host:port",
            "http://:8734",
            "http://[::1",
            "http://[::1]8734",
            "",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
    #[test]
    fn api_errors_are_one_line() {
        let body = br#"{"error": {"code": "spec.decode", "message": "unknown field `imgae`", "field": "imgae"}}"#;
        let e = api_error(StatusCode::BAD_REQUEST, body, false);
        assert_eq!(
            e.to_string(),
            "unknown field `imgae` (spec.decode, field imgae)"
        );
        let body = br#"{"error": {"code": "spec.decode", "field": "resources[0].dtaa",
            "message": "resources[0].dtaa: unknown field `dtaa`"}}"#;
        assert_eq!(
            api_error(StatusCode::BAD_REQUEST, body, false).to_string(),
            "unknown field `dtaa` (spec.decode, field resources[0].dtaa)"
        );
        let body = br#"{"error": {"code": "task.name_clash", "field": "task_name",
            "message": "a live task is already named `task_name`"}}"#;
        assert_eq!(
            api_error(StatusCode::CONFLICT, body, false).to_string(),
            "a live task is already named `task_name` (task.name_clash, field task_name)"
        );
        let body = br#"{"error": {"code": "task.not_found", "message": "no task `x`"}}"#;
        assert_eq!(
            api_error(StatusCode::NOT_FOUND, body, false).to_string(),
            "no task `x` (task.not_found)"
        );
        let body = br#"{"error": {"code": "http.unauthorized", "message": "missing or wrong bearer token"}}"#;
        assert!(api_error(StatusCode::UNAUTHORIZED, body, false)
            .to_string()
            .ends_with("; no token was sent: set LESSL_TOKEN_FILE or --token-file"));
        assert_eq!(
            api_error(StatusCode::UNAUTHORIZED, body, true).to_string(),
            "missing or wrong bearer token (http.unauthorized)"
        );
        let e = api_error(
            StatusCode::BAD_GATEWAY,
            b"\n<html>Bad gateway</html>\nmore",
            true,
        );
        assert_eq!(e.to_string(), "<html>Bad gateway</html> (HTTP 502)");
        let e = api_error(StatusCode::BAD_GATEWAY, b"", true);
        assert_eq!(e.to_string(), "Bad Gateway (HTTP 502)");
    }
}
