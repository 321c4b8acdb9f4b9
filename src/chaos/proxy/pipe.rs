//! One direction of one proxied connection, with the toxics of that direction applied to each
//! chunk as it passes.
//!
//! The toxic list is re-read whenever it changes, so toxics act on connections that were already
//! open (the sidecar's pooled keep-alive connections) and stop acting the moment they are
//! removed or expire, mid-connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::toxic::{Stream, Toxic, ToxicKind, Toxics};

/// How a direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The sender closed; the close was passed on.
    Eof,
    /// Close the whole connection (timeout toxic, data limit).
    Close,
    /// Reset the whole connection (reset_peer toxic, a peer's reset, partition).
    Reset,
}

/// Whether each toxic applies to this connection (decided once, by toxicity) and since when.
struct Seen {
    rng: SmallRng,
    by_uid: HashMap<u64, (bool, Instant)>,
}

impl Seen {
    fn active(&mut self, toxics: &[Arc<Toxic>], dir: Stream) -> Vec<(Arc<Toxic>, Instant)> {
        let now = Instant::now();
        toxics
            .iter()
            .filter(|t| t.spec.stream == dir && t.expires > now)
            .filter_map(|t| {
                let rng = &mut self.rng;
                let (applies, since) =
                    *self.by_uid.entry(t.uid).or_insert_with(|| (rng.random::<f64>() < t.spec.toxicity, now));
                applies.then(|| (t.clone(), since))
            })
            .collect()
    }
}

/// Copies `src` to `dst` through the toxics of `dir` until EOF, a toxic ends it, or `cancel`.
pub async fn pipe<R, W>(mut src: R, mut dst: W, dir: Stream, toxics: &Toxics, cancel: &CancellationToken) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut seen = Seen { rng: SmallRng::from_rng(&mut rand::rng()), by_uid: HashMap::new() };
    let mut changes = toxics.changes.subscribe();
    let mut buf = vec![0u8; 16 << 10];
    let mut passed: u64 = 0;
    loop {
        let list = toxics.current();
        let active = seen.active(&list, dir);
        let mut deadline: Option<(Instant, End)> = None;
        let mut dropping = false;
        for (t, since) in &active {
            let candidate = match &t.spec.toxic {
                ToxicKind::ResetPeer { timeout } => Some((*since + timeout.0, End::Reset)),
                ToxicKind::Timeout { timeout } => {
                    dropping = true;
                    (!timeout.0.is_zero()).then(|| (*since + timeout.0, End::Close))
                }
                _ => None,
            };
            if let Some(c) = candidate {
                if deadline.is_none_or(|d| c.0 < d.0) {
                    deadline = Some(c);
                }
            }
        }
        if let Some((t, end)) = deadline {
            if t <= Instant::now() {
                return end;
            }
        }
        // A toxic may also expire while we wait for data: wake up then to re-read the list.
        let next_expiry = active.iter().map(|(t, _)| t.expires).min();
        let wake = deadline.map(|d| d.0).into_iter().chain(next_expiry).min();
        let n = tokio::select! {
            biased;
            () = cancel.cancelled() => return End::Reset,
            _ = changes.changed() => continue,
            r = src.read(&mut buf) => match r {
                Ok(0) => {
                    slow_close(&active).await;
                    let _ = dst.shutdown().await;
                    return End::Eof;
                }
                Ok(n) => n,
                Err(_) => return End::Reset,
            },
            () = sleep_until(wake) => match deadline {
                Some((t, end)) if t <= Instant::now() => return end,
                _ => continue,
            },
        };
        if dropping {
            continue;
        }
        let data = &buf[..n];
        if let Some(end) = forward(data, &mut dst, &active, &mut seen.rng, &mut passed, cancel).await {
            return end;
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn slow_close(active: &[(Arc<Toxic>, Instant)]) {
    let delay = active
        .iter()
        .filter_map(|(t, _)| match &t.spec.toxic {
            ToxicKind::SlowClose { delay } => Some(delay.0),
            _ => None,
        })
        .max();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
}

/// Writes one chunk through latency, bandwidth, slicer and data-limit toxics.
async fn forward<W: AsyncWrite + Unpin>(
    data: &[u8],
    dst: &mut W,
    active: &[(Arc<Toxic>, Instant)],
    rng: &mut SmallRng,
    passed: &mut u64,
    cancel: &CancellationToken,
) -> Option<End> {
    let mut delay = Duration::ZERO;
    let mut rate: Option<u64> = None;
    let mut slicer: Option<(usize, usize, Duration)> = None;
    let mut limit: Option<u64> = None;
    for (t, _) in active {
        match &t.spec.toxic {
            ToxicKind::Latency { latency, jitter } => {
                let j = jitter.0.as_secs_f64();
                let offset = if j > 0.0 { rng.random_range(-j..=j) } else { 0.0 };
                delay += Duration::from_secs_f64((latency.0.as_secs_f64() + offset).max(0.0));
            }
            ToxicKind::Bandwidth { rate: r } => rate = Some(rate.map_or(r.0, |x: u64| x.min(r.0))),
            ToxicKind::Slicer { average_size, size_variation, delay } => {
                slicer = Some((*average_size, *size_variation, delay.0))
            }
            ToxicKind::LimitData { bytes } => limit = Some(limit.map_or(bytes.0, |x: u64| x.min(bytes.0))),
            _ => {}
        }
    }
    let wait = |d: Duration| async move {
        tokio::select! {
            () = tokio::time::sleep(d) => false,
            () = cancel.cancelled() => true,
        }
    };
    if !delay.is_zero() && wait(delay).await {
        return Some(End::Reset);
    }
    let mut rest = data;
    if let Some(max) = limit {
        let room = max.saturating_sub(*passed) as usize;
        if room < rest.len() {
            rest = &rest[..room];
        }
    }
    while !rest.is_empty() {
        let size = match slicer {
            Some((avg, var, _)) => {
                let v = if var > 0 { rng.random_range(0..=2 * var) as isize - var as isize } else { 0 };
                ((avg as isize + v).max(1) as usize).min(rest.len())
            }
            // Bandwidth alone: a tenth of a second's worth at a time, so the stream is smooth.
            None => rate.map_or(rest.len(), |r| (r / 10).max(1) as usize).min(rest.len()),
        };
        let (piece, tail) = rest.split_at(size);
        if dst.write_all(piece).await.is_err() {
            return Some(End::Reset);
        }
        let _ = dst.flush().await;
        *passed += piece.len() as u64;
        let mut pause = slicer.map(|s| s.2).unwrap_or_default();
        if let Some(r) = rate {
            pause += Duration::from_secs_f64(piece.len() as f64 / r as f64);
        }
        if !pause.is_zero() && wait(pause).await {
            return Some(End::Reset);
        }
        rest = tail;
    }
    match limit {
        Some(max) if *passed >= max => Some(End::Close),
        _ => None,
    }
}
