//! URL syntax for downloads: the strict `http`/`https` subset Lessl accepts, and redirect targets resolved against it.
//!
//! Hand-written rather than a general URL library so that every accepted form is listed
//! here: anything a browser would "fix up" (backslashes, spaces, credentials, zone ids) is
//! an error instead, so no other parser can read a different host out of the same string.

use std::fmt;

use super::addr::{parse_host, Host};
use super::FetchError;

/// Longer than any real resource URL; bounds the work done on hostile input.
const MAX_URL_LEN: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    pub host: Host,
    pub port: u16,
    /// Origin-form request target: starts with `/`, fragment removed.
    pub path_and_query: String,
}

impl Url {
    /// The `Host` header value: the port is named only when it is not the scheme's default.
    pub fn authority(&self) -> String {
        if self.port == self.scheme.default_port() {
            self.host.to_string()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority(),
            self.path_and_query
        )
    }
}

fn bad(s: &str, why: impl fmt::Display) -> FetchError {
    let shown: String = s.chars().take(200).collect();
    FetchError::ParseUrl(format!("{shown:?}: {why}"))
}

/// Parses an absolute `http://` or `https://` URL. It only reads the URL: whether its host
/// may be contacted is decided later, by [`super::check_ip`] on the resolved addresses.
pub fn parse_url(s: &str) -> Result<Url, FetchError> {
    if s.len() > MAX_URL_LEN {
        return Err(bad(s, format!("longer than {MAX_URL_LEN} bytes")));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(bad(s, format!("{c:?} is not allowed (percent-encode it)")));
    }
    if s.contains('\\') {
        return Err(bad(s, "backslashes are not allowed"));
    }
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| bad(s, "not an absolute http:// or https:// URL"))?;
    let scheme = if scheme.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else {
        return Err(bad(s, "only http and https URLs are accepted"));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(bad(s, "credentials in URLs are not accepted"));
    }
    let (host, port) = split_host_port(authority).map_err(|why| bad(s, why))?;
    let host = parse_host(host).map_err(|why| bad(s, why))?;
    let port = match port {
        None => scheme.default_port(),
        Some(p) => parse_port(p).ok_or_else(|| bad(s, format!("invalid port {p:?}")))?,
    };
    let without_fragment = tail.split_once('#').map_or(tail, |(before, _)| before);
    let path_and_query = if without_fragment.starts_with('/') {
        without_fragment.to_string()
    } else {
        format!("/{without_fragment}")
    };
    check_target(&path_and_query).map_err(|why| bad(s, why))?;
    Ok(Url {
        scheme,
        host,
        port,
        path_and_query,
    })
}

fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if authority.starts_with('[') {
        let close = authority.find(']').ok_or("unterminated IPv6 literal")?;
        let (host, after) = authority.split_at(close + 1);
        return match after {
            "" => Ok((host, None)),
            _ => after
                .strip_prefix(':')
                .map(|p| (host, Some(p)))
                .ok_or_else(|| format!("unexpected {after:?} after the IPv6 literal")),
        };
    }
    match authority.split_once(':') {
        None => Ok((authority, None)),
        Some((host, port)) => Ok((host, Some(port))),
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n != 0)
}

/// The request target must survive hyper unchanged and hold only well-formed escapes, so
/// what Lessl logs is what the server receives.
fn check_target(target: &str) -> Result<(), String> {
    let bytes = target.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let ok = bytes.len() > i + 2
                    && bytes[i + 1].is_ascii_hexdigit()
                    && bytes[i + 2].is_ascii_hexdigit();
                if !ok {
                    return Err("malformed percent-escape in the path".into());
                }
                i += 3;
            }
            b'"' | b'<' | b'>' | b'`' | b'{' | b'}' | b'|' | b'^' => {
                return Err(format!(
                    "{:?} must be percent-encoded in the path",
                    bytes[i] as char
                ));
            }
            _ => i += 1,
        }
    }
    target
        .parse::<hyper::http::uri::PathAndQuery>()
        .map(|_| ())
        .map_err(|e| format!("invalid path: {e}"))
}

