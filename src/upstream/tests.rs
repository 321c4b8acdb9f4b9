//! Unit tests of the decisions: health state machine, failback ramp, plan picks, DNS following.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::config::{FailoverConfig, HealthCheckConfig, HealthProbe, LoadBalancer, OutlierConfig};
use super::endpoint::{ActiveState, Endpoint, EndpointState, Health};
use super::failover::{compute, Mode};
use super::resolve::Resolve;
use super::*;
use crate::config::{Config, EndpointConfig, Percent};

fn hc() -> HealthCheckConfig {
    HealthCheckConfig {
        probe: HealthProbe::Tcp,
        interval: Duration::from_secs(2),
        jitter: Percent(0),
        transition_interval: Duration::from_millis(500),
        timeout: Duration::from_secs(1),
        healthy: 2,
        unhealthy: 3,
        start_healthy: true,
    }
}

fn fo() -> FailoverConfig {
    FailoverConfig { failback_hold: Duration::from_secs(10), slow_start: Duration::from_secs(30), ..Default::default() }
}

fn ep(addr: &str, priority: u32) -> Arc<Endpoint> {
    let cfg = EndpointConfig { address: addr.into(), priority, weight: 1 };
    let state = Arc::new(EndpointState::new(true, Duration::from_secs(10)));
    Arc::new(Endpoint::new(
        "t",
        &cfg,
        addr.parse().unwrap(),
        state,
        &OutlierConfig::default(),
        pool_config(),
        Default::default(),
    ))
}

fn health_of(e: &Endpoint) -> Health {
    e.state.health().clone()
}

#[tokio::test(start_paused = true)]
async fn health_needs_consecutive_results_and_recovery_holds_then_ramps() {
    let e = ep("127.0.0.1:1", 0);
    let now = Instant::now();
    let mut h = health_of(&e);
    let fail = || Err::<String, String>("connect failed".into());
    assert!(health::apply(&mut h, fail(), now, &hc(), &fo()).is_empty());
    assert!(health::apply(&mut h, fail(), now, &hc(), &fo()).is_empty());
    assert_eq!(health::apply(&mut h, fail(), now, &hc(), &fo()).len(), 1, "third failure flips");
    assert_eq!(h.active, ActiveState::Unhealthy);
    assert!(health::apply(&mut h, Ok("ok".into()), now, &hc(), &fo()).is_empty());
    assert_eq!(health::apply(&mut h, Ok("ok".into()), now, &hc(), &fo()).len(), 1, "second pass flips");
    assert_eq!(h.active, ActiveState::Healthy);
    let slow = fo().slow_start;
    assert_eq!(h.fraction(now + Duration::from_secs(9), slow), 0.0, "failback hold");
    let quarter = h.fraction(now + Duration::from_millis(17_500), slow);
    assert!((quarter - 0.25).abs() < 1e-9, "linear ramp: {quarter}");
    assert_eq!(h.fraction(now + Duration::from_secs(41), slow), 1.0);
    // One failure while recovering sends it back at once.
    let later = now + Duration::from_secs(12);
    assert_eq!(health::apply(&mut h, fail(), later, &hc(), &fo()).len(), 1);
    assert_eq!(h.active, ActiveState::Unhealthy);
    assert_eq!(h.fraction(later, slow), 0.0);
}

