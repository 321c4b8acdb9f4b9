//! The proxy listener: HTTP/1.1 and h2c on one port, routing to clusters.
//!
//! [`Proxy::handle`] is the outermost step of every request: it assigns the request id, checks
//! header and body limits, matches a route, runs the route's service stack, turns any error
//! into an answer through [`respond`], and records the access log line and metrics.

pub mod body;
pub mod clock;
pub mod h1;
pub mod h2;
pub mod headers;
pub mod hpack;
pub mod passthrough;
pub mod release;
pub mod respond;
pub mod route;
pub mod server;
pub mod stack;
pub mod timers;
pub mod workers;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, HOST};
use http::Response;

use crate::error::{ErrorKind, LifelineError};
use crate::runtime::{RouteEntry, Runtime};
use crate::telemetry::{names, redact::mask};
use body::{ProxyBody, ProxyRequest};
use route::RequestHead;

/// State the proxy shares with the app: the runtime snapshot and the drain flag.
pub struct Proxy {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub draining: Arc<AtomicBool>,
    pub access_log: Arc<AtomicBool>,
}

impl Proxy {
    pub fn new(runtime: Arc<ArcSwap<Runtime>>, draining: Arc<AtomicBool>, access_log: Arc<AtomicBool>) -> Proxy {
        Proxy { runtime, draining, access_log }
    }

