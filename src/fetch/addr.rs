//! Destination hosts: how a host is written, which addresses a download may reach, and the operator's `--src-allow` exceptions.
//!
//! The policy is a deny-list of everything that is not ordinary public unicast, applied to
//! the address actually connected to, after every spelling of it has been normalised. Two
//! choices worth knowing:
//!
//! - Documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32,
//!   3fff::/20) are refused: no real download lives there, so an address from them is a
//!   mistake or a probe.
//! - IPv6 is allowed only inside global unicast 2000::/3, minus its special blocks. Addresses
//!   that carry an IPv4 address (IPv4-mapped, IPv4-compatible, SIIT, NAT64 64:ff9b::/96, 6to4)
//!   are judged by that IPv4 address, because that is where the packets end up.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::FetchError;

/// Where a URL points: a DNS name to resolve, or an address written literally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// Lowercased, without a trailing dot; only letters, digits, hyphens and dots.
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// Parses the host part of a URL authority (brackets included for IPv6).
///
/// Every IPv4 spelling the classic `inet_aton` accepts is turned into the address, because
/// resolvers and other clients would do the same: treating `0x7f.1` as a name would let it
/// reach loopback through getaddrinfo. A name whose last label looks numeric but is not a
/// valid address is an error rather than a DNS lookup, since no real TLD is numeric.
pub(crate) fn parse_host(s: &str) -> Result<Host, String> {
    if s.is_empty() {
        return Err("empty host".into());
    }
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("unterminated IPv6 literal {s:?}"))?;
        if inner.contains('%') {
            return Err(format!("IPv6 zone ids are not accepted: {s:?}"));
        }
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Ip(IpAddr::V6(ip)))
            .map_err(|_| format!("invalid IPv6 address {s:?}"));
    }
    if s.contains(':') {
        return Err(format!("IPv6 addresses must be in brackets: {s:?}"));
    }
    let lower = s.to_ascii_lowercase();
    // A single trailing dot is the fully-qualified spelling of the same host.
    let host = lower.strip_suffix('.').unwrap_or(&lower);
    if host.is_empty() || host.len() > 253 {
        return Err(format!("invalid host name {s:?}"));
    }
    for label in host.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(format!("invalid host name {s:?}"));
        }
    }
    let last = host.rsplit('.').next().unwrap_or(host);
    if looks_numeric(last) {
        return parse_ipv4_loose(host)
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .ok_or_else(|| format!("{s:?} looks like an IPv4 address but is not a valid one"));
    }
    if host.starts_with('-') || host.ends_with('-') || host.contains(".-") || host.contains("-.") {
        return Err(format!("invalid host name {s:?}"));
    }
    Ok(Host::Name(host.to_string()))
}

/// Decimal digits, or `0x` followed by hex digits (possibly none): what inet_aton may read as a number.
fn looks_numeric(label: &str) -> bool {
    match label.strip_prefix("0x") {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// IPv4 in every form inet_aton accepts: 1 to 4 parts, each decimal, octal (leading 0) or
/// hex (0x); the last part fills all the remaining bytes. `s` must already be lowercase.
pub(crate) fn parse_ipv4_loose(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        values.push(parse_ipv4_part(part)?);
    }
    let (last, leading) = values.split_last()?;
    let mut addr: u32 = 0;
    for (i, v) in leading.iter().enumerate() {
        if *v > 0xff {
            return None;
        }
        addr |= (*v as u32) << (24 - 8 * i);
    }
    // Bits left for the last part: 32, 24, 16 or 8.
    let rest_bits = 32 - 8 * leading.len() as u32;
    if *last >= 1u64 << rest_bits {
        return None;
    }
    addr |= *last as u32;
    Some(Ipv4Addr::from(addr))
}

fn parse_ipv4_part(part: &str) -> Option<u64> {
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x") {
        (hex, 16)
    } else if part.len() > 1 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    if digits.is_empty() {
        // "0" alone is decimal zero; "0x" with nothing after it is not accepted.
        return None;
    }
    let mut value: u64 = 0;
    for c in digits.chars() {
        let d = c.to_digit(radix)?;
        value = value.checked_mul(radix as u64)?.checked_add(d as u64)?;
        if value > u32::MAX as u64 {
            return None;
        }
    }
    Some(value)
}