#[tokio::test(start_paused = true)]
async fn only_gateway_ejections_end_on_passing_checks() {
    let now = Instant::now();
    for (reason, reinstated) in [("consecutive_gateway_failures", true), ("consecutive_5xx", false)] {
        let e = ep("127.0.0.1:1", 0);
        let mut h = health_of(&e);
        outlier::eject(&mut h, reason, serde_json::json!({}), &OutlierConfig::default(), now);
        let _ = health::apply(&mut h, Ok("ok".into()), now, &hc(), &fo());
        let changes = health::apply(&mut h, Ok("ok".into()), now, &hc(), &fo());
        assert_eq!(h.ejection.is_none(), reinstated, "{reason}: {changes:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn ejection_time_escalates_and_is_capped() {
    let cfg = OutlierConfig {
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(25),
        ejection_jitter: Duration::ZERO,
        ..Default::default()
    };
    let e = ep("127.0.0.1:1", 0);
    let mut h = health_of(&e);
    let now = Instant::now();
    let lengths: Vec<u64> = (0..3)
        .map(|_| (outlier::eject(&mut h, "consecutive_5xx", serde_json::json!({}), &cfg, now).0 - now).as_secs())
        .collect();
    assert_eq!(lengths, vec![10, 20, 25]);
}

#[test]
fn a_dead_primary_moves_everything_to_dr_and_a_ramping_one_takes_a_growing_share() {
    let (p, dr) = (ep("127.0.0.1:1", 0), ep("127.0.0.1:2", 1));
    let cfg = FailoverConfig::default();
    let plan = compute(&[(p.clone(), 0.0), (dr.clone(), 1.0)], &cfg);
    assert_eq!(plan.shares, vec![(0, 0), (1, 10_000)]);
    assert_eq!(plan.active_priority, Some(1));
    for _ in 0..20 {
        assert_eq!(plan.pick(LoadBalancer::LeastRequest, &|_| false).unwrap().key, dr.key);
    }
    let shares: Vec<u32> =
        [0.1, 0.3, 0.5, 0.8].iter().map(|f| compute(&[(p.clone(), *f), (dr.clone(), 1.0)], &cfg).shares[0].1).collect();
    assert_eq!(shares, vec![1_400, 4_200, 7_000, 10_000], "1.4 × fraction, capped");

    let none = compute(&[(p.clone(), 0.0), (dr.clone(), 0.0)], &cfg);
    assert_eq!(none.mode, Mode::FailFast);
    assert!(none.pick(LoadBalancer::RoundRobin, &|_| false).is_none());
    let panic = compute(&[(p.clone(), 0.0), (dr.clone(), 0.0)], &FailoverConfig { panic: true, ..cfg });
    assert_eq!(panic.mode, Mode::Panic);
    assert!(panic.pick(LoadBalancer::RoundRobin, &|_| false).is_some());
}

/// Records a test can change while the cluster runs.
#[derive(Default)]
struct FakeDns(Mutex<Vec<SocketAddr>>);

impl Resolve for Arc<FakeDns> {
    fn resolve(&self, _host: String, port: u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        let addrs: Vec<SocketAddr> = self.0.lock().unwrap().iter().map(|a| SocketAddr::new(a.ip(), port)).collect();
        Box::pin(async move { Ok(addrs) })
    }
}

#[tokio::test]
async fn dns_records_are_followed() {
    let yaml = "clusters:\n  pay:\n    dns_refresh: 20ms\n    endpoints:\n      - { address: \"pay.svc.test:8080\" }\n\
                routes:\n  - { cluster: pay }\n";
    let config = Config::from_yaml("t.yaml", yaml).unwrap();
    let dns = Arc::new(FakeDns::default());
    *dns.0.lock().unwrap() = vec!["10.0.0.1:0".parse().unwrap(), "10.0.0.2:0".parse().unwrap()];
    let cluster = Cluster::build(&config.clusters["pay"], None, Arc::new(dns.clone()));
    cluster.start();
    cluster.wait_ready().await;
    let keys = |c: &Cluster| c.endpoints().iter().map(|e| e.key.to_string()).collect::<Vec<_>>();
    assert_eq!(keys(&cluster), vec!["10.0.0.1:8080", "10.0.0.2:8080"]);
    assert!(cluster.pick().is_some());

    *dns.0.lock().unwrap() = vec!["10.0.0.2:0".parse().unwrap(), "10.0.0.3:0".parse().unwrap()];
    let deadline = Instant::now() + Duration::from_secs(5);
    while keys(&cluster) != vec!["10.0.0.2:8080", "10.0.0.3:8080"] {
        assert!(Instant::now() < deadline, "records not followed: {:?}", keys(&cluster));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..20 {
        assert_ne!(&*cluster.pick().unwrap().key, "10.0.0.1:8080", "a removed record takes no traffic");
    }
    let changed = cluster.events().since(0).into_iter().filter(|e| e.kind == "dns_changed").count();
    assert!(changed >= 2, "initial records and the change are logged");

    // A failed lookup keeps the last records.
    dns.0.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(keys(&cluster).len(), 2);
    cluster.stop();
}

#[tokio::test(start_paused = true)]
async fn ejection_ends_by_time_and_the_multiplier_decays_only_with_successes() {
    use crate::classify::Outcome;
    use crate::error::ErrorKind;
    let yaml = concat!(
        "clusters:\n  pay:\n    outlier: { base_ejection: 10s, ejection_jitter: 0s }\n    endpoints:\n",
        "      - { address: 127.0.0.1:1 }\n      - { address: 127.0.0.1:2 }\nroutes:\n  - { cluster: pay }\n"
    );
    let config = Config::from_yaml("t.yaml", yaml).unwrap();
    let cluster = Cluster::build(&config.clusters["pay"], None, resolve::system());
    let (a, shared) = (cluster.endpoints()[0].clone(), cluster.shared().clone());
    let t0 = Instant::now();
    for _ in 0..3 {
        a.record(Outcome::NotSent(ErrorKind::ConnectFailed));
    }
    outlier::evaluate(&shared, &cluster.endpoints(), t0);
    assert_eq!(a.state.health().ejection.as_ref().map(|e| e.reason), Some("consecutive_gateway_failures"));
    outlier::evaluate(&shared, &cluster.endpoints(), t0 + Duration::from_secs(9));
    assert!(a.state.health().ejection.is_some(), "still ejected before base_ejection");
    outlier::evaluate(&shared, &cluster.endpoints(), t0 + Duration::from_secs(10));
    assert!(a.state.health().ejection.is_none(), "back after base_ejection × 1");
    assert_eq!(a.state.health().ejection_multiplier, 1);
    // A period in service without a single success is no evidence of health: no decay.
    outlier::evaluate(&shared, &cluster.endpoints(), t0 + Duration::from_secs(21));
    assert_eq!(a.state.health().ejection_multiplier, 1);
    a.record(Outcome::Success);
    outlier::evaluate(&shared, &cluster.endpoints(), t0 + Duration::from_secs(32));
    assert_eq!(a.state.health().ejection_multiplier, 0, "decayed after a period with successes");
    let kinds: Vec<&str> = cluster.events().since(0).iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec!["ejected", "reinstated"]);
}

#[tokio::test(start_paused = true)]
async fn a_calm_cluster_is_looked_at_once_a_second_and_a_moving_one_sooner() {
    use crate::classify::{FailureKind, Outcome};
    use crate::error::ErrorKind;
    let yaml = concat!(
        "clusters:\n  pay:\n    outlier: { base_ejection: 10s, ejection_jitter: 0s, failure_percentage: 50% }\n",
        "    failover: { slow_start: 30s }\n    endpoints:\n",
        "      - { address: 127.0.0.1:1 }\n      - { address: 127.0.0.1:2 }\nroutes:\n  - { cluster: pay }\n"
    );
    let config = Config::from_yaml("t.yaml", yaml).unwrap();
    let cluster = Cluster::build(&config.clusters["pay"], None, resolve::system());
    let (shared, endpoints) = (cluster.shared().clone(), cluster.endpoints());
    let (a, b) = (endpoints[0].clone(), endpoints[1].clone());
    let t0 = Instant::now();
    let (sweep, tick) = (t0 + Duration::from_secs(1), t0 + Duration::from_millis(100));
    let look = |now| controller::next_look(&shared, &endpoints, now, sweep);
    b.record(Outcome::Success);
    assert_eq!(look(t0), sweep, "nothing moves: the next pool sweep");
    // Ejected for 10 s: it ends after the sweep, which comes first; the end itself is awaited.
    for _ in 0..3 {
        a.record(Outcome::NotSent(ErrorKind::ConnectFailed));
    }
    outlier::evaluate(&shared, &endpoints, t0);
    assert!(a.state.health().ejection.is_some());
    a.state.window.reset();
    assert_eq!(look(t0), sweep);
    let ends = t0 + Duration::from_secs(10);
    assert_eq!(controller::next_look(&shared, &endpoints, t0, ends + Duration::from_secs(1)), ends);
    // Back in service: the slow-start ramp moves on its own, looked at every tick.
    outlier::evaluate(&shared, &endpoints, ends);
    assert!(a.state.health().ejection.is_none() && a.state.health().ramp_from == Some(ends));
    let during = ends + Duration::from_secs(1);
    let next = controller::next_look(&shared, &endpoints, during, during + Duration::from_secs(1));
    assert_eq!(next, during + controller::TICK);
    a.state.health().ramp_from = None;
    a.state.health().decay_due = None;
    assert_eq!(look(t0), sweep);
    // A failure in a failure_percentage window: the path does not ring, the controller looks.
    b.record(Outcome::Failure(FailureKind::Status(500)));
    assert_eq!(look(t0), tick);
}

fn pool_config() -> super::pool::PoolConfig {
    super::pool::PoolConfig {
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(90),
        max_idle: 8,
    }
}

#[tokio::test]
async fn an_attempt_dropped_unfinished_leaves_nothing_in_flight() {
    // A backend that takes the connection and never answers; the caller gives up.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let yaml =
        format!("clusters:\n  pay:\n    endpoints:\n      - {{ address: {addr} }}\nroutes:\n  - {{ cluster: pay }}\n");
    let config = Config::from_yaml("t.yaml", &yaml).unwrap();
    let cluster = Cluster::build(&config.clusters["pay"], None, resolve::system());
    let e = cluster.endpoints()[0].clone();
    for _ in 0..3 {
        let mut req = crate::proxy::body::ProxyRequest::new(
            http::Request::get("/slow").body(crate::proxy::body::empty()).unwrap(),
        );
        let send = cluster.send(&e, &mut req);
        assert!(tokio::time::timeout(Duration::from_millis(50), send).await.is_err(), "never answered");
    }
    assert_eq!(e.state.stats.in_flight(), 0, "each dropped attempt left in-flight");
    held.abort();
}