/// The URL a redirect's `Location` points to, resolved against the URL that answered
/// (RFC 3986 §5.2) and then parsed by [`parse_url`] like any user-given URL.
pub(crate) fn resolve_location(base: &Url, location: &str) -> Result<Url, FetchError> {
    let location = location.trim_matches([' ', '\t']);
    if has_scheme(location) {
        return parse_url(location);
    }
    let origin = format!("{}://{}", base.scheme.as_str(), base.authority());
    let absolute = if location.starts_with("//") {
        format!("{}:{location}", base.scheme.as_str())
    } else if location.starts_with('/') {
        let (path, rest) = split_path(location);
        format!("{origin}{}{rest}", remove_dot_segments(path))
    } else if location.is_empty() || location.starts_with('#') {
        format!("{origin}{}", base.path_and_query)
    } else if location.starts_with('?') {
        let (base_path, _) = split_path(&base.path_and_query);
        format!("{origin}{base_path}{location}")
    } else {
        let (base_path, _) = split_path(&base.path_and_query);
        let dir = base_path.rfind('/').map_or("/", |i| &base_path[..=i]);
        let (path, rest) = split_path(location);
        format!(
            "{origin}{}{rest}",
            remove_dot_segments(&format!("{dir}{path}"))
        )
    };
    parse_url(&absolute)
}

/// Splits a reference into its path and the `?query#fragment` that follows.
fn split_path(s: &str) -> (&str, &str) {
    let end = s.find(['?', '#']).unwrap_or(s.len());
    s.split_at(end)
}