    /// Serves one request. Never fails: every error is an answer.
    ///
    /// The request stays in its box from the server connection to the upstream client: each
    /// step moves a pointer, not the 240-byte request (taking it apart and putting it back
    /// together copied its head eight times per request).
    pub async fn handle(&self, mut req: ProxyRequest, peer: IpAddr) -> Response<ProxyBody> {
        let received = clock::now();
        let _in_flight = InFlight::enter();
        let rt = self.runtime.load_full();
        let request_id = headers::request_id(req.headers());
        let version = req.version();
        // Only the access log needs the method and an owned copy of the path.
        let access_log = self.access_log.load(Ordering::Relaxed);
        let logged = access_log.then(|| (req.method().clone(), req.uri().path().to_string()));

        let route = rt.route(&*req);
        // What answers is settled before anything is awaited, so that nothing but the route
        // (a reference) is kept across the await beside the route's future: the check's
        // `Result` with its error was 128 bytes of this frame, written per request.
        let next = match crate::grace::receipt_request(&rt, &*req) {
            Some(id) => Next::Receipt(id.into()),
            None => match check_request(&rt, &*req, route) {
                Ok(route) => Next::Forward(route),
                Err(err) => Next::Answer(Box::new(respond::lifeline_error_response(&err, &request_id))),
            },
        };
        let mut resp = match next {
            Next::Receipt(id) => crate::grace::receipt::serve(&rt.grace, &id).await,
            Next::Answer(resp) => *resp,
            Next::Forward(route) => {
                let exceeded = prepare_upstream(route, &mut req, peer, &request_id);
                let result = route.service.serve(req).await;
                answer(route, result, exceeded, &request_id)
            }
        };
        passthrough::set_header(&mut resp, headers::X_REQUEST_ID.clone(), request_id.clone());
        if self.draining.load(Ordering::Relaxed) && version <= http::Version::HTTP_11 {
            // Tell keep-alive clients to reconnect (to a pod that is not going away).
            // In the map: the server connection reads it there to close after this answer.
            resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let elapsed = clock::now().saturating_duration_since(received);
        if let Some(route) = route {
            route.metrics.duration.record(elapsed.as_secs_f64());
        }
        if let Some((method, path)) = logged {
            let error = passthrough::response_header(&resp, &headers::X_LIFELINE_ERROR)
                .and_then(|v| std::str::from_utf8(v).ok())
                .unwrap_or("");
            tracing::info!(
                target: "lifeline::access",
                request_id = request_id.to_str().unwrap_or(""),
                method = %method,
                path = %mask(&path),
                route = route.map(|r| &*r.config.name).unwrap_or("-"),
                cluster = route.map(|r| &*r.config.cluster).unwrap_or("-"),
                status = resp.status().as_u16(),
                error,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                peer = %peer,
            );
        }
        resp
    }
}

impl h1::Handler for Proxy {
    fn call(
        &self,
        req: ProxyRequest,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = Response<ProxyBody>> + Send {
        self.handle(req, peer.ip())
    }

    fn limits(&self, base: h1::Limits) -> h1::Limits {
        let rt = self.runtime.load();
        let l = &rt.config.limits;
        h1::Limits {
            head_timeout: l.client_head_timeout,
            idle_timeout: l.client_idle_timeout,
            send_timeout: l.client_send_timeout,
            ..base
        }
    }
}

/// Requests in flight, one counter per proxy worker (each on its own cache line), so the
/// path never writes a line another core is writing too. Summed into
/// `lifeline_requests_in_flight` when the metrics are read ([`publish_in_flight`]). Beside it,
/// how many requests the worker has started ([`started_here`]).
static IN_FLIGHT: [Slot; SLOTS] = [const { Slot { in_flight: AtomicI64::new(0), started: AtomicU64::new(0) } }; SLOTS];
const SLOTS: usize = 64;

#[repr(align(128))]
struct Slot {
    in_flight: AtomicI64,
    started: AtomicU64,
}

fn slot_here() -> &'static Slot {
    &IN_FLIGHT[crate::proxy::workers::current().map_or(0, |w| (w + 1) % SLOTS)]
}

/// Requests started on this thread's proxy worker so far (an activity hint: off the workers,
/// all threads share one count, and it may miss some).
pub fn started_here() -> u64 {
    slot_here().started.load(Ordering::Relaxed)
}

/// Counts a request in flight until dropped (also when the client goes away mid-request).
struct InFlight(&'static AtomicI64);

impl InFlight {
    fn enter() -> Self {
        let slot = slot_here();
        slot.in_flight.fetch_add(1, Ordering::Relaxed);
        // Only its worker writes a worker's slot: no read-modify-write instruction needed.
        slot.started.store(slot.started.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        server::request_started();
        InFlight(&slot.in_flight)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sets the `lifeline_requests_in_flight` gauge from the per-worker counters (before a scrape).
pub fn publish_in_flight() {
    let n: i64 = IN_FLIGHT.iter().map(|s| s.in_flight.load(Ordering::Relaxed)).sum();
    metrics::gauge!(names::REQUESTS_IN_FLIGHT).set(n as f64);
}

/// Limits and routing that answer before any upstream is involved.
fn check_request<'a>(
    rt: &Runtime,
    head: &impl RequestHead,
    route: Option<&'a RouteEntry>,
) -> Result<&'a RouteEntry, LifelineError> {
    let max = rt.config.limits.max_header_bytes;
    let uri = head.uri();
    let uri_len = uri.path_and_query().map(|p| p.as_str().len()).unwrap_or(1)
        + uri.authority().map(|a| a.as_str().len()).unwrap_or(0);
    if headers::header_bytes(uri_len, head.headers()) > max {
        return Err(LifelineError::new(ErrorKind::HeadersTooLarge, format!("request headers exceed {max} bytes")));
    }
    if head.version() == http::Version::HTTP_11 {
        // RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host header gets a 400.
        let hosts = headers::field_count(head.headers(), &HOST);
        if hosts != 1 {
            let msg = if hosts == 0 { "HTTP/1.1 requests need a Host header" } else { "more than one Host header" };
            return Err(LifelineError::new(ErrorKind::BadRequest, msg));
        }
    }
    let Some(route) = route else {
        return Err(LifelineError::new(
            ErrorKind::NoRoute,
            format!("no route for {} {}", head.method(), mask(uri.path())),
        ));
    };
    if let Some(len) = headers::field(head.headers(), &CONTENT_LENGTH) {
        match len.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            // 413 before reading a byte when Content-Length already says the body is too large.
            Some(n) if n > route.config.max_body => {
                return Err(LifelineError::new(
                    ErrorKind::BodyTooLarge,
                    format!(
                        "request body of {n} bytes is larger than the route's limit of {} bytes",
                        route.config.max_body
                    ),
                ))
            }
            Some(_) => {}
            None => return Err(LifelineError::new(ErrorKind::BadRequest, "content-length is not a number")),
        }
    }
    Ok(route)
}

/// What a request gets: a provisional receipt looked up, an answer made here (a check
/// failed), or the route's path.
enum Next<'a> {
    Receipt(Box<str>),
    Answer(Box<Response<ProxyBody>>),
    Forward(&'a RouteEntry),
}

/// Readies the request for the route's path: the body's limit, and what this hop adds on the
/// way out. The flag it returns is set when the body went over the limit.
fn prepare_upstream(
    route: &RouteEntry,
    req: &mut ProxyRequest,
    peer: IpAddr,
    request_id: &HeaderValue,
) -> Option<Arc<AtomicBool>> {
    // No body (most GETs): an empty body is a zero-sized box, and nothing can exceed the limit,
    // so neither allocates.
    let body = std::mem::replace(req.body_mut(), body::empty());
    let exceeded = if http_body::Body::is_end_stream(&body) {
        drop(body);
        None
    } else {
        let exceeded = Arc::new(AtomicBool::new(false));
        *req.body_mut() = body::boxed(body::Limited::new(body, route.config.max_body, exceeded.clone()));
        Some(exceeded)
    };
    // The upstream client writes these as it encodes the head (`body::Hop`). This hop's own
    // fields were dropped by the server connection (`h1::Handler`).
    // HTTP/2 requests carry the host in :authority; HTTP/1.1 upstreams need a Host header,
    // written from it when the request has none. (An HTTP/1.1 request has exactly one by now:
    // `check_request`.)
    let authority = if req.version() == http::Version::HTTP_11 { None } else { req.uri().authority().cloned() };
    let hop = req.hop_mut();
    hop.peer = Some(peer);
    hop.request_id = Some(request_id.clone());
    hop.authority = authority;
    exceeded
}

/// Turns the route path's result into the response.
fn answer(
    route: &RouteEntry,
    result: Result<Response<ProxyBody>, crate::error::BoxError>,
    exceeded: Option<Arc<AtomicBool>>,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    match result {
        // The upstream client dropped the answer's hop-by-hop fields while parsing it.
        Ok(resp) => {
            route.metrics.count_status(resp.status());
            resp
        }
        Err(err) => {
            let err = if exceeded.is_some_and(|e| e.load(Ordering::Relaxed)) {
                let msg = format!("request body is larger than {} bytes", route.config.max_body);
                LifelineError::new(ErrorKind::BodyTooLarge, msg).boxed()
            } else {
                err
            };
            count_local(route, &err);
            respond::error_response(&err, request_id)
        }
    }
}

fn count_local(route: &RouteEntry, err: &crate::error::BoxError) {
    let kind = LifelineError::find(err.as_ref()).map_or(ErrorKind::UpstreamReset, |e| e.kind);
    route.metrics.count_error(kind, &route.config);
}
