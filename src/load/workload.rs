//! What each arrival sends: a plain request, or one step of the settlement-peak mix.
//!
//! The settlement mix draws, per arrival and in configured proportions, one of
//! - `POST /auth/v1/verify` `{"card_no","pin"}` (the cardholder logs in),
//! - `POST /payment/v1/settlements` with a fresh `Idempotency-Key` and
//!   `{"card_no","hospital_id","visit_id","amount_fen","items":[…]}` (the hospital settles),
//! - `GET /card/v1/cards/{card_no}` (the front desk checks the card),
//!
//! with the card drawn from a skewed [`CardPool`]. Amounts are integer fen (invariant 6). Bodies
//! are written straight into one buffer per request: nothing is built that is not sent.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use rand::Rng;

use super::cards::CardPool;

/// What the arrivals of a phase send. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Workload {
    Plain(Arc<Plain>),
    Settlement(Arc<SettlementMix>),
}

/// The same request every time.
#[derive(Debug)]
pub struct Plain {
    pub method: Method,
    pub path: PathAndQuery,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The settlement-peak mix.
#[derive(Debug)]
pub struct SettlementMix {
    /// Relative weights of verify, settle and card query.
    pub weights: [u32; 3],
    pub cards: CardPool,
    /// The PIN sent with every verify (the simulators accept a fixed test PIN).
    pub pin: String,
    /// Hospitals are `H0001`… `H{hospitals}`.
    pub hospitals: u32,
    /// Settlement amounts are uniform in `[100, max_amount_fen]` fen.
    pub max_amount_fen: u64,
}

/// Which kind of request an arrival sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Plain,
    Verify,
    Settle,
    CardQuery,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Plain => "request",
            Kind::Verify => "verify",
            Kind::Settle => "settle",
            Kind::CardQuery => "card_query",
        }
    }
}

/// Where requests go, as the workload needs it to build a URI.
#[derive(Debug, Clone)]
pub struct Origin {
    pub authority: Authority,
    pub host: HeaderValue,
    /// HTTP/2 wants an absolute URI (for `:scheme` and `:authority`); HTTP/1.1 sends origin form.
    pub http2: bool,
}

/// One built request and what the report needs to know about it.
pub struct Built {
    pub req: Request<Full<Bytes>>,
    pub kind: Kind,
    pub card: u32,
    pub key: Option<u128>,
    pub amount_fen: u64,
}

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Workload {
    /// A GET of `url`'s path (the URL's host is the target's business).
    pub fn get(url: &str) -> Result<Workload, String> {
        Workload::plain(Method::GET, url, HeaderMap::new(), Bytes::new())
    }

    /// Any method, headers and body to `url`'s path.
    pub fn plain(method: Method, url: &str, headers: HeaderMap, body: Bytes) -> Result<Workload, String> {
        let uri: Uri = url.parse().map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let path = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        Ok(Workload::Plain(Arc::new(Plain { method, path, headers, body })))
    }

    /// The settlement mix with `weights` for verify, settle and card query.
    pub fn settlement(weights: [u32; 3], cards: CardPool) -> Result<Workload, String> {
        Ok(Workload::Settlement(Arc::new(SettlementMix::new(weights, cards)?)))
    }

    /// The card pool, if this workload has one.
    pub fn cards(&self) -> Option<&CardPool> {
        match self {
            Workload::Settlement(m) => Some(&m.cards),
            Workload::Plain(_) => None,
        }
    }

    /// Builds the request for one arrival. `seq` makes visit ids unique within a run.
    pub fn build(&self, origin: &Origin, rng: &mut impl Rng, seq: u64) -> Result<Built, http::Error> {
        match self {
            Workload::Plain(p) => {
                let mut req = Request::new(Full::new(p.body.clone()));
                *req.method_mut() = p.method.clone();
                *req.uri_mut() = uri(origin, p.path.clone())?;
                *req.headers_mut() = p.headers.clone();
                finish(req, origin, Kind::Plain, 0, None, 0)
            }
            Workload::Settlement(m) => m.build(origin, rng, seq),
        }
    }
}

impl SettlementMix {
    /// The mix with default PIN (`123456`), 50 hospitals and amounts up to 300 yuan.
    pub fn new(weights: [u32; 3], cards: CardPool) -> Result<SettlementMix, String> {
        if weights.iter().all(|&w| w == 0) {
            return Err("the settlement mix needs at least one non-zero weight".into());
        }
        Ok(SettlementMix { weights, cards, pin: "123456".into(), hospitals: 50, max_amount_fen: 30_000 })
    }

