//! The write-ahead log of accepted settlements: the only thing an append waits for.
//!
//! An append is durable once its record is in a segment file of `<journal>-log/` and that file
//! is `fdatasync`ed. Concurrent appends share one write and one `fdatasync` (group commit). The
//! SQLite database is brought up to date behind the log by the applier (`writer.rs`), in big
//! transactions that do not wait on disk, so the B-tree pages every item dirties (random
//! idempotency keys, card lanes) are no longer written, and checkpointed, once per commit group
//! on the answer's path: that was what kept the p99 of a commit at 20 000 appends/s at 17–37 ms.
//!
//! Segments are named `<id>.seg` with ids that only grow. A record is
//! `len: u32 LE | crc: u32 LE | body`, with the CRC-32 taken over the segment id and the body,
//! so a record left in a recycled file by an earlier segment, or torn by a crash mid-write,
//! ends the segment when it is read back. Only the tail of the last segment can be torn, and
//! nothing in a torn write was acknowledged (acknowledgements follow the `fdatasync`).
//!
//! Every segment file is written full of zeros before its first record, and reused rather
//! than deleted: an `fdatasync` that only overwrites blocks a file already has flushes data.
//! One that grows the file must also commit the ext4 journal, and with `data=ordered` that
//! commit first waits for every newly allocated block of every file, the database's
//! included. That entanglement, not the disk, is what stalled commits for 25–40 ms.
//! The applier keeps the next segment ready (`prepare`): a segment whose records are all in the
//! database, committed with `synchronous=FULL`, is renamed to the next id; otherwise a new one is
//! zero-filled, off the append path. If none is ready when a segment fills, the committer keeps
//! appending to the one it has (slower, never wrong).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::grace::store::{Item, State};

/// A segment is rotated once it holds this much (and is written full of zeros to this size).
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// The first byte of every record body: the encoding's version.
const VERSION: u8 = 1;
const HEADER: usize = 8;

/// The log directory of a journal file: `grace.db` → `grace.db-log/`.
pub fn dir_for(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push("-log");
    db.with_file_name(name)
}

fn crc(seg: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seg.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// Appends one framed record to `out`.
fn frame(out: &mut Vec<u8>, seg: u64, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc(seg, body).to_le_bytes());
    out.extend_from_slice(body);
}

/// The unit of a direct write: offsets and lengths are multiples of it, and so is the address
/// of the buffer written from.
const BLOCK: usize = 4096;

/// A buffer whose usable part starts on a [`BLOCK`] boundary (direct I/O needs it), made
/// without `unsafe`: a larger `Vec` and the first aligned offset in it.
struct Aligned {
    raw: Vec<u8>,
    at: usize,
    cap: usize,
}

impl Aligned {
    fn new(cap: usize) -> Aligned {
        let cap = cap.div_ceil(BLOCK) * BLOCK;
        let raw = vec![0u8; cap + BLOCK];
        let at = (BLOCK - raw.as_ptr() as usize % BLOCK) % BLOCK;
        Aligned { raw, at, cap }
    }

    fn region(&mut self) -> &mut [u8] {
        &mut self.raw[self.at..self.at + self.cap]
    }
}

/// How appends reach the disk.
enum Mode {
    /// `O_DIRECT | O_DSYNC`: each write goes past the page cache and is durable when it
    /// returns (a FUA write, or a write and a cache flush). It never queues behind the page
    /// cache's writeback of other files, which is what an `fdatasync` of a buffered write can do.
    /// Whole blocks only: the segment's last partial block is kept in memory and rewritten.
    Direct(Aligned),
    /// Buffered writes and `fdatasync`: filesystems without direct I/O (tmpfs).
    Buffered,
}

/// The open segment the committer appends to.
pub struct Writer {
    dir: PathBuf,
    file: File,
    seg: u64,
    offset: u64,
    buf: Vec<u8>,
    mode: Mode,
}

fn open_segment(path: &Path, direct: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = OpenOptions::new();
    opts.write(true);
    if direct {
        opts.custom_flags(libc::O_DIRECT | libc::O_DSYNC);
    }
    opts.open(path)
}

