//! Turning endpoint addresses into socket addresses, and following DNS changes.
//!
//! An address that is already `ip:port` is one endpoint, fixed. A DNS name is re-resolved every
//! `dns_refresh`; every A/AAAA record becomes an endpoint (a Kubernetes headless service gives
//! one per pod). A failed lookup keeps the last known records: a DNS outage must not empty a
//! cluster. The resolver is a trait so tests can feed changing records without a DNS server.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

/// Looks up the socket addresses of `host:port`.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, host: String, port: u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>;
}

/// The system resolver (`getaddrinfo` through `tokio::net::lookup_host`).
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: String, port: u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect()) })
    }
}

/// The default resolver.
pub fn system() -> Arc<dyn Resolve> {
    Arc::new(SystemResolver)
}

/// `host` and `port` of a `host:port` address that is not an IP literal.
pub fn dns_name(address: &str) -> Option<(String, u16)> {
    if address.parse::<SocketAddr>().is_ok() {
        return None;
    }
    let (host, port) = address.rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_string(), port.parse().ok()?))
}

/// Resolves one name with a timeout; sorted and deduplicated so changes are easy to see.
pub async fn lookup(
    resolver: &dyn Resolve,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<BTreeSet<SocketAddr>, String> {
    match tokio::time::timeout(timeout, resolver.resolve(host.to_string(), port)).await {
        Ok(Ok(addrs)) if addrs.is_empty() => Err(format!("{host} has no A/AAAA records")),
        Ok(Ok(addrs)) => Ok(addrs.into_iter().collect()),
        Ok(Err(e)) => Err(format!("cannot resolve {host}: {e}")),
        Err(_) => Err(format!("resolving {host} took longer than {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_literals() {
        assert_eq!(dns_name("127.0.0.1:80"), None);
        assert_eq!(dns_name("[::1]:80"), None);
        assert_eq!(dns_name("payment-dr.svc:8080"), Some(("payment-dr.svc".into(), 8080)));
    }

    #[tokio::test]
    async fn localhost_resolves_for_real() {
        let addrs = lookup(&SystemResolver, "localhost", 8080, Duration::from_secs(5)).await.expect("localhost");
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 8080), "{addrs:?}");
    }
}
