//! Services' virtual IPs (like Consul's virtual IPs, or a Kubernetes ClusterIP): the range
//! they come from (`--service-vip-range`), which address a Service tries first, and the
//! assignment itself over the store's claims ([`crate::store::Addresses`]).
//!
//! A Service's first candidate is a hash of `namespace/name` in the range, then the next
//! addresses in turn, so the same Service re-created usually gets its old address back and
//! two replicas assigning at once rarely try the same one; the store's key on the address
//! settles it when they do. The range's network and broadcast addresses are never handed out.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use quiver_api::resource::Kind;
use quiver_api::v1;

use crate::store::{Store, StoreError};

/// How many addresses one assignment tries before it reports the range as full.
const PROBES: u32 = 4096;

/// An IPv4 range in CIDR form, /8 to /30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    network: u32,
    prefix: u8,
}

impl Default for AddressRange {
    /// 240.240.0.0/16: in 240.0.0.0/4 (reserved, routed by Linux, never a real peer), as
    /// Consul's virtual IPs are.
    fn default() -> Self {
        Self {
            network: u32::from(Ipv4Addr::new(240, 240, 0, 0)),
            prefix: 16,
        }
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

impl FromStr for AddressRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an IPv4 CIDR range such as 240.240.0.0/16"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("/{prefix} is not a prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!(
                "/{prefix}: the range must be /8 to /30 (room for Services, not the whole space)"
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        let network = u32::from(ip);
        if network & !mask != 0 {
            return Err(format!(
                "{ip} has host bits set for /{prefix}; the range starts at {}",
                Ipv4Addr::from(network & mask)
            ));
        }
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
            return Err(format!(
                "{ip}/{prefix} is loopback, multicast or unspecified space"
            ));
        }
        Ok(Self { network, prefix })
    }
}

impl AddressRange {
    /// Addresses that can be handed out (all but the network and broadcast ones).
    fn usable(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }

    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & (u32::MAX << (32 - self.prefix)) == self.network
    }

    /// The addresses Service `namespace/name` tries, in order: its hash's slot, then the
    /// following ones (wrapping), at most [`PROBES`] of them.
    pub fn candidates(&self, namespace: &str, name: &str) -> impl Iterator<Item = Ipv4Addr> {
        let usable = self.usable();
        let start = fnv1a(namespace, name) % usable;
        let network = self.network;
        (0..usable.min(PROBES)).map(move |i| Ipv4Addr::from(network + 1 + (start + i) % usable))
    }
}

/// FNV-1a over `namespace/name`: stable across versions and platforms (std's hasher is not).
fn fnv1a(namespace: &str, name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in namespace.bytes().chain([b'/']).chain(name.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Why a Service got no address.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    #[error("no free virtual IP in --service-vip-range {0} after {PROBES} tries; widen the range")]
    Full(AddressRange),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The address Service `namespace/name` holds, claiming one when it holds none. An address
/// it holds from an earlier range (the flag changed) is kept: addresses apps already
/// resolved must not move under them.
pub async fn assign(
    store: &dyn Store,
    range: AddressRange,
    namespace: &str,
    name: &str,
) -> Result<Ipv4Addr, AssignError> {
    if let Some(held) = store.service_address(namespace, name).await?
        && let Ok(ip) = held.parse()
    {
        return Ok(ip);
    }
    for ip in range.candidates(namespace, name) {
        if store
            .claim_service_address(namespace, name, &ip.to_string())
            .await?
        {
            return Ok(ip);
        }
        // A race with this Service's own claim on another replica: take what it got.
        if let Some(held) = store.service_address(namespace, name).await?
            && let Ok(ip) = held.parse()
        {
            return Ok(ip);
        }
    }
    Err(AssignError::Full(range))
}

/// Give every stored Service without a virtual IP one, as an Apply would have: Services
/// stored before addresses existed (migration 0012) would otherwise get one only on their
/// next Apply, and mesh DNS could not answer for them. Each is rewritten with its address in
/// `status`, only if it is still at the version read; a Service that changed meanwhile was
/// changed by an Apply (which assigned an address) or deleted (its claim is released here).
/// Replicas starting together claim the same address for a Service (the store's claim
/// decides) and only one rewrite succeeds.
/// Returns how many it gave one.
pub async fn backfill(store: &dyn Store, range: AddressRange) -> Result<usize, AssignError> {
    let (services, _) = store.list(Kind::Service, None).await?;
    let mut assigned = 0;
    for obj in services {
        // A body that does not decode is logged by `decode` and left as it is.
        let Ok(mut svc) = crate::stored::decode::<v1::Service>(&obj) else {
            continue;
        };
        if svc
            .status
            .as_ref()
            .is_some_and(|s| !s.virtual_ip.is_empty())
        {
            continue;
        }
        let ip = assign(store, range, &obj.namespace, &obj.name).await?;
        svc.status.get_or_insert_default().virtual_ip = ip.to_string();
        let Ok(body) = crate::stored::encode(svc) else {
            tracing::error!(service = %format!("{}/{}", obj.namespace, obj.name), "stored Service does not render; left without a virtual IP");
            continue;
        };
        let at = Some(obj.resource_version);
        match store
            .put(Kind::Service, &obj.namespace, &obj.name, body, at)
            .await
        {
            Ok(_) => assigned += 1,
            Err(StoreError::Conflict { .. }) => {
                if store
                    .get(Kind::Service, &obj.namespace, &obj.name)
                    .await?
                    .is_none()
                {
                    store
                        .release_service_address(&obj.namespace, &obj.name)
                        .await?;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(assigned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_by_reason() {
        let r: AddressRange = "10.96.0.0/12".parse().unwrap();
        assert_eq!(r.to_string(), "10.96.0.0/12");
        assert!(r.contains(Ipv4Addr::new(10, 111, 255, 1)));
        assert!(!r.contains(Ipv4Addr::new(10, 112, 0, 1)));
        for (bad, why) in [
            ("240.240.0.0", "CIDR"),
            ("240.240.0.1/16", "host bits"),
            ("240.240.0.0/31", "/8 to /30"),
            ("240.0.0.0/4", "/8 to /30"),
            ("127.0.0.0/8", "loopback"),
            ("::1/128", "IPv4"),
            ("10.0.0.0/x", "prefix"),
        ] {
            let e = bad.parse::<AddressRange>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn candidates_stay_inside_and_skip_network_and_broadcast() {
        let r: AddressRange = "192.168.7.0/30".parse().unwrap();
        let all: Vec<_> = r.candidates("demo", "catalog").collect();
        assert_eq!(all.len(), 2);
        for ip in &all {
            assert!(ip.octets()[3] == 1 || ip.octets()[3] == 2, "{ip}");
        }
        let d = AddressRange::default();
        let a: Vec<_> = d.candidates("demo", "catalog").take(3).collect();
        // Stable: the same Service starts at the same slot on every replica and version.
        assert_eq!(
            a,
            d.candidates("demo", "catalog").take(3).collect::<Vec<_>>()
        );
        assert_ne!(a[0], d.candidates("demo", "ratings").next().unwrap());
        assert!(a.iter().all(|ip| d.contains(*ip)));
    }
}
