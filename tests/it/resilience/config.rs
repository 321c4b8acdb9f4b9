//! Resilience config errors are located like every other config error.

use lifeline::config::Config;

fn errors_of(yaml: &str) -> String {
    Config::from_yaml("test.yaml", yaml).expect_err("config must be rejected").to_string()
}

#[test]
fn bad_blocks_name_line_and_key_path() {
    let yaml = "clusters:\n  payment:\n    endpoints:\n      - { address: 127.0.0.1:9 }\n    breaker:\n      window: 5 calls\n      min_calls: 10\n\
                routes:\n  - cluster: payment\n    retry: { attempts: 0, backoff: 1s..1ms }\n";
    let e = errors_of(yaml);
    assert!(
        e.contains("test.yaml:6:7 clusters.payment.breaker.window: a window of 5 calls can never reach min_calls (10)"),
        "{e}"
    );
    assert!(e.contains("routes[0].retry.attempts: must be between 1 and 10"), "{e}");
    assert!(e.contains("routes[0].retry.backoff: invalid backoff"), "{e}");

    let e = errors_of(
        "clusters:\n  payment:\n    endpoints:\n      - { address: 127.0.0.1:9 }\n    concurrency: { max_in_flight: 1, max_pendng: 2 }\n\
         routes:\n  - cluster: payment\n",
    );
    assert!(e.contains("clusters.payment.concurrency.max_pendng: unknown field"), "{e}");
}

#[test]
fn effective_config_shows_the_blocks() {
    let yaml = "clusters:\n  payment:\n    endpoints:\n      - { address: 127.0.0.1:9 }\n    breaker: { failure_on: [5xx, 429] }\n\
                routes:\n  - cluster: payment\n    breaker: { enabled: false }\n";
    let c = Config::from_yaml("t.yaml", yaml).unwrap();
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["clusters"]["payment"]["resilience"]["breaker"]["failure_on"], serde_json::json!(["5xx", "429"]));
    assert_eq!(v["routes"][0]["resilience"]["breaker"]["enabled"], false);
    assert_eq!(v["clusters"]["payment"]["resilience"]["breaker"]["window"], "10s");
}