/// A CIDR range; the address is stored with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    fn new(ip: IpAddr, len: u8) -> Option<Cidr> {
        let net = match ip {
            IpAddr::V4(v4) if len <= 32 => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask32(len))),
            IpAddr::V6(v6) if len <= 128 => {
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask128(len)))
            }
            _ => return None,
        };
        Some(Cidr { net, len })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => u32::from(ip) & mask32(self.len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.len) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

/// Which destinations the operator opened despite being internal (`--src-allow`: hosts or CIDRs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    /// Lowercased, exact: a name here allows whatever it resolves to.
    hosts: Vec<String>,
    ranges: Vec<Cidr>,
}

impl Allow {
    /// Comma-separated hosts, addresses and CIDR ranges, e.g.
    /// `127.0.0.1/32,example.internal,::1/128,10.0.0.0/8`. Empty entries are ignored; host
    /// bits below a prefix are cleared (`127.0.0.1/8` means 127.0.0.0/8).
    pub fn parse(list: &str) -> Result<Allow, String> {
        let mut allow = Allow::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Some((addr, len)) = entry.split_once('/') {
                let ip = addr
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .map_err(|_| format!("--src-allow: {entry:?}: not an IP address before '/'"))?;
                let cidr = len
                    .parse::<u8>()
                    .ok()
                    .and_then(|len| Cidr::new(ip, len))
                    .ok_or_else(|| format!("--src-allow: {entry:?}: invalid prefix length"))?;
                allow.ranges.push(cidr);
                continue;
            }
            let host = match entry.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) => parse_host(entry).map_err(|e| format!("--src-allow: {e}"))?,
            };
            match host {
                Host::Ip(ip) => allow
                    .ranges
                    .extend(Cidr::new(ip, if ip.is_ipv4() { 32 } else { 128 })),
                Host::Name(name) => allow.hosts.push(name),
            }
        }
        Ok(allow)
    }

    /// Whether `name` (already lowercased by [`parse_host`]) was opened by name.
    pub fn allows_host(&self, name: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.ranges.is_empty()
    }
}

/// Pure: is this address one a download may reach? `Ok` for public unicast and for anything
/// inside an [`Allow`] range; otherwise [`FetchError::Refused`] naming the class.
pub fn check_ip(ip: IpAddr, allow: &Allow) -> Result<(), FetchError> {
    match refusal(ip, allow) {
        None => Ok(()),
        Some(why) => Err(FetchError::Refused(format!("{ip} is {why}"))),
    }
}

/// Why `ip` may not be reached, phrased to follow "ADDRESS is", or `None` when it may.
pub(crate) fn refusal(ip: IpAddr, allow: &Allow) -> Option<String> {
    if allow.allows_ip(ip) {
        return None;
    }
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4).map(str::to_string),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) if allow.allows_ip(IpAddr::V4(v4)) => None,
            Some(v4) => refusal_v4(v4).map(|why| format!("an IPv6 form of {v4}, which is {why}")),
            None => refusal_v6(v6).map(str::to_string),
        },
    }
}