impl Writer {
    /// Starts segment `seg` (every id below it may exist in old files): the file prepared for
    /// it, or a new one. Direct I/O when the filesystem has it, buffered writes otherwise.
    pub fn open(dir: &Path, seg: u64) -> std::io::Result<Writer> {
        std::fs::create_dir_all(dir)?;
        prepare(dir, seg, None)?;
        let path = seg_path(dir, seg);
        let (file, mode) = match open_segment(&path, true) {
            Ok(file) => (file, Mode::Direct(Aligned::new(1 << 20))),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open_segment(&path, false)?, Mode::Buffered),
            Err(e) => return Err(e),
        };
        Ok(Writer { dir: dir.to_path_buf(), file, seg, offset: 0, buf: Vec::with_capacity(1 << 20), mode })
    }

    /// True when appends use direct I/O (tests, diagnostics).
    pub fn is_direct(&self) -> bool {
        matches!(self.mode, Mode::Direct(_))
    }

    /// Writes the records durably: when this returns `Ok`, they survive a crash.
    /// Returns the segment and the offset after the records. After an error the segment's
    /// state is unknown (a failed `fdatasync` may have dropped the pages): stop appending.
    pub fn append(&mut self, bodies: &[&[u8]]) -> std::io::Result<(u64, u64)> {
        let len: u64 = bodies.iter().map(|b| (HEADER + b.len()) as u64).sum();
        if self.offset > 0 && self.offset + len > SEGMENT_BYTES {
            // Only into a segment the applier prepared: creating one here would put a
            // directory and size change on this commit.
            match open_segment(&seg_path(&self.dir, self.seg + 1), self.is_direct()) {
                Ok(file) => {
                    self.file = file;
                    self.seg += 1;
                    self.offset = 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.buf.clear();
        for body in bodies {
            frame(&mut self.buf, self.seg, body);
        }
        match &mut self.mode {
            Mode::Buffered => {
                self.file.write_all_at(&self.buf, self.offset)?;
                self.file.sync_data()?;
            }
            Mode::Direct(block) => {
                if let Err(e) = write_direct(&self.file, block, &self.buf, self.offset) {
                    if e.raw_os_error() != Some(libc::EINVAL) {
                        return Err(e);
                    }
                    // The filesystem opened the file for direct I/O but refuses the write
                    // (nothing was written): go on buffered.
                    self.file = open_segment(&seg_path(&self.dir, self.seg), false)?;
                    self.mode = Mode::Buffered;
                    self.file.write_all_at(&self.buf, self.offset)?;
                    self.file.sync_data()?;
                }
            }
        }
        self.offset += len;
        Ok((self.seg, self.offset))
    }
}

/// Writes `records` at `offset` with whole aligned blocks: the bytes of the partial block
/// before `offset` (kept at the start of `block` from the previous write), the records, and
/// zeros to the end of the last block. Keeps the new partial block for the next write.
fn write_direct(file: &File, block: &mut Aligned, records: &[u8], offset: u64) -> std::io::Result<()> {
    let tail = (offset % BLOCK as u64) as usize;
    let end = tail + records.len();
    let total = end.div_ceil(BLOCK) * BLOCK;
    if total > block.cap {
        let mut bigger = Aligned::new(total.max(block.cap * 2));
        bigger.region()[..tail].copy_from_slice(&block.region()[..tail]);
        *block = bigger;
    }
    let region = block.region();
    region[tail..end].copy_from_slice(records);
    region[end..total].fill(0);
    file.write_all_at(&region[..total], offset - tail as u64)?;
    let keep = end % BLOCK;
    region.copy_within(end - keep..end, 0);
    Ok(())
}

fn seg_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("{seg:020}.seg"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes segment file `seg` exist, full size, under its name: `reuse` renamed (an old segment
/// whose records are all in the database), or a new file written full of zeros. Never
/// replaces a file (the committer may already be writing to `seg`).
pub fn prepare(dir: &Path, seg: u64, reuse: Option<&Path>) -> std::io::Result<()> {
    let target = seg_path(dir, seg);
    if target.exists() {
        if let Some(old) = reuse {
            std::fs::remove_file(old)?;
        }
        return Ok(());
    }
    let source = match reuse {
        Some(old) => old.to_path_buf(),
        None => {
            let tmp = dir.join("prealloc.tmp");
            let mut f = File::create(&tmp)?;
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..SEGMENT_BYTES / zeros.len() as u64 {
                f.write_all(&zeros)?;
            }
            f.sync_all()?;
            tmp
        }
    };
    // A hard link fails if the name exists, where a rename would replace it.
    match std::fs::hard_link(&source, &target) {
        Ok(()) => std::fs::remove_file(&source)?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::remove_file(&source)?,
        Err(e) => return Err(e),
    }
    sync_dir(dir)
}

/// The id in a segment file name (`00…07.seg`).
fn id_of(path: &Path) -> Option<u64> {
    path.file_name()?.to_str()?.strip_suffix(".seg")?.parse().ok()
}

/// Segment files, by id.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| id_of(&p).map(|id| (id, p)))
        .collect();
    out.sort();
    Ok(out)
}

/// The smallest id above every segment file in `dir` (ids only grow, so a new segment never
/// takes an id whose old records a reused file may still hold).
pub fn next_id(dir: &Path) -> std::io::Result<u64> {
    if !dir.exists() {
        return Ok(1);
    }
    let max = std::fs::read_dir(dir)?.filter_map(|e| e.ok().and_then(|e| id_of(&e.path()))).max().unwrap_or(0);
    Ok(max + 1)
}

/// The record bodies of one segment, up to the first that is torn, stale or absent.
fn records(data: &[u8], seg: u64) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while data.len() - at >= HEADER {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let sum = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        let Some(body) = data.get(at + HEADER..at + HEADER + len) else { break };
        if len == 0 || crc(seg, body) != sum {
            break;
        }
        out.push(body);
        at += HEADER + len;
    }
    out
}

/// Every item in the live segments, in log order. A record that fails to decode (a bug, not a
/// crash: its CRC matched) is an error rather than a silent loss.
pub fn read_items(dir: &Path) -> Result<Vec<(u64, Item)>, String> {
    let mut out = Vec::new();
    for (seg, path) in segments(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))? {
        let mut data = Vec::new();
        match File::open(&path).and_then(|mut f| f.read_to_end(&mut data)) {
            Ok(_) => {}
            // Recycled by a running sidecar since it was listed: its items are in the database.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
        for body in records(&data, seg) {
            let item = decode(body).ok_or_else(|| format!("{}: a record that does not decode", path.display()))?;
            out.push((seg, item));
        }
    }
    Ok(out)
}

/// Retires every segment below `below` (call only once their records are durable in the
/// database): the first becomes segment `reuse_as` if that one is not there yet, the others
/// are deleted.
pub fn recycle(dir: &Path, below: u64, reuse_as: Option<u64>) -> std::io::Result<()> {
    let mut reuse_as = reuse_as;
    let mut changed = false;
    for (id, path) in segments(dir)? {
        if id >= below {
            break;
        }
        let full = std::fs::metadata(&path).map(|m| m.len() >= SEGMENT_BYTES).unwrap_or(false);
        match reuse_as {
            Some(next) if full => {
                reuse_as = None;
                prepare(dir, next, Some(&path))?;
            }
            _ => std::fs::remove_file(&path)?,
        }
        changed = true;
    }
    if changed {
        sync_dir(dir)?;
    }
    Ok(())
}

// ---- item encoding -------------------------------------------------------------------------

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_opt(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(v) => {
            out.push(1);
            put_i64(out, v);
        }
        None => out.push(0),
    }
}

/// The record of a newly accepted item (everything its INSERT needs).
pub fn encode(item: &Item) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + item.payload.len());
    out.push(VERSION);
    put_i64(&mut out, item.seq);
    for s in [
        &item.receipt_id,
        &item.idem_key,
        &item.policy,
        &item.route,
        &item.card_ref,
        &item.card_masked,
        &item.institution,
        &item.reason,
        &item.method,
        &item.path,
    ] {
        put_bytes(&mut out, s.as_bytes());
    }
    put_bytes(&mut out, item.state.as_str().as_bytes());
    put_bytes(&mut out, &item.fingerprint);
    put_bytes(&mut out, &item.payload);
    out.push(item.encrypted as u8);
    for v in [item.amount_fen, item.accepted_ms, item.deadline_ms, item.next_attempt_ms] {
        put_i64(&mut out, v);
    }
    put_opt(&mut out, item.remaining_count);
    put_opt(&mut out, item.remaining_amount);
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(i64::from_le_bytes)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(len)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn opt(&mut self) -> Option<Option<i64>> {
        match self.byte()? {
            0 => Some(None),
            _ => self.i64().map(Some),
        }
    }
}