/// `scheme:` per RFC 3986: a letter, then letters, digits, `+`, `-` or `.`, then a colon.
fn has_scheme(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// RFC 3986 §5.2.4 on an absolute path, by segments.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                // A trailing dot segment still names a directory.
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn url(s: &str) -> Url {
        parse_url(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn good_forms() {
        let u = url("http://example.com");
        assert_eq!(u.scheme, Scheme::Http);
        assert_eq!(u.host, Host::Name("example.com".into()));
        assert_eq!(u.port, 80);
        assert_eq!(u.path_and_query, "/");

        let u = url("HTTPS://Example.COM:8443/a/b.tar.gz?x=1&y=%20#frag");
        assert_eq!(u.scheme, Scheme::Https);
        assert_eq!(u.host, Host::Name("example.com".into()));
        assert_eq!(u.port, 8443);
        assert_eq!(u.path_and_query, "/a/b.tar.gz?x=1&y=%20");
        assert_eq!(
            u.to_string(),
            "https://example.com:8443/a/b.tar.gz?x=1&y=%20"
        );

        let u = url("https://example.com?q");
        assert_eq!((u.port, u.path_and_query.as_str()), (443, "/?q"));
        let u = url("http://example.com#top");
        assert_eq!(u.path_and_query, "/");
        let u = url("http://[2606:2800:220:1::1]:8080/x");
        assert_eq!(u.host, Host::Ip("2606:2800:220:1::1".parse().unwrap()));
        assert_eq!(u.authority(), "[2606:2800:220:1::1]:8080");
        let u = url("http://example.com:80/");
        assert_eq!(u.authority(), "example.com");
        let u = url("http://example.com:65535/");
        assert_eq!(u.port, 65535);
        let u = url("http://a.b/x[1]?k[]=v");
        assert_eq!(u.path_and_query, "/x[1]?k[]=v");
    }

    #[test]
    fn every_spelling_of_loopback_parses_to_it_and_is_refused() {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let none = super::super::Allow::default();
        for host in [
            "127.0.0.1",
            "127.1",
            "127.0.1",
            "2130706433",
            "0x7f000001",
            "0177.0.0.1",
            "0x7f.1",
            "0X7F.0.0.1",
            "127.0.0.1.",
        ] {
            let u = url(&format!("http://{host}:8080/x"));
            assert_eq!(u.host, Host::Ip(loopback), "{host}");
            let err = super::super::check_ip(loopback, &none).unwrap_err();
            assert!(err.is_refused());
        }
        for host in [
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
            "[::1]",
            "[64:ff9b::7f00:1]",
        ] {
            let u = url(&format!("http://{host}/"));
            let Host::Ip(ip) = u.host else {
                panic!("{host} parsed as a name")
            };
            assert!(
                super::super::check_ip(ip, &none).unwrap_err().is_refused(),
                "{host}"
            );
        }
    }

    #[test]
    fn bad_forms() {
        for s in [
            "file:///etc/passwd",
            "FILE:///etc/passwd",
            "ftp://example.com/x",
            "data:text/plain,hi",
            "gopher://x",
            "gopher://x:70/_",
            "javascript:alert(1)",
            "http:/example.com/",
            "http:example.com",
            "//example.com/",
            "example.com/x",
            "",
            "http://",
            "http:///path",
            "http://user:pw@host/",
            "http://user@host/",
            "http://@host/",
            "http://host@127.0.0.1/",
            "http://[fe80::1%25eth0]/",
            "http://[fe80::1%eth0]/",
            "http://[::1/",
            "http://[::1]x/",
            "http://::1/",
            "http://host:0/",
            "http://host:65536/",
            "http://host:/",
            "http://host:8o/",
            "http://host:+80/",
            "http://host:1:2/",
            "http://host/a b",
            "http://host/a\tb",
            "http://host/a\nb",
            " http://host/",
            "http://host/\u{0}",
            "http://hóst/",
            "http://host/é",
            "http:\\\\host\\",
            "http://host\\@evil/",
            "http://ho_st/",
            "http://256.1.1.1/",
            "http://1.2.3.4.5/",
            "http://example.0x/",
            "http://host/%zz",
            "http://host/%4",
            "http://host/a\"b",
            "http://host/<script>",
            "http://%31%32%37.0.0.1/",
        ] {
            let got = parse_url(s);
            assert!(
                matches!(got, Err(FetchError::ParseUrl(_))),
                "{s:?}: {got:?}"
            );
            assert!(got.unwrap_err().is_refused());
        }
        assert!(parse_url(&format!("http://host/{}", "a".repeat(MAX_URL_LEN))).is_err());
    }

    #[test]
    fn locations_resolve_against_the_base() {
        let base = url("https://example.com:8443/dir/file.txt?q=1");
        let cases = [
            ("http://other.org/x", "http://other.org/x"),
            ("//cdn.example.net/y", "https://cdn.example.net/y"),
            ("/abs/path?z", "https://example.com:8443/abs/path?z"),
            ("rel", "https://example.com:8443/dir/rel"),
            ("./rel2#f", "https://example.com:8443/dir/rel2"),
            ("../up", "https://example.com:8443/up"),
            ("../../../too/far", "https://example.com:8443/too/far"),
            ("sub/", "https://example.com:8443/dir/sub/"),
            ("..", "https://example.com:8443/"),
            ("?other", "https://example.com:8443/dir/file.txt?other"),
            ("", "https://example.com:8443/dir/file.txt?q=1"),
            ("/a/./b/../c", "https://example.com:8443/a/c"),
            (" /trimmed ", "https://example.com:8443/trimmed"),
        ];
        for (loc, want) in cases {
            let got = resolve_location(&base, loc).unwrap_or_else(|e| panic!("{loc}: {e}"));
            assert_eq!(got.to_string(), want, "{loc}");
        }
        for loc in [
            "file:///etc/passwd",
            "gopher://x/",
            "//user@host/",
            "//[fe80::1%25lo]/",
            "http://a b/",
            "/a b",
        ] {
            assert!(resolve_location(&base, loc).is_err(), "{loc}");
        }
        let refused = resolve_location(&base, "http://0x7f.1:9/").unwrap();
        assert_eq!(refused.host, Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn arbitrary_input_never_panics() {
        const PIECES: &[&str] = &[
            "http", "https", "://", ":", "/", "//", "?", "#", "@", "[", "]", "%", "%2", "%25", ".",
            "..", "0x", "0", "7f", "127", "1", "::", "ffff", "a", "-", "\\", " ", "é", "\u{0}",
            "65535", "99999",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let base = url("https://example.com/a/b?c");
        for _ in 0..20_000 {
            let len = next() % 12;
            let s: String = (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            let _ = parse_url(&s);
            let _ = resolve_location(&base, &s);
            let _ = parse_host(&s);
            let _ = super::super::Allow::parse(&s);
        }
    }

    #[test]
    fn dot_segments() {
        assert_eq!(remove_dot_segments("/"), "/");
        assert_eq!(remove_dot_segments("/a/b/../c"), "/a/c");
        assert_eq!(remove_dot_segments("/a/b/.."), "/a/");
        assert_eq!(remove_dot_segments("/a/b/."), "/a/b/");
        assert_eq!(remove_dot_segments("/../../a"), "/a");
        assert_eq!(remove_dot_segments("/a//b"), "/a//b");
    }
}