const V4_REFUSED: &[([u8; 4], u8, &str)] = &[
    ([0, 0, 0, 0], 8, "unspecified (0.0.0.0/8)"),
    ([10, 0, 0, 0], 8, "private (10.0.0.0/8)"),
    ([100, 64, 0, 0], 10, "carrier-grade NAT (100.64.0.0/10)"),
    ([127, 0, 0, 0], 8, "loopback (127.0.0.0/8)"),
    (
        [169, 254, 0, 0],
        16,
        "link-local (169.254.0.0/16, cloud metadata)",
    ),
    ([172, 16, 0, 0], 12, "private (172.16.0.0/12)"),
    (
        [192, 0, 0, 0],
        24,
        "IETF protocol assignments (192.0.0.0/24)",
    ),
    ([192, 0, 2, 0], 24, "documentation (192.0.2.0/24)"),
    ([192, 88, 99, 0], 24, "6to4 relay anycast (192.88.99.0/24)"),
    ([192, 168, 0, 0], 16, "private (192.168.0.0/16)"),
    ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
    ([198, 51, 100, 0], 24, "documentation (198.51.100.0/24)"),
    ([203, 0, 113, 0], 24, "documentation (203.0.113.0/24)"),
    ([224, 0, 0, 0], 4, "multicast (224.0.0.0/4)"),
    (
        [240, 0, 0, 0],
        4,
        "reserved or broadcast (240.0.0.0/4, 255.255.255.255)",
    ),
];

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    V4_REFUSED
        .iter()
        .find(|(net, len, _)| u32::from(ip) & mask32(*len) == u32::from(Ipv4Addr::from(*net)))
        .map(|(_, _, why)| *why)
}

/// Checked in order; the last line refuses everything outside global unicast.
const V6_REFUSED: &[(u128, u8, &str)] = &[
    (0, 128, "unspecified (::)"),
    (1, 128, "loopback (::1)"),
    (
        0x0064_ff9b_0001 << 80,
        48,
        "local-use NAT64 (64:ff9b:1::/48)",
    ),
    (0x0100 << 112, 64, "discard-only (100::/64)"),
    (
        0x2001 << 112,
        23,
        "IETF protocol assignments (2001::/23, Teredo, benchmarking)",
    ),
    (0x2001_0db8 << 96, 32, "documentation (2001:db8::/32)"),
    (0x3fff << 112, 20, "documentation (3fff::/20)"),
    (0xfc00 << 112, 7, "unique-local (fc00::/7)"),
    (0xfe80 << 112, 10, "link-local (fe80::/10)"),
    (0xfec0 << 112, 10, "site-local (fec0::/10)"),
    (0xff00 << 112, 8, "multicast (ff00::/8)"),
];

fn refusal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    if let Some((_, _, why)) = V6_REFUSED
        .iter()
        .find(|(net, len, _)| bits & mask128(*len) == *net)
    {
        return Some(why);
    }
    if bits & mask128(3) != 0x2000 << 112 {
        return Some("outside IPv6 global unicast (2000::/3)");
    }
    None
}

