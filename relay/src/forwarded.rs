//! The client's IP address behind trusted reverse proxies (`--trusted-proxies`).
//!
//! Behind a reverse proxy every request comes from the proxy's address. A proxy appends the
//! address it received the request from to `X-Forwarded-For`, so the header reads
//! `client, proxy1, proxy2, ...` with the hop closest to the relay on the right. Only entries
//! added by proxies we trust can be believed: anything to their left may have been written by the
//! client. So, when the TCP peer is a trusted proxy, the client is the right-most address that is
//! not itself a trusted proxy. Anything else falls back to the peer's address, never to an error:
//! - an untrusted peer: its `X-Forwarded-For` is ignored (anyone can send one);
//! - no header, or a header that is not ASCII, or an entry that is not an address before (right
//!   of) the first untrusted one: the peer's address;
//! - every address in the header is a trusted proxy: the left-most one.
//!
//! Entries may carry a port (`203.0.113.7:5123`, `[2001:db8::7]:443`) or brackets around an
//! IPv6 address; IPv4 addresses mapped into IPv6 (`::ffff:10.0.0.1`, what a relay bound to `[::]`
//! sees for IPv4 peers) count as the IPv4 address.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The `X-Forwarded-For` header.
pub(crate) const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The reverse proxies whose `X-Forwarded-For` the relay believes: IP addresses and networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses a comma-separated list of IP addresses and CIDR networks (`10.0.0.1`,
    /// `10.0.0.0/8`, `fd00::/8`; spaces around entries are ignored). Empty: no proxy is trusted.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in list.split(',').map(str::trim) {
            if entry.is_empty() {
                if list.trim().is_empty() {
                    break;
                }
                return Err(format!("empty entry in the list {list:?}"));
            }
            let net = match entry.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match entry.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip.to_canonical()),
                    Err(_) => {
                        return Err(format!(
                            "{entry:?} is neither an IP address nor a CIDR network \
                             (e.g. 10.0.0.1, 10.0.0.0/8 or fd00::/8)"
                        ));
                    }
                },
            };
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Is `ip` one of the trusted proxies?
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request from `peer` with these headers (see the module
    /// comment).
    pub(crate) fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        // Several header lines are one list, in order (RFC 9110, section 5.3).
        let mut entries: Vec<&str> = Vec::new();
        for value in headers.get_all(X_FORWARDED_FOR) {
            let Ok(text) = value.to_str() else {
                return peer;
            };
            entries.extend(text.split(','));
        }
        let mut leftmost_trusted = None;
        for entry in entries.iter().rev() {
            let Some(ip) = parse_entry(entry) else {
                return peer;
            };
            if !self.contains(ip) {
                return ip;
            }
            leftmost_trusted = Some(ip);
        }
        leftmost_trusted.unwrap_or(peer)
    }
}

