//! Transparent capture's kernel half: the nftables rules that send a workload's TCP
//! connections (and its DNS queries) to its sidecar, installed once per network namespace by
//! `quiver-proxy capture install` (an init container with NET_ADMIN, or a script before the
//! proxy starts) and taken out by `capture remove`. The proxy's half, the listeners the rules
//! point at, is `proxy/transparent.rs`. docs/deploy.md, "Transparent capture", is the user's
//! account of both.
//!
//! Everything lives in one table of our own (`inet quiver_capture`): installing replaces it
//! in one nftables transaction (so running it twice leaves one copy, and a half-installed set
//! never exists), removing deletes it, and nothing else in the namespace's ruleset is touched.
//! The rules are written as nftables' own language and handed to `nft -f -`.
//!
//! What is never captured: the proxy's own sockets (by its uid: its QUIC, its connections to
//! the control plane, its pass-through and DNS forwarding), loopback destinations (apps'
//! explicit listeners, the admin port), UDP other than DNS (QUIC between proxies), IPv6
//! (documented as not captured), and the ports and CIDRs the operator excludes.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The table every rule lives in.
pub const TABLE: &str = "quiver_capture";

/// Which inbound TCP ports are captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// Every port but the excluded ones (Istio's `*`).
    All,
    /// Only these (the workload's declared ports).
    Only(Vec<u16>),
}

impl std::str::FromStr for InboundPorts {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "*" {
            return Ok(Self::All);
        }
        parse_ports(s).map(Self::Only)
    }
}

/// A comma-separated list of ports, 1..65535 (empty: none).
pub fn parse_ports(s: &str) -> Result<Vec<u16>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{p:?} is not a port (1-65535)")),
        })
        .collect()
}

/// A comma-separated list of IPv4 CIDRs (a bare address is a /32).
pub fn parse_cidrs(s: &str) -> Result<Vec<(Ipv4Addr, u8)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let (ip, len) = c.split_once('/').unwrap_or((c, "32"));
            let ip: Ipv4Addr = ip
                .parse()
                .map_err(|_| format!("{c:?}: {ip:?} is not an IPv4 address"))?;
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= 32)
                .ok_or_else(|| format!("{c:?}: /{len} is not a prefix length (0-32)"))?;
            Ok((ip, len))
        })
        .collect()
}

/// What `capture install` sets up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The proxy's uid: its sockets are never captured.
    pub proxy_uid: u32,
    /// Where the app's outbound TCP goes (the proxy's transparent outbound listener).
    pub outbound_port: u16,
    /// Where TCP to the workload's ports from outside goes (the transparent inbound listener).
    pub inbound_port: u16,
    /// Where the app's DNS queries (UDP and TCP 53) go; `None` leaves DNS alone.
    pub dns_port: Option<u16>,
    pub inbound_ports: InboundPorts,
    /// Inbound ports never captured (always with the proxy's admin port and its own listeners).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports never captured.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations never captured.
    pub exclude_cidrs: Vec<(Ipv4Addr, u8)>,
}

/// The proxy's admin port: kubelet's probes and Prometheus reach it directly.
const ADMIN_PORT: u16 = 15020;

impl Rules {
    /// The nftables script that installs the rules: declare the table, delete it, define it
    /// again — one transaction, whatever was there before.
    pub fn install_script(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "table inet {TABLE}");
        let _ = writeln!(s, "delete table inet {TABLE}");
        let _ = writeln!(s, "table inet {TABLE} {{");

        // Outbound: the app's own connections, on the output hook.
        let _ = writeln!(s, "  chain outbound {{");
        let _ = writeln!(s, "    type nat hook output priority -100; policy accept;");
        let _ = writeln!(s, "    meta skuid {} return", self.proxy_uid);
        let _ = writeln!(s, "    meta nfproto ipv6 return");
        if let Some(dns) = self.dns_port {
            // Before the loopback exclusion: resolv.conf often names a loopback resolver
            // (127.0.0.53, podman's 127.0.0.11 is not, but some runtimes use one).
            let _ = writeln!(s, "    udp dport 53 redirect to :{dns}");
            let _ = writeln!(s, "    tcp dport 53 redirect to :{dns}");
        }
        let _ = writeln!(s, "    ip daddr 127.0.0.0/8 return");
        if !self.exclude_cidrs.is_empty() {
            let set = self
                .exclude_cidrs
                .iter()
                .map(|(ip, len)| format!("{ip}/{len}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(s, "    ip daddr {{ {set} }} return");
        }
        if !self.exclude_outbound_ports.is_empty() {
            let _ = writeln!(
                s,
                "    tcp dport {{ {} }} return",
                join(&self.exclude_outbound_ports)
            );
        }
        let _ = writeln!(
            s,
            "    meta l4proto tcp redirect to :{}",
            self.outbound_port
        );
        let _ = writeln!(s, "  }}");

        // Inbound: connections from outside the pod, on the prerouting hook.
        let mut excluded = vec![ADMIN_PORT, self.inbound_port, self.outbound_port];
        excluded.extend(self.dns_port);
        excluded.extend(self.exclude_inbound_ports.iter().copied());
        excluded.sort_unstable();
        excluded.dedup();
        let _ = writeln!(s, "  chain inbound {{");
        let _ = writeln!(
            s,
            "    type nat hook prerouting priority -100; policy accept;"
        );
        let _ = writeln!(s, "    iifname \"lo\" return");
        let _ = writeln!(s, "    meta nfproto ipv6 return");
        let _ = writeln!(s, "    tcp dport {{ {} }} return", join(&excluded));
        match &self.inbound_ports {
            InboundPorts::All => {
                let _ = writeln!(s, "    meta l4proto tcp redirect to :{}", self.inbound_port);
            }
            InboundPorts::Only(ports) if ports.is_empty() => {}
            InboundPorts::Only(ports) => {
                let _ = writeln!(
                    s,
                    "    tcp dport {{ {} }} redirect to :{}",
                    join(ports),
                    self.inbound_port
                );
            }
        }
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "}}");
        s
    }
}

