//! The host's private address, the `addr` label: where the ports a host
//! publishes for the others are reached (`host_ip: "@addr"`, cross-host
//! reach). Data ports are published on it, so it must be an address of the
//! private network between the hosts, never one the internet reaches,
//! unless the operator is told so in so many words (`allow_public_addr`).
//!
//! - `labels.addr = "1.2.3.4"`: that address; refused (exit 64) when it is
//!   not private and `allow_public_addr` is not set.
//! - `labels.addr = "auto"`: the host's one private address, found on its
//!   interfaces (loopback and container bridges left out: `docker0`,
//!   `br-*`, `veth*`, `docker_gwbridge`); with several, the one the default
//!   route leaves from, else refused naming them; with none, refused
//!   naming what the host has.
//! - unset: no `addr` (one host needs none).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};

/// The value of `labels.addr` that asks for detection.
pub const AUTO: &str = "auto";

/// One address of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    /// The interface's name (`eth1`).
    pub name: String,
    /// One of its addresses.
    pub ip: IpAddr,
}

/// Whether other hosts' private network may use `ip`: RFC 1918, shared
/// address space (100.64.0.0/10, as WireGuard and Tailscale networks use)
/// and IPv6 unique local addresses (fc00::/7).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || is_shared(v4),
        IpAddr::V6(v6) => is_unique_local(v6),
    }
}

fn is_shared(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 100 && (64..128).contains(&b)
}

fn is_unique_local(ip: Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xfe00) == 0xfc00
}

/// Interfaces the container engine made: their addresses are this host's
/// own, not the network between hosts.
fn is_container_bridge(name: &str) -> bool {
    name == "docker0" || name == "docker_gwbridge" || name.starts_with("br-") || name.starts_with("veth")
}

/// The `addr` label to publish, from the configured value (see the module
/// docs), this host's interfaces and the address the default route leaves
/// from. `Ok(None)`: none configured. The error names what to set.
pub fn choose(
    configured: Option<&str>,
    ifaces: &[Iface],
    route: Option<IpAddr>,
    allow_public: bool,
) -> Result<Option<IpAddr>, String> {
    let Some(configured) = configured.map(str::trim).filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    if configured != AUTO {
        let ip: IpAddr = configured.parse().map_err(|_| {
            format!("labels.addr: {configured:?} is not an IP address (or \"{AUTO}\" to find the private one)")
        })?;
        if !is_private(ip) && !allow_public {
            return Err(format!(
                "labels.addr: {ip} is not a private address, and the ports published for other hosts would be \
                 reachable on it from outside; give the host's address on the private network between the hosts, \
                 or set allow_public_addr = true to publish them on {ip}"
            ));
        }
        return Ok(Some(ip));
    }
    let candidates: Vec<&Iface> = ifaces
        .iter()
        .filter(|i| !i.ip.is_loopback() && !is_container_bridge(&i.name) && is_private(i.ip))
        .collect();
    let listed = |v: &[&Iface]| {
        v.iter()
            .map(|i| format!("{} {}", i.name, i.ip))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match candidates.as_slice() {
        [one] => Ok(Some(one.ip)),
        [] => {
            let all: Vec<&Iface> = ifaces
                .iter()
                .filter(|i| !i.ip.is_loopback() && !is_container_bridge(&i.name))
                .collect();
            if allow_public && let Some(r) = route {
                return Ok(Some(r));
            }
            Err(format!(
                "labels.addr = \"{AUTO}\": no private address on this host (it has: {}); give the address the \
                 other hosts reach this one at, or set allow_public_addr = true to use the default route's ({})",
                if all.is_empty() {
                    "none".to_owned()
                } else {
                    listed(&all)
                },
                route.map_or_else(|| "none".to_owned(), |r| r.to_string())
            ))
        }
        several => match route.filter(|r| several.iter().any(|i| i.ip == *r)) {
            Some(r) => Ok(Some(r)),
            None => Err(format!(
                "labels.addr = \"{AUTO}\": several private addresses ({}); set labels.addr to the one the other \
                 hosts reach this one at",
                listed(several)
            )),
        },
    }
}

/// This host's interfaces and their addresses.
pub fn interfaces() -> Vec<Iface> {
    if_addrs::get_if_addrs()
        .map(|v| {
            v.into_iter()
                .map(|i| Iface {
                    ip: i.ip(),
                    name: i.name,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The address the default route leaves from (a UDP socket "connected" to
/// a documentation address: no packet is sent).
pub fn default_route() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(name: &str, ip: &str) -> Iface {
        Iface {
            name: name.into(),
            ip: ip.parse().unwrap(),
        }
    }

    #[test]
    fn private_means_rfc1918_shared_space_and_unique_local() {
        for p in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.1",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.0.1",
            "fd00::1",
        ] {
            assert!(is_private(p.parse().unwrap()), "{p}");
        }
        for p in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.0.2.2",
            "2001:db8::1",
            "127.0.0.1",
        ] {
            assert!(!is_private(p.parse().unwrap()), "{p}");
        }
    }

    #[test]
    fn a_configured_address_is_kept_when_private_and_refused_when_public_unless_allowed() {
        assert_eq!(choose(None, &[], None, false), Ok(None));
        assert_eq!(choose(Some(""), &[], None, false), Ok(None));
        assert_eq!(
            choose(Some("10.0.0.5"), &[], None, false),
            Ok(Some("10.0.0.5".parse().unwrap()))
        );
        let e = choose(Some("203.0.113.7"), &[], None, false).unwrap_err();
        assert!(
            e.contains("203.0.113.7 is not a private address") && e.contains("allow_public_addr"),
            "{e}"
        );
        assert_eq!(
            choose(Some("203.0.113.7"), &[], None, true),
            Ok(Some("203.0.113.7".parse().unwrap()))
        );
        let e = choose(Some("vps-1"), &[], None, false).unwrap_err();
        assert!(e.contains("\"vps-1\" is not an IP address"), "{e}");
    }

    #[test]
    fn auto_finds_the_one_private_address_leaving_out_loopback_and_container_bridges() {
        let ifaces = [
            at("lo", "127.0.0.1"),
            at("eth0", "203.0.113.7"),
            at("eth1", "10.0.0.5"),
            at("docker0", "172.17.0.1"),
            at("br-5a6b", "172.18.0.1"),
            at("veth12", "169.254.1.1"),
        ];
        let route = Some("203.0.113.7".parse().unwrap());
        assert_eq!(
            choose(Some("auto"), &ifaces, route, false),
            Ok(Some("10.0.0.5".parse().unwrap()))
        );
    }

    #[test]
    fn auto_with_several_takes_the_default_routes_else_names_them_and_with_none_refuses() {
        let two = [at("eth1", "10.0.0.5"), at("wg0", "100.64.0.9")];
        let via_wg = Some("100.64.0.9".parse().unwrap());
        assert_eq!(choose(Some("auto"), &two, via_wg, false), Ok(via_wg));
        let e = choose(Some("auto"), &two, Some("203.0.113.7".parse().unwrap()), false).unwrap_err();
        assert!(e.contains("eth1 10.0.0.5, wg0 100.64.0.9"), "{e}");
        let public = [at("eth0", "203.0.113.7"), at("docker0", "172.17.0.1")];
        let route = Some("203.0.113.7".parse().unwrap());
        let e = choose(Some("auto"), &public, route, false).unwrap_err();
        assert!(
            e.contains("no private address") && e.contains("eth0 203.0.113.7") && !e.contains("docker0"),
            "{e}"
        );
        assert_eq!(choose(Some("auto"), &public, route, true), Ok(route));
    }
}