/// One address of `X-Forwarded-For`: `IP`, `IPv4:port`, `[IPv6]` or `[IPv6]:port`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = if let Ok(ip) = entry.parse::<IpAddr>() {
        ip
    } else if let Ok(addr) = entry.parse::<SocketAddr>() {
        addr.ip()
    } else {
        entry
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|inner| inner.parse::<std::net::Ipv6Addr>().ok())
            .map(IpAddr::V6)?
    };
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::http::HeaderValue;

    use super::*;

    fn proxies(list: &str) -> TrustedProxies {
        TrustedProxies::parse(list).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    /// The client address for a request from `peer` with one `X-Forwarded-For: header`.
    fn client(trusted: &str, peer: &str, header: &str) -> IpAddr {
        proxies(trusted).client_ip(ip(peer), &forwarded(&[header]))
    }

    #[test]
    fn parses_addresses_and_networks() {
        let p = proxies(" 10.0.0.0/8, 192.168.1.1 ,fd00::/8,::1");
        for inside in [
            "10.1.2.3",
            "192.168.1.1",
            "fd00::5",
            "::1",
            "::ffff:10.9.9.9",
        ] {
            assert!(p.contains(ip(inside)), "{inside}");
        }
        for outside in ["11.0.0.1", "192.168.1.2", "fe80::1", "::2"] {
            assert!(!p.contains(ip(outside)), "{outside}");
        }
        assert!(proxies("").is_empty());
        assert!(proxies("  ").is_empty());
        for bad in [
            "10.0.0.0/33",
            "localhost",
            "10.0.0.1,,10.0.0.2",
            "10.0.0.1,",
            "1.2.3.4:80",
        ] {
            let err = TrustedProxies::parse(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
    }

    #[test]
    fn an_untrusted_peers_header_is_ignored() {
        assert_eq!(
            client("10.0.0.0/8", "198.51.100.1", "203.0.113.7"),
            ip("198.51.100.1")
        );
        assert_eq!(client("", "10.0.0.1", "203.0.113.7"), ip("10.0.0.1"));
    }

    #[test]
    fn a_trusted_peer_names_the_client() {
        assert_eq!(
            client("10.0.0.1", "10.0.0.1", "203.0.113.7"),
            ip("203.0.113.7")
        );
        assert_eq!(
            proxies("10.0.0.1").client_ip(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1"),
            "no header: the peer"
        );
    }

    #[test]
    fn hops_through_several_trusted_proxies_are_skipped() {
        assert_eq!(
            client("10.0.0.0/8", "10.0.0.1", "203.0.113.7, 10.0.0.2, 10.0.0.3"),
            ip("203.0.113.7")
        );
        // Several header lines form one list, in order.
        assert_eq!(
            proxies("10.0.0.0/8")
                .client_ip(ip("10.0.0.1"), &forwarded(&["203.0.113.7", "10.0.0.2"])),
            ip("203.0.113.7")
        );
        // Only trusted proxies in the chain: the farthest of them.
        assert_eq!(
            client("10.0.0.0/8", "10.0.0.1", "10.0.0.9, 10.0.0.2"),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn spoofed_left_most_entries_are_ignored() {
        // The client wrote "1.1.1.1, 2.2.2.2" itself; the proxy appended its real address.
        assert_eq!(
            client("10.0.0.0/8", "10.0.0.1", "1.1.1.1, 2.2.2.2, 203.0.113.7"),
            ip("203.0.113.7")
        );
        // A client claiming to be a trusted proxy gains nothing either.
        assert_eq!(
            client("10.0.0.0/8", "10.0.0.1", "10.0.0.5, 203.0.113.7"),
            ip("203.0.113.7")
        );
        // Junk left of the client's address is the client's own and is ignored too.
        assert_eq!(
            client("10.0.0.0/8", "10.0.0.1", "junk, 203.0.113.7"),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn a_malformed_header_falls_back_to_the_peer() {
        let peer = ip("10.0.0.1");
        for header in [
            "",
            " ",
            "unknown",
            "203.0.113.7, junk",
            "203.0.113.7,",
            "203.0.113.7, 10.0.0.2, _hidden",
            "203.0.113.256",
            "[203.0.113.7]",
            "2001:db8::1]",
        ] {
            assert_eq!(client("10.0.0.0/8", "10.0.0.1", header), peer, "{header:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"203.0.113.7\xff").unwrap(),
        );
        assert_eq!(
            proxies("10.0.0.0/8").client_ip(peer, &headers),
            peer,
            "not ASCII"
        );
        let long = vec!["junk"; 10_000].join(",");
        assert_eq!(client("10.0.0.0/8", "10.0.0.1", &long), peer);
    }

    #[test]
    fn ipv6_ports_and_mapped_addresses() {
        assert_eq!(client("::1", "::1", "2001:db8::7"), ip("2001:db8::7"));
        assert_eq!(
            client("fd00::/8", "fd00::1", "[2001:db8::7]:443, fd00::2"),
            ip("2001:db8::7")
        );
        assert_eq!(
            client("fd00::/8", "fd00::1", "[2001:db8::7]"),
            ip("2001:db8::7")
        );
        assert_eq!(
            client("10.0.0.1", "10.0.0.1", "203.0.113.7:5123"),
            ip("203.0.113.7")
        );
        // A relay bound to [::] sees an IPv4 proxy as ::ffff:10.0.0.1.
        assert_eq!(
            client("10.0.0.1", "::ffff:10.0.0.1", "203.0.113.7"),
            ip("203.0.113.7")
        );
        assert_eq!(
            client("10.0.0.1", "::ffff:10.0.0.1", "::ffff:203.0.113.7"),
            ip("203.0.113.7")
        );
        assert_eq!(
            client("10.0.0.1", "::ffff:198.51.100.1", "203.0.113.7"),
            ip("198.51.100.1")
        );
        // IPv4 proxy, IPv6 client and the other way round.
        assert_eq!(
            client("10.0.0.1", "10.0.0.1", "2001:db8::7"),
            ip("2001:db8::7")
        );
        assert_eq!(
            client("fd00::1", "fd00::1", "203.0.113.7"),
            ip("203.0.113.7")
        );
    }
}
