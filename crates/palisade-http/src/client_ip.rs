//! The client's address: the TCP peer, or — only when the peer is a configured trusted proxy —
//! the nearest untrusted hop of `X-Forwarded-For`. A client talking to us directly cannot move
//! itself to another address by sending the header (the per-IP limits and the audit trail see
//! its real address).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;
use ipnet::IpNet;

/// The client address of a request (in its extensions once [`resolve`] ran).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses addresses (`10.0.0.5`) and ranges (`10.0.0.0/8`, `fd00::/8`).
    pub fn parse(items: &[String]) -> Result<TrustedProxies, String> {
        let mut nets = Vec::with_capacity(items.len());
        for raw in items {
            let s = raw.trim();
            let net = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{s}` is not an address or a CIDR range"))?;
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client of a request that arrived from `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        // Each proxy appends the address it received from; read from the right, skipping our
        // own proxies. The first hop we do not trust is the client; anything left of it is
        // whatever the client wrote and is ignored.
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // A malformed entry: stop at the last address a trusted proxy vouched for.
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let h = hop.trim();
    h.parse::<IpAddr>()
        .ok()
        .or_else(|| h.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// Stores [`ClientIp`] in the request's extensions (a plain function of the request, layered
/// with `tower::util::MapRequestLayer`: no async middleware, which would clone the service
/// stack below it on every request).
pub fn resolve(proxies: &TrustedProxies, mut req: Request) -> Request {
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        let ip = proxies.client_ip(peer.ip(), req.headers());
        req.extensions_mut().insert(ClientIp(ip));
    }
    req
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.168.1.7".into()]).unwrap();
        // A direct client's header is ignored.
        assert_eq!(
            t.client_ip(ip("203.0.113.9"), &headers(&["1.1.1.1"])),
            ip("203.0.113.9")
        );
        // Through our proxy: the hop it saw.
        assert_eq!(
            t.client_ip(ip("10.1.2.3"), &headers(&["198.51.100.4"])),
            ip("198.51.100.4")
        );
        // A client's forged entries left of the real one are ignored.
        assert_eq!(
            t.client_ip(ip("10.1.2.3"), &headers(&["6.6.6.6, 198.51.100.4"])),
            ip("198.51.100.4")
        );
        // Two of our proxies in a row, over two header lines, with a port.
        assert_eq!(
            t.client_ip(
                ip("192.168.1.7"),
                &headers(&["6.6.6.6", "198.51.100.4:5555, 10.9.9.9"])
            ),
            ip("198.51.100.4")
        );
        // Garbage: the last vouched-for address.
        assert_eq!(
            t.client_ip(ip("10.1.2.3"), &headers(&["not-an-ip"])),
            ip("10.1.2.3")
        );
        // No header: the proxy itself.
        assert_eq!(t.client_ip(ip("10.1.2.3"), &headers(&[])), ip("10.1.2.3"));
        // IPv4-mapped IPv6 peers match IPv4 ranges.
        assert_eq!(
            t.client_ip(ip("::ffff:10.1.2.3"), &headers(&["198.51.100.4"])),
            ip("198.51.100.4")
        );
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy.local".into()]).is_err());
    }
}