/// The nftables script that removes every rule: nothing when they are not there.
pub fn remove_script() -> String {
    format!("table inet {TABLE}\ndelete table inet {TABLE}\n")
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why the rules could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "{0}: nft not found; install nftables (apt-get install -y nftables) or pass --nft PATH"
    )]
    NoNft(String),
    #[error("running {nft}: {source}")]
    Spawn { nft: String, source: std::io::Error },
    #[error(
        "{nft} refused the rules (exit {code}): {stderr}{hint}",
        hint = if stderr.contains("Operation not permitted") {
            "; capture needs CAP_NET_ADMIN in the workload's network namespace (an init \
             container with NET_ADMIN, running as root)"
        } else {
            ""
        }
    )]
    Refused {
        nft: String,
        code: i32,
        stderr: String,
    },
}

/// Run `nft -f -` with `script` on stdin.
pub fn apply(nft: Option<PathBuf>, script: &str) -> Result<(), CaptureError> {
    let nft = match nft {
        Some(p) => p,
        None => find_nft().ok_or_else(|| CaptureError::NoNft("PATH".into()))?,
    };
    if !nft.exists() {
        return Err(CaptureError::NoNft(nft.display().to_string()));
    }
    let shown = nft.display().to_string();
    let mut child = Command::new(&nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CaptureError::Spawn {
            nft: shown.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| CaptureError::Spawn {
                nft: shown.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| CaptureError::Spawn {
            nft: shown.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(CaptureError::Refused {
            nft: shown,
            code: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// `nft` on PATH, else where Debian and the proxy image put it.
fn find_nft() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            proxy_uid: 1337,
            outbound_port: 15002,
            inbound_port: 15006,
            dns_port: Some(15053),
            inbound_ports: InboundPorts::All,
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![15010],
            exclude_cidrs: vec![(Ipv4Addr::new(10, 0, 0, 0), 8)],
        }
    }

    #[test]
    fn the_proxy_and_loopback_are_excluded_before_anything_is_redirected() {
        let s = rules().install_script();
        let out: Vec<&str> = s.lines().map(str::trim).collect();
        let at = |needle: &str| {
            out.iter()
                .position(|l| *l == needle)
                .unwrap_or_else(|| panic!("{needle:?} missing from\n{s}"))
        };
        let uid = at("meta skuid 1337 return");
        let dns = at("udp dport 53 redirect to :15053");
        let lo = at("ip daddr 127.0.0.0/8 return");
        let cidr = at("ip daddr { 10.0.0.0/8 } return");
        let ports = at("tcp dport { 15010 } return");
        let tcp = at("meta l4proto tcp redirect to :15002");
        assert!(uid < dns && dns < lo && lo < cidr && cidr < ports && ports < tcp);
        let inbound = at("tcp dport { 22, 15002, 15006, 15020, 15053 } return");
        assert!(inbound < at("meta l4proto tcp redirect to :15006"));
        // Idempotent: the table is declared, deleted and defined in one transaction.
        assert!(s.starts_with("table inet quiver_capture\ndelete table inet quiver_capture\n"));
    }

    #[test]
    fn only_declared_inbound_ports_and_no_dns() {
        let mut r = rules();
        r.inbound_ports = "8080, 9090".parse().unwrap();
        r.dns_port = None;
        let s = r.install_script();
        assert!(
            s.contains("tcp dport { 8080, 9090 } redirect to :15006"),
            "{s}"
        );
        assert!(!s.contains("dport 53"), "{s}");
    }

    #[test]
    fn bad_lists_name_the_entry() {
        assert!(parse_ports("80,0").unwrap_err().contains("\"0\""));
        assert!(parse_ports("80,http").unwrap_err().contains("http"));
        assert!(parse_cidrs("10.0.0.0/33").unwrap_err().contains("/33"));
        assert!(
            parse_cidrs("example.com")
                .unwrap_err()
                .contains("example.com")
        );
        assert_eq!(
            parse_cidrs("10.1.2.3, 192.168.0.0/16").unwrap(),
            vec![
                (Ipv4Addr::new(10, 1, 2, 3), 32),
                (Ipv4Addr::new(192, 168, 0, 0), 16)
            ]
        );
        assert_eq!("*".parse::<InboundPorts>().unwrap(), InboundPorts::All);
    }
}