/// Reads a record made by [`encode`]; `None` if it is not one.
pub fn decode(body: &[u8]) -> Option<Item> {
    let mut r = Reader(body);
    if r.byte()? != VERSION {
        return None;
    }
    let seq = r.i64()?;
    let mut s = || r.string();
    let (receipt_id, idem_key, policy, route, card_ref) = (s()?, s()?, s()?, s()?, s()?);
    let (card_masked, institution, reason, method, path) = (s()?, s()?, s()?, s()?, s()?);
    let state = State::parse(&r.string()?)?;
    let fingerprint = r.bytes()?.to_vec();
    let payload = r.bytes()?.to_vec();
    let encrypted = r.byte()? != 0;
    let (amount_fen, accepted_ms, deadline_ms, next_attempt_ms) = (r.i64()?, r.i64()?, r.i64()?, r.i64()?);
    let (remaining_count, remaining_amount) = (r.opt()?, r.opt()?);
    Some(Item {
        seq,
        receipt_id,
        idem_key,
        fingerprint,
        policy,
        route,
        card_ref,
        card_masked,
        institution,
        amount_fen,
        reason,
        state,
        method,
        path,
        payload,
        encrypted,
        accepted_ms,
        deadline_ms,
        updated_ms: accepted_ms,
        attempts: 0,
        next_attempt_ms,
        final_status: None,
        final_body: None,
        backend_ref: None,
        last_error: None,
        remaining_count,
        remaining_amount,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: i64) -> Item {
        Item {
            seq,
            receipt_id: format!("r{seq}"),
            idem_key: format!("k{seq}"),
            fingerprint: vec![7; 32],
            policy: "p".into(),
            route: "settle".into(),
            card_ref: "c".into(),
            card_masked: "110***".into(),
            institution: "H1".into(),
            amount_fen: 100 + seq,
            reason: "circuit_open".into(),
            state: State::Unknown,
            method: "POST".into(),
            path: "/pay".into(),
            payload: vec![seq as u8; 300],
            encrypted: true,
            accepted_ms: 5,
            deadline_ms: 9,
            updated_ms: 5,
            attempts: 0,
            next_attempt_ms: 7,
            final_status: None,
            final_body: None,
            backend_ref: None,
            last_error: None,
            remaining_count: Some(3),
            remaining_amount: None,
        }
    }

    #[test]
    fn items_survive_encoding() {
        let a = item(42);
        let b = decode(&encode(&a)).expect("decodes");
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let bytes = encode(&a);
        assert!(decode(&bytes[..bytes.len() - 1]).is_none(), "a cut record does not decode");
    }

    /// Direct writes rewrite the segment's last partial block: groups of every size, crossing
    /// block boundaries and outgrowing the first buffer, read back whole and in order.
    #[test]
    fn direct_appends_of_any_size_read_back_in_order() {
        // On the checkout's disk: a tmpfs /tmp would have no direct I/O.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let log = dir.path().join("j.db-log");
        let mut w = Writer::open(&log, 1).unwrap();
        assert!(w.is_direct(), "ext4 has direct I/O; the writer fell back to buffered writes");
        let mut expected: Vec<Vec<u8>> = Vec::new();
        let mut x = 7u64;
        for group in 0..200u64 {
            let n = 1 + group % 4;
            let bodies: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let len = 1 + (x >> 33) as usize % if group == 150 { 3 << 20 } else { 5000 };
                    (0..len).map(|i| (i as u64 ^ x) as u8 | 1).collect()
                })
                .collect();
            let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            let (_, end) = w.append(&refs).unwrap();
            expected.extend(bodies);
            let total: usize = expected.iter().map(|b| HEADER + b.len()).sum();
            assert_eq!(end as usize, total);
        }
        let data = std::fs::read(seg_path(&log, 1)).unwrap();
        let got = records(&data, 1);
        assert_eq!(got.len(), expected.len());
        assert!(got.iter().zip(&expected).all(|(a, b)| *a == b.as_slice()), "a record came back different");
    }

    /// A torn tail ends the segment; a reused segment's old records are not read as new ones;
    /// ids only grow.
    #[test]
    fn torn_and_stale_records_end_a_segment() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("j.db-log");
        let mut w = Writer::open(&log, next_id(&log).unwrap()).unwrap();
        let path = seg_path(&log, 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SEGMENT_BYTES, "written full before use");
        let bodies: Vec<Vec<u8>> = (1..=3).map(|i| encode(&item(i))).collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        w.append(&refs).unwrap();
        let (_, end) = w.append(&[encode(&item(4)).as_slice()]).unwrap();
        drop(w);
        let seqs = |log: &Path| read_items(log).unwrap().iter().map(|(_, i)| i.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&log), [1, 2, 3, 4]);

        // A crash in the middle of the last write: the tail is cut, the rest stays.
        let mut data = std::fs::read(&path).unwrap();
        data[end as usize - 10..end as usize].fill(0);
        std::fs::write(&path, &data).unwrap();
        assert_eq!(seqs(&log), [1, 2, 3]);
        // Flipped bits in a record end the segment there too.
        data[HEADER + 20] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        assert_eq!(seqs(&log), Vec::<i64>::new());
        data[HEADER + 20] ^= 0xff;
        std::fs::write(&path, &data).unwrap();

        // Retired, segment 1 becomes segment 2 with its old records still in it: the new
        // record is read, none of the old ones behind it.
        recycle(&log, 2, Some(2)).unwrap();
        assert!(!path.exists());
        assert_eq!(next_id(&log).unwrap(), 3);
        let mut w = Writer::open(&log, 2).unwrap();
        assert_eq!(seqs(&log), Vec::<i64>::new(), "stale records are not this segment's");
        w.append(&[encode(&item(9)).as_slice()]).unwrap();
        assert_eq!(seqs(&log), [9]);
        // A file already under a name is never replaced.
        std::fs::write(dir.path().join("other"), b"x").unwrap();
        prepare(&log, 2, Some(&dir.path().join("other"))).unwrap();
        assert_eq!(seqs(&log), [9]);
    }
}