/// The IPv4 address an IPv6 address stands for, when it is one of the forms that carry one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from(bits as u32);
    let top96 = bits >> 32;
    match top96 {
        // :: and ::1 are their own kinds, named as such by refusal_v6.
        0 if bits <= 1 => None,
        // IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks).
        0 => Some(low32),
        // IPv4-mapped ::ffff:a.b.c.d.
        0xffff => Some(low32),
        // SIIT IPv4-translated ::ffff:0:a.b.c.d.
        0xffff_0000 => Some(low32),
        // NAT64 well-known prefix 64:ff9b::/96.
        0x0064_ff9b_0000_0000_0000_0000 => Some(low32),
        // 6to4 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
        _ if bits >> 112 == 0x2002 => Some(Ipv4Addr::from((bits >> 80) as u32)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_table() {
        let none = Allow::default();
        let table: &[(&str, bool)] = &[
            // loopback
            ("127.0.0.1", false),
            ("127.0.0.2", false),
            ("127.255.255.255", false),
            ("::1", false),
            // unspecified
            ("0.0.0.0", false),
            ("0.1.2.3", false),
            ("::", false),
            // private
            ("10.0.0.1", false),
            ("10.255.255.255", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("192.168.0.1", false),
            ("192.168.255.255", false),
            // CGNAT
            ("100.64.0.1", false),
            ("100.127.255.255", false),
            // link-local and cloud metadata
            ("169.254.0.1", false),
            ("169.254.169.254", false),
            ("fe80::1", false),
            ("febf::1", false),
            // unique-local and site-local
            ("fc00::1", false),
            ("fd12:3456::1", false),
            ("fec0::1", false),
            // multicast
            ("224.0.0.1", false),
            ("239.255.255.255", false),
            ("ff02::1", false),
            ("ff0e::1", false),
            // broadcast and reserved
            ("255.255.255.255", false),
            ("240.0.0.1", false),
            // IETF assignments and benchmarking
            ("192.0.0.1", false),
            ("192.0.0.170", false),
            ("198.18.0.1", false),
            ("198.19.255.255", false),
            ("2001:2::1", false),
            ("2001::1", false),
            // documentation (refused by choice)
            ("192.0.2.1", false),
            ("198.51.100.1", false),
            ("203.0.113.1", false),
            ("2001:db8::1", false),
            ("3fff::1", false),
            // 6to4 relay, discard-only, outside 2000::/3
            ("192.88.99.1", false),
            ("100::1", false),
            ("4000::1", false),
            ("64:ff9b:1::1", false),
            // IPv4 carried in IPv6 is judged by the IPv4 address
            ("::ffff:127.0.0.1", false),
            ("::ffff:7f00:1", false),
            ("::ffff:169.254.169.254", false),
            ("::ffff:10.0.0.1", false),
            ("::127.0.0.1", false),
            ("::ffff:0:127.0.0.1", false),
            ("64:ff9b::127.0.0.1", false),
            ("64:ff9b::a9fe:a9fe", false),
            ("2002:7f00:1::1", false),
            ("2002:a9fe:a9fe::", false),
            ("::ffff:93.184.216.34", true),
            ("64:ff9b::93.184.216.34", true),
            ("2002:5db8:d822::1", true),
            // public: only classified, never contacted
            ("93.184.216.34", true),
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("9.255.255.255", true),
            ("11.0.0.0", true),
            ("100.63.255.255", true),
            ("100.128.0.0", true),
            ("172.15.255.255", true),
            ("172.32.0.0", true),
            ("192.0.1.1", true),
            ("192.167.255.255", true),
            ("192.169.0.0", true),
            ("198.17.255.255", true),
            ("198.20.0.0", true),
            ("223.255.255.255", true),
            ("2606:2800:220:1::1", true),
            ("2001:4860:4860::8888", true),
            ("2a00:1450:4001::1", true),
        ];
        for (addr, allowed) in table {
            let got = check_ip(ip(addr), &none);
            assert_eq!(got.is_ok(), *allowed, "{addr}: {got:?}");
            if let Err(e) = got {
                assert!(e.is_refused(), "{addr}: {e}");
            }
        }
    }

    #[test]
    fn allow_opens_only_its_ranges() {
        let allow = Allow::parse("127.0.0.1/32, ::1/128,10.0.0.0/8,,Example.Internal.").unwrap();
        assert!(check_ip(ip("127.0.0.1"), &allow).is_ok());
        assert!(check_ip(ip("::ffff:127.0.0.1"), &allow).is_ok());
        assert!(check_ip(ip("127.0.0.2"), &allow).is_err());
        assert!(check_ip(ip("::1"), &allow).is_ok());
        assert!(check_ip(ip("10.200.0.3"), &allow).is_ok());
        assert!(check_ip(ip("169.254.169.254"), &allow).is_err());
        assert!(allow.allows_host("example.internal"));
        assert!(allow.allows_host("EXAMPLE.internal"));
        assert!(!allow.allows_host("other.internal"));
        assert!(!allow.allows_host("sub.example.internal"));
    }

    #[test]
    fn allow_parse_forms() {
        let a = Allow::parse("127.0.0.1").unwrap();
        assert!(check_ip(ip("127.0.0.1"), &a).is_ok());
        assert!(check_ip(ip("127.0.0.2"), &a).is_err());
        let a = Allow::parse("[::1]").unwrap();
        assert!(check_ip(ip("::1"), &a).is_ok());
        let a = Allow::parse("127.0.0.9/8").unwrap();
        assert!(check_ip(ip("127.1.2.3"), &a).is_ok());
        let a = Allow::parse("0.0.0.0/0").unwrap();
        assert!(check_ip(ip("10.0.0.1"), &a).is_ok());
        assert!(check_ip(ip("fe80::1"), &a).is_err());
        assert!(Allow::parse("").unwrap().is_empty());
        for bad in [
            "127.0.0.1/33",
            "::1/129",
            "10.0.0.0/x",
            "host/8",
            "bad_host",
            "1.2.3.4.5",
            "a..b",
            "[fe80::1%eth0]",
        ] {
            assert!(Allow::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_ipv4_spelling_of_loopback() {
        for s in [
            "127.0.0.1",
            "127.1",
            "127.0.1",
            "2130706433",
            "0x7f000001",
            "0X7F000001",
            "0177.0.0.1",
            "0x7f.1",
            "0x7f.0.0.0x1",
            "017700000001",
            "127.0.0.1.",
            "0177.0.1",
        ] {
            assert_eq!(
                parse_host(s),
                Ok(Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST))),
                "{s}"
            );
        }
        assert_eq!(parse_host("0"), Ok(Host::Ip(ip("0.0.0.0"))));
        assert_eq!(parse_host("1.2.3.4"), Ok(Host::Ip(ip("1.2.3.4"))));
        assert_eq!(
            parse_host("4294967295"),
            Ok(Host::Ip(ip("255.255.255.255")))
        );
    }

    #[test]
    fn numeric_looking_names_are_errors() {
        for s in [
            "256.0.0.1",
            "1.2.3.4.5",
            "4294967296",
            "0x100000000",
            "1.16777216",
            "08.0.0.1",
            "0x",
            "1.2.3.0x",
            "example.123",
            "99999999999999999999999",
            "0xfffffffffffffffffff",
        ] {
            assert!(parse_host(s).is_err(), "{s}: {:?}", parse_host(s));
        }
    }

    #[test]
    fn names_and_ipv6_literals() {
        assert_eq!(
            parse_host("Example.COM"),
            Ok(Host::Name("example.com".into()))
        );
        assert_eq!(
            parse_host("example.com."),
            Ok(Host::Name("example.com".into()))
        );
        assert_eq!(parse_host("1e100.net"), Ok(Host::Name("1e100.net".into())));
        assert_eq!(parse_host("deadbeef"), Ok(Host::Name("deadbeef".into())));
        assert_eq!(parse_host("[::1]"), Ok(Host::Ip(ip("::1"))));
        assert_eq!(
            parse_host("[::ffff:127.0.0.1]"),
            Ok(Host::Ip(ip("::ffff:7f00:1")))
        );
        for s in [
            "",
            ".",
            "a..b",
            ".a",
            "a_b",
            "-a.com",
            "a-.com",
            "a.-b.com",
            "ex ample",
            "exämple.com",
            "%31%32%37.0.0.1",
            "::1",
            "[::1",
            "[fe80::1%25eth0]",
            "[fe80::1%eth0]",
            "[v1.x]",
            "[127.0.0.1]",
            &"a".repeat(64),
            &format!("{}.com", "a.".repeat(130)),
        ] {
            assert!(parse_host(s).is_err(), "{s:?}: {:?}", parse_host(s));
        }
    }

    #[test]
    fn cidr_masks_at_the_edges() {
        assert_eq!(mask32(0), 0);
        assert_eq!(mask32(32), u32::MAX);
        assert_eq!(mask128(0), 0);
        assert_eq!(mask128(128), u128::MAX);
        assert!(Cidr::new(ip("1.2.3.4"), 33).is_none());
        assert!(!Cidr::new(ip("::"), 0).unwrap().contains(ip("1.2.3.4")));
    }
}