    fn build(&self, origin: &Origin, rng: &mut impl Rng, seq: u64) -> Result<Built, http::Error> {
        let card = self.cards.draw(rng);
        let card_no = self.cards.card(card);
        let total: u32 = self.weights.iter().sum();
        let mut pick = rng.random_range(0..total.max(1));
        let kind = if pick < self.weights[0] {
            Kind::Verify
        } else {
            pick -= self.weights[0];
            if pick < self.weights[1] {
                Kind::Settle
            } else {
                Kind::CardQuery
            }
        };
        match kind {
            Kind::Verify => {
                let body = format!(r#"{{"card_no":"{card_no}","pin":"{}"}}"#, self.pin);
                let req = post(origin, "/auth/v1/verify", body)?;
                finish(req, origin, kind, card, None, 0)
            }
            Kind::Settle => {
                let amount = rng.random_range(100..=self.max_amount_fen.max(100));
                // Fresh for every run, whatever the seed: a replayed key would be an idempotent
                // replay at the backend, not a new settlement.
                let key: u128 = rand::random();
                let body = self.settlement_body(card_no, rng, seq, amount);
                let mut req = post(origin, "/payment/v1/settlements", body)?;
                if let Ok(v) = HeaderValue::from_str(&key_string(key)) {
                    req.headers_mut().insert(IDEMPOTENCY_KEY.clone(), v);
                }
                finish(req, origin, kind, card, Some(key), amount)
            }
            _ => {
                let path = PathAndQuery::try_from(format!("/card/v1/cards/{card_no}"))?;
                let req = Request::get(uri(origin, path)?).body(Full::new(Bytes::new()))?;
                finish(req, origin, kind, card, None, 0)
            }
        }
    }

    /// A settlement body whose 1–3 items add up to `amount` fen exactly.
    fn settlement_body(&self, card_no: &str, rng: &mut impl Rng, seq: u64, amount: u64) -> String {
        let hospital = rng.random_range(1..=self.hospitals.max(1));
        let n = rng.random_range(1..=3u64).min(amount);
        let mut b = String::with_capacity(256);
        let _ = write!(
            b,
            r#"{{"card_no":"{card_no}","hospital_id":"H{hospital:04}","visit_id":"V{seq:010}","amount_fen":{amount},"items":["#
        );
        let mut left = amount;
        for i in 0..n {
            let part = if i + 1 == n { left } else { rng.random_range(1..=left - (n - 1 - i)) };
            left -= part;
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(b, r#"{sep}{{"code":"{}","qty":1,"amount_fen":{part}}}"#, ITEM_CODES[i as usize % 3]);
        }
        b.push_str("]}");
        b
    }
}

const ITEM_CODES: [&str; 3] = ["XA01BAA", "XB05CAB", "ZC11DAE"];

fn uri(origin: &Origin, path: PathAndQuery) -> Result<Uri, http::Error> {
    if origin.http2 {
        Uri::builder().scheme(Scheme::HTTP).authority(origin.authority.clone()).path_and_query(path).build()
    } else {
        Ok(Uri::from(path))
    }
}

fn post(origin: &Origin, path: &'static str, body: String) -> Result<Request<Full<Bytes>>, http::Error> {
    let mut req = Request::new(Full::new(Bytes::from(body)));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri(origin, PathAndQuery::from_static(path))?;
    req.headers_mut().insert(CONTENT_TYPE, JSON);
    Ok(req)
}

fn finish(
    mut req: Request<Full<Bytes>>,
    origin: &Origin,
    kind: Kind,
    card: u32,
    key: Option<u128>,
    amount_fen: u64,
) -> Result<Built, http::Error> {
    if !origin.http2 {
        req.headers_mut().insert(HOST, origin.host.clone());
    }
    Ok(Built { req, kind, card, key, amount_fen })
}

/// The text form of an idempotency key (UUID v4 layout).
pub fn key_string(key: u128) -> String {
    let bits = (key & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{bits:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn settlement_bodies_are_json_whose_items_add_up() {
        let w = Workload::settlement([0, 1, 0], CardPool::new(10, 1.0, 1).unwrap()).unwrap();
        let origin = Origin { authority: "127.0.0.1:1".parse().unwrap(), host: JSON, http2: false };
        let mut rng = SmallRng::seed_from_u64(3);
        for seq in 0..200 {
            let b = w.build(&origin, &mut rng, seq).unwrap();
            assert_eq!(b.kind, Kind::Settle);
            assert_eq!(b.req.uri().path(), "/payment/v1/settlements");
            let key = b.req.headers().get("idempotency-key").unwrap().to_str().unwrap().to_string();
            assert_eq!(key, key_string(b.key.unwrap()));
            let body = http_body_util::BodyExt::collect(b.req.into_body());
            let bytes = futures_util::FutureExt::now_or_never(body).unwrap().unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let items: u64 = v["items"].as_array().unwrap().iter().map(|i| i["amount_fen"].as_u64().unwrap()).sum();
            assert_eq!(items, v["amount_fen"].as_u64().unwrap());
            assert_eq!(items, b.amount_fen);
            assert_eq!(v["card_no"].as_str().unwrap().len(), 18);
        }
    }

    #[test]
    fn keys_look_like_uuids() {
        let k = key_string(u128::MAX);
        assert_eq!(k.len(), 36);
        assert_eq!(&k[14..15], "4");
        assert!(Workload::settlement([0, 0, 0], CardPool::new(1, 0.0, 1).unwrap()).is_err());
    }
}
