//! `jisu bench --frames`: gRPC written as HTTP/2 frames by the generator itself, one task
//! per connection, as h2load drives a server.
//!
//! The lean generator (h2's client) keeps a task, a timer and h2's stream state per call;
//! in session 22 its CPU per call doubled with ~500 calls in flight (7.5 → 15.5 µs), so a
//! backlog begun by one stall of its core outlasted the stall and its lateness counted
//! as the server's latency. Here a call in flight is one entry of a queue (when it was
//! due and sent, its answer's counts), a call waiting for room is a slot number, and a
//! burst of answers is read, counted and followed by the next calls in one pass.
//!
//! The server receives the frames h2's client sends (their order within a write and the
//! moments of WINDOW_UPDATE may differ): the preface, SETTINGS and WINDOW_UPDATE and the
//! requests' header blocks are h2's own bytes, captured once per connection by running
//! h2's client over an in-memory pipe.
//! HPACK is stateful: the first request's block adds entries to the server's table and
//! every later request sends the second block (indexed fields, the `:path` and the token
//! as literals, as h2 sends them). Answers' header blocks are decoded (`hpack`) for
//! `:status`, `grpc-status` and `grpc-message`; their messages are counted by their
//! prefixes, not decoded. Flow control is kept both ways; a call without an answer by
//! its deadline is reset and counted DEADLINE_EXCEEDED.
use std::{
    collections::VecDeque,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::Instant,
};
use tonic::{Code, Status};

use super::{
    Pacer, Plan, Shared, Tally, hpack,
    lean::{self, CONNECTION_WINDOW, Head, Io, Messages, STREAM_WINDOW},
};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// The client's connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest frame payload either side may send until told otherwise (h2's client
/// does not raise it).
const MAX_FRAME: usize = 16_384;
/// RST_STREAM's CANCEL.
const CANCEL: u32 = 0x8;
/// The least room a read is given.
const READ_ROOM: usize = 16 * 1024;
/// How often calls are checked against their deadline.
const DEADLINE_CHECK: Duration = Duration::from_millis(50);

/// One connection to the server, ready to drive.
pub struct Frames {
    io: Io,
    head: Head,
    /// h2's first bytes on a connection: the preface, its SETTINGS and WINDOW_UPDATE.
    hello: Bytes,
    /// The first request's header block (it adds to the server's HPACK table).
    first_block: Bytes,
    /// Every later request's header block.
    block: Bytes,
}

impl std::fmt::Debug for Frames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frames")
            .field("block", &self.block.len())
            .finish_non_exhaustive()
    }
}

impl Frames {
    /// Connects to `endpoint` as [`lean::Lean::connect`] does, for `plan`'s calls.
    pub async fn connect(
        endpoint: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        token: Option<&str>,
        plan: &Plan,
    ) -> anyhow::Result<Self> {
        let (head, io) = lean::dial(endpoint, tls, token, plan).await?;
        let (hello, first_block, block) = capture(&head).await?;
        Ok(Self {
            io,
            head,
            hello,
            first_block,
            block,
        })
    }

    /// Makes calls on this connection as `shared`'s schedule releases them (open loop), or
    /// keeps `limit` in flight (closed loop), until the run ends; `worker` numbers its
    /// calls' requests. Returns its calls' tally (`rows` timeline rows reserved).
    pub(super) async fn drive(
        self,
        shared: Arc<Shared>,
        worker: usize,
        limit: usize,
        rows: usize,
    ) -> Tally {
        let mut conn = Conn {
            shared,
            worker,
            limit,
            head: self.head,
            first_block: self.first_block,
            block: self.block,
            tally: Tally::new(rows),
            n: 0,
            peer_streams: None,
            peer_window: 65_535,
            send_window: 65_535,
            peer_frame: MAX_FRAME,
            next_id: 1,
            base: 1,
            in_flight: VecDeque::new(),
            live: 0,
            waiting: VecDeque::new(),
            decoder: hpack::Decoder::default(),
            pending: None,
            unacked: 0,
            gone: None,
            eof: false,
            finished: false,
        };
        match self.io {
            Io::Tls(io) => conn.run(*io, self.hello).await,
            Io::Plain(io) => conn.run(io, self.hello).await,
        }
        conn.tally
    }
}

/// What h2's client writes for `head`'s calls: its first bytes (up to the first HEADERS),
/// and the header blocks of its first and second request. h2 runs over an in-memory pipe;
/// it does not wait for the server's SETTINGS to send.
async fn capture(head: &Head) -> anyhow::Result<(Bytes, Bytes, Bytes)> {
    use anyhow::Context as _;
    let (ours, mut theirs) = tokio::io::duplex(1 << 20);
    let (sender, connection) = lean::h2_builder().handshake::<_, Bytes>(ours).await?;
    let connection = tokio::spawn(connection);
    // Held until the bytes are read: a dropped request is reset, maybe before it is sent.
    let mut calls = Vec::new();
    for _ in 0..2 {
        let mut sender = sender.clone().ready().await?;
        calls.push(sender.send_request(head.request(), false)?);
    }
    let read = async {
        let mut wire = BytesMut::new();
        loop {
            if let Some(found) = header_blocks(&wire)? {
                return anyhow::Ok(found);
            }
            anyhow::ensure!(theirs.read_buf(&mut wire).await? > 0, "h2 closed the pipe");
        }
    };
    let found = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .context("h2's client did not write its requests")??;
    connection.abort();
    Ok(found)
}

/// The bytes before the first HEADERS frame and the first two header blocks in `wire` (a
/// client's side of a connection), once they are all there.
fn header_blocks(wire: &[u8]) -> anyhow::Result<Option<(Bytes, Bytes, Bytes)>> {
    if wire.len() < PREFACE.len() {
        return Ok(None);
    }
    anyhow::ensure!(wire.starts_with(PREFACE), "h2 wrote no client preface");
    let mut at = PREFACE.len();
    let mut hello = None;
    let mut blocks: Vec<BytesMut> = Vec::new();
    let mut open = false;
    while let Some((len, kind, flags, _)) = frame_head(&wire[at..]) {
        let Some(payload) = wire.get(at + 9..at + 9 + len) else {
            break;
        };
        match kind {
            HEADERS => {
                hello.get_or_insert_with(|| Bytes::copy_from_slice(&wire[..at]));
                let fragment = headers_fragment(payload, flags).map_err(anyhow::Error::msg)?;
                blocks.push(BytesMut::from(fragment));
                open = flags & END_HEADERS == 0;
            }
            CONTINUATION if open => {
                blocks.last_mut().expect("open").extend_from_slice(payload);
                open = flags & END_HEADERS == 0;
            }
            _ => {}
        }
        at += 9 + len;
        if blocks.len() == 2 && !open {
            let second = blocks.pop().expect("two").freeze();
            let first = blocks.pop().expect("two").freeze();
            return Ok(Some((hello.expect("set"), first, second)));
        }
    }
    Ok(None)
}

/// A frame's head: payload length, type, flags, stream.
fn frame_head(buf: &[u8]) -> Option<(usize, u8, u8, u32)> {
    let h = buf.get(..9)?;
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    Some((len, h[3], h[4], stream))
}

/// A HEADERS frame's header block fragment, without padding and priority.
fn headers_fragment(payload: &[u8], flags: u8) -> Result<&[u8], &'static str> {
    let payload = unpad(payload, flags)?;
    if flags & PRIORITY != 0 {
        payload
            .get(5..)
            .ok_or("a HEADERS frame too short for its priority")
    } else {
        Ok(payload)
    }
}

/// A DATA or HEADERS frame's payload without its padding.
fn unpad(payload: &[u8], flags: u8) -> Result<&[u8], &'static str> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or("a padded frame without its pad length")?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|end| &rest[..end])
        .ok_or("a frame's padding longer than the frame")
}

fn put_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// `payload` as frames of at most `max` bytes on `stream`, the first of type `kinds.0`, the
/// others `kinds.1` (a header block's CONTINUATION, or DATA again), the last flagged `last`
/// (END_HEADERS, END_STREAM); an empty payload is one empty frame.
fn put_frames(
    out: &mut BytesMut,
    stream: u32,
    payload: &[u8],
    max: usize,
    kinds: (u8, u8),
    last: u8,
) {
    let mut chunks = payload.chunks(max).peekable();
    let mut kind = kinds.0;
    loop {
        let chunk = chunks.next().unwrap_or_default();
        let end = chunks.peek().is_none();
        put_head(out, chunk.len(), kind, if end { last } else { 0 }, stream);
        out.extend_from_slice(chunk);
        if end {
            return;
        }
        kind = kinds.1;
    }
}

/// One call in flight.
struct Call {
    due: Instant,
    sent: Instant,
    messages: Messages,
    /// The answer's head has come.
    answered: bool,
    /// DATA received and not yet given back to the server's window.
    unacked: usize,
}

/// A connection's calls and HTTP/2 state.
struct Conn {
    shared: Arc<Shared>,
    worker: usize,
    limit: usize,
    head: Head,
    first_block: Bytes,
    block: Bytes,
    tally: Tally,
    /// Calls sent.
    n: u64,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS (`None` until its SETTINGS came: the
    /// first call waits for them, as the server may allow fewer than `limit`).
    peer_streams: Option<usize>,
    /// The server's SETTINGS_INITIAL_WINDOW_SIZE: the most a request may be.
    peer_window: i64,
    /// The connection's window for what this side sends.
    send_window: i64,
    peer_frame: usize,
    next_id: u32,
    /// The stream id of `in_flight[0]`.
    base: u32,
    /// Calls by stream id (`base`, `base + 2`, ...); `None` once ended.
    in_flight: VecDeque<Option<Call>>,
    live: usize,
    /// Open loop: slots taken, not yet sent (their due times).
    waiting: VecDeque<Instant>,
    decoder: hpack::Decoder,
    /// A header block still coming in CONTINUATION frames: stream, END_STREAM, bytes.
    pending: Option<(u32, bool, BytesMut)>,
    /// DATA received on the connection and not yet given back to its window.
    unacked: usize,
    /// Why no more calls can go on this connection (GOAWAY, a broken connection).
    gone: Option<String>,
    /// The server closed its side (or reading failed).
    eof: bool,
    /// No more calls are due.
    finished: bool,
}

impl Conn {
    async fn run<T: AsyncRead + AsyncWrite + Unpin>(&mut self, io: T, hello: Bytes) {
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut out = BytesMut::with_capacity(64 * 1024);
        out.extend_from_slice(&hello);
        let mut rbuf = BytesMut::new();
        let mut flush = false;
        let mut check = tokio::time::interval(DEADLINE_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.shared.clone();
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                self.finished = true;
            }
            let idle = self.live == 0 && self.waiting.is_empty();
            if self.finished && (idle || self.eof) && out.is_empty() && !flush {
                break;
            }
            let room = !self.finished && self.room() > 0;
            // Room for a read of what a turn of the server writes (`read_buf` reads no
            // more than the spare capacity; `reserve` reuses the space of frames handled).
            if rbuf.capacity() - rbuf.len() < READ_ROOM {
                rbuf.reserve(4 * READ_ROOM);
            }
            tokio::select! {
                biased;
                read = rd.read_buf(&mut rbuf), if !self.eof => match read {
                    Ok(0) => self.broken("the server closed the connection".into()),
                    Ok(_) => self.on_frames(&mut rbuf, &mut out),
                    Err(e) => self.broken(format!("reading from the server: {e}")),
                },
                // Writes what is ready, then flushes it (TLS keeps records until then).
                wrote = write_or_flush(&mut wr, &mut out), if !out.is_empty() || flush => {
                    match wrote {
                        Ok(wrote) => flush = wrote,
                        Err(e) => {
                            out.clear();
                            flush = false;
                            self.broken(format!("writing to the server: {e}"));
                        }
                    }
                }
                got = permit(shared.pacer.as_ref()), if room => self.take(got, &mut out),
                _ = check.tick() => self.expire(&mut out),
            }
        }
    }

    /// How many more calls may go now.
    fn room(&self) -> usize {
        if self.gone.is_some() {
            // Each call fails at once, as the lean driver's do on a broken connection.
            return 1;
        }
        self.limit
            .min(self.peer_streams.unwrap_or(0))
            .saturating_sub(self.live + self.waiting.len())
    }

    /// Takes the calls due: for an open loop, the permit `got` and those released with it
    /// (as many as there is room for); for a closed loop, one per free place.
    fn take(&mut self, got: bool, out: &mut BytesMut) {
        let shared = self.shared.clone();
        let now = Instant::now();
        match &shared.pacer {
            Some(pacer) => {
                if !got {
                    self.finished = true;
                    return;
                }
                let mut k = 1;
                let more = pacer.permits.available_permits().min(self.room() - 1);
                if more > 0
                    && let Ok(permits) = pacer.permits.try_acquire_many(more as u32)
                {
                    permits.forget();
                    k += more;
                }
                let first = shared.slots.fetch_add(k as u64, Ordering::Relaxed);
                let mut past_end = 0;
                for slot in first..first + k as u64 {
                    match shared.slot_due(pacer, slot) {
                        Some(due) if shared.may_start(due) => self.waiting.push_back(due),
                        Some(_) => self.finished = true,
                        None => past_end += 1,
                    }
                }
                if past_end > 0 {
                    self.finished = true;
                    // One permit past the end is this connection's; the others', back.
                    pacer.permits.add_permits(past_end - 1);
                }
            }
            None => {
                for _ in 0..self.room() {
                    if !shared.may_start(now) {
                        self.finished = true;
                        break;
                    }
                    self.waiting.push_back(now);
                }
            }
        }
        self.send_waiting(out);
    }

    /// Sends the waiting calls the windows have room for.
    fn send_waiting(&mut self, out: &mut BytesMut) {
        let now = Instant::now();
        while let Some(&due) = self.waiting.front() {
            if self.gone.is_some() {
                return self.fail_waiting();
            }
            let body = self.head.body(&self.shared.plan, self.worker, self.n);
            if body.len() as i64 > self.peer_window {
                self.gone = Some(format!(
                    "a request of {} bytes is larger than the server's stream window ({}); \
                     --frames sends a request in one go",
                    body.len(),
                    self.peer_window
                ));
                continue;
            }
            if body.len() as i64 > self.send_window || self.next_id > 0x7fff_ffff {
                if self.next_id > 0x7fff_ffff {
                    self.gone = Some("the connection ran out of stream ids".into());
                    continue;
                }
                // Until the server's WINDOW_UPDATE.
                break;
            }
            self.waiting.pop_front();
            self.n += 1;
            let id = self.next_id;
            self.next_id += 2;
            let block = if id == 1 {
                &self.first_block
            } else {
                &self.block
            };
            let max = self.peer_frame;
            put_frames(out, id, block, max, (HEADERS, CONTINUATION), END_HEADERS);
            put_frames(out, id, &body, max, (DATA, DATA), END_STREAM);
            self.send_window -= body.len() as i64;
            if self.in_flight.is_empty() {
                self.base = id;
            }
            self.in_flight.push_back(Some(Call {
                due,
                sent: now,
                messages: Messages::default(),
                answered: false,
                unacked: 0,
            }));
            self.live += 1;
        }
    }

    /// Where call `id` is in `in_flight`.
    fn at(&self, id: u32) -> Option<usize> {
        let d = id.checked_sub(self.base)?;
        (d % 2 == 0).then_some((d / 2) as usize)
    }

    /// With the connection gone, the waiting calls fail at once (as the lean driver's do).
    fn fail_waiting(&mut self) {
        let Some(why) = self.gone.clone() else {
            return;
        };
        let now = Instant::now();
        while let Some(due) = self.waiting.pop_front() {
            let why = Some(why.clone());
            self.shared
                .record(&mut self.tally, (due, now), Code::Unavailable, why, 0);
        }
    }

    fn call(&mut self, id: u32) -> Option<&mut Call> {
        let at = self.at(id)?;
        self.in_flight.get_mut(at)?.as_mut()
    }

    /// The stream ids of the calls in flight.
    fn live_ids(&self) -> Vec<u32> {
        (self.in_flight.iter().enumerate())
            .filter(|(_, c)| c.is_some())
            .map(|(k, _)| self.base + 2 * k as u32)
            .collect()
    }

    /// Ends call `id` with `code` (`message` when not OK).
    fn end(&mut self, id: u32, code: Code, message: Option<String>) {
        let Some(at) = self.at(id) else {
            return;
        };
        let Some(call) = self.in_flight.get_mut(at).and_then(Option::take) else {
            return;
        };
        self.live -= 1;
        while let Some(None) = self.in_flight.front() {
            self.in_flight.pop_front();
            self.base += 2;
        }
        // The payload reported is the first call's answer (the request the other drivers
        // probe with).
        if code == Code::Ok && id == 1 {
            self.tally.answer_bytes = Some(call.messages.bytes);
        }
        let messages = if code == Code::Ok {
            call.messages.messages
        } else {
            0
        };
        self.shared.record(
            &mut self.tally,
            (call.due, call.sent),
            code,
            message,
            messages,
        );
    }

    /// Every call in flight fails: the connection is gone.
    fn broken(&mut self, why: String) {
        self.eof = true;
        for id in self.live_ids() {
            self.end(id, Code::Unavailable, Some(why.clone()));
        }
        self.gone.get_or_insert(why);
        self.fail_waiting();
    }

    /// Resets and fails the calls past their deadline (the oldest go first: calls are
    /// sent in stream order).
    fn expire(&mut self, out: &mut BytesMut) {
        let timeout = self.shared.plan.timeout;
        let now = Instant::now();
        while let Some(Some(call)) = self.in_flight.front() {
            if now - call.sent < timeout {
                break;
            }
            let id = self.base;
            put_head(out, 4, RST_STREAM, 0, id);
            out.put_u32(CANCEL);
            let why = format!("no answer within {timeout:?}");
            self.end(id, Code::DeadlineExceeded, Some(why));
        }
    }

    /// Handles every whole frame in `rbuf`.
    fn on_frames(&mut self, rbuf: &mut BytesMut, out: &mut BytesMut) {
        while let Some((len, kind, flags, stream)) = frame_head(rbuf) {
            if len > MAX_FRAME {
                return self.broken(format!("the server sent a frame of {len} bytes"));
            }
            if rbuf.len() < 9 + len {
                rbuf.reserve(9 + len - rbuf.len());
                break;
            }
            let payload = &rbuf[9..9 + len];
            if let Err(why) = self.on_frame(kind, flags, stream, payload, out) {
                return self.broken(format!("HTTP/2 protocol error from the server: {why}"));
            }
            rbuf.advance(9 + len);
        }
        // The calls whose answers just ended make room for the next ones.
        self.send_waiting(out);
    }

    fn on_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), String> {
        if self.pending.is_some() && kind != CONTINUATION {
            return Err("a header block interrupted".into());
        }
        match kind {
            DATA => self.on_data(flags, stream, payload, out)?,
            HEADERS => {
                let fragment = headers_fragment(payload, flags)?;
                let block = BytesMut::from(fragment);
                self.pending = Some((stream, flags & END_STREAM != 0, block));
                if flags & END_HEADERS != 0 {
                    self.on_block()?;
                }
            }
            CONTINUATION => {
                let Some((id, _, block)) = self.pending.as_mut() else {
                    return Err("CONTINUATION without HEADERS".into());
                };
                if *id != stream {
                    return Err("CONTINUATION on another stream".into());
                }
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    self.on_block()?;
                }
            }
            RST_STREAM => {
                let reason = payload
                    .get(..4)
                    .map(|r| u32::from_be_bytes([r[0], r[1], r[2], r[3]]))
                    .ok_or("a short RST_STREAM")?;
                let status =
                    Status::from_error(Box::new(h2::Error::from(h2::Reason::from(reason))));
                let message = format!("the server reset the stream: {}", status.message());
                self.end(stream, status.code(), Some(message));
            }
            SETTINGS if flags & ACK == 0 => {
                for setting in payload.chunks_exact(6) {
                    let value =
                        u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                    match u16::from_be_bytes([setting[0], setting[1]]) {
                        // h2's header blocks assume its default HPACK table (4,096 bytes).
                        0x1 if value < 4096 => {
                            self.gone.get_or_insert_with(|| {
                                format!(
                                    "the server's HPACK table ({value} bytes) is smaller than \
                                     the 4,096 bytes --frames encodes for"
                                )
                            });
                        }
                        0x3 => self.peer_streams = Some(value as usize),
                        0x4 => self.peer_window = i64::from(value),
                        0x5 => self.peer_frame = (value as usize).clamp(MAX_FRAME, 1 << 24),
                        _ => {}
                    }
                }
                // No limit set: none.
                self.peer_streams.get_or_insert(usize::MAX);
                put_head(out, 0, SETTINGS, ACK, 0);
            }
            PING if flags & ACK == 0 => {
                put_head(out, payload.len(), PING, ACK, 0);
                out.extend_from_slice(payload);
            }
            GOAWAY => {
                let last = payload
                    .get(..4)
                    .map(|r| u32::from_be_bytes([r[0], r[1], r[2], r[3]]) & 0x7fff_ffff)
                    .ok_or("a short GOAWAY")?;
                let why = "the server is closing the connection (GOAWAY)".to_owned();
                for id in self.live_ids().into_iter().filter(|&id| id > last) {
                    self.end(id, Code::Unavailable, Some(why.clone()));
                }
                self.gone.get_or_insert(why);
            }
            WINDOW_UPDATE if stream == 0 => {
                let add = payload
                    .get(..4)
                    .map(|r| u32::from_be_bytes([r[0], r[1], r[2], r[3]]) & 0x7fff_ffff)
                    .ok_or("a short WINDOW_UPDATE")?;
                self.send_window += i64::from(add);
            }
            PUSH_PROMISE => return Err("PUSH_PROMISE, which the client disabled".into()),
            // SETTINGS and PING acknowledgements, a stream's WINDOW_UPDATE (a request goes
            // whole within the initial window), PRIORITY, unknown types.
            _ => {}
        }
        Ok(())
    }

    fn on_data(
        &mut self,
        flags: u8,
        stream: u32,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), String> {
        // Flow control counts the whole payload, padding included.
        self.unacked += payload.len();
        if self.unacked >= CONNECTION_WINDOW as usize / 2 {
            put_head(out, 4, WINDOW_UPDATE, 0, 0);
            out.put_u32(self.unacked as u32);
            self.unacked = 0;
        }
        let data = unpad(payload, flags)?;
        let end = flags & END_STREAM != 0;
        let Some(call) = self.call(stream) else {
            // An answer to a call already ended (its deadline passed).
            return Ok(());
        };
        call.messages.push(data);
        call.unacked += payload.len();
        if !end && call.unacked >= STREAM_WINDOW as usize / 2 {
            put_head(out, 4, WINDOW_UPDATE, 0, stream);
            out.put_u32(call.unacked as u32);
            call.unacked = 0;
        }
        if end {
            let why = "the answer ended without grpc-status".to_owned();
            self.end(stream, Code::Internal, Some(why));
        }
        Ok(())
    }

    /// A whole header block: decoded (always, to keep the HPACK table in step), then the
    /// answer's head or trailers.
    fn on_block(&mut self) -> Result<(), String> {
        let (stream, end, block) = self.pending.take().expect("a block");
        let mut http = None;
        let mut grpc = None;
        let mut message = None;
        self.decoder
            .decode(&block, |name, value| match name {
                b":status" => http = std::str::from_utf8(value).ok().map(str::to_owned),
                b"grpc-status" => grpc = Some(value.to_vec()),
                b"grpc-message" => message = Some(value.to_vec()),
                _ => {}
            })
            .map_err(|e| format!("an undecodable header block: {e}"))?;
        let Some(call) = self.call(stream) else {
            return Ok(());
        };
        let head = !call.answered;
        call.answered = true;
        let inside_a_message = call.messages.have != 0;
        if head {
            if http.as_deref() != Some("200") {
                let http = http.unwrap_or_else(|| "without :status".into());
                let why = format!("HTTP {http} instead of a gRPC answer");
                self.end(stream, Code::Unknown, Some(why));
                return Ok(());
            }
            if !end {
                return Ok(());
            }
        } else if !end {
            return Err("trailers without END_STREAM".into());
        }
        let (code, why) = match grpc_status(grpc.as_deref(), message.as_deref()) {
            (Code::Ok, _) if inside_a_message => (
                Code::Internal,
                Some("the answer ended inside a message".to_owned()),
            ),
            status => status,
        };
        self.end(stream, code, why);
        Ok(())
    }
}

/// The call's code and message from its trailers, as tonic reads them (`grpc-message`
/// percent-decoded).
fn grpc_status(grpc: Option<&[u8]>, message: Option<&[u8]>) -> (Code, Option<String>) {
    match grpc {
        Some(b"0") => (Code::Ok, None),
        None => (
            Code::Internal,
            Some("the answer ended without grpc-status".into()),
        ),
        Some(code) => {
            let mut headers = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_bytes(code) {
                headers.insert("grpc-status", v);
            }
            if let Some(Ok(v)) = message.map(http::HeaderValue::from_bytes) {
                headers.insert("grpc-message", v);
            }
            match Status::from_header_map(&headers) {
                Some(s) => (s.code(), Some(s.message().to_owned())),
                None => (Code::Unknown, Some("an unreadable grpc-status".into())),
            }
        }
    }
}

/// Writes from `out` when it holds something (`true`: a flush is due), else flushes.
async fn write_or_flush<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
) -> std::io::Result<bool> {
    if out.is_empty() {
        wr.flush().await.map(|()| false)
    } else {
        wr.write_buf(out).await.map(|_| true)
    }
}

/// An open loop's next permit (`false`: the pacer is gone); a closed loop's is always
/// there.
async fn permit(pacer: Option<&Pacer>) -> bool {
    match pacer {
        Some(pacer) => match pacer.permits.acquire().await {
            Ok(p) => {
                p.forget();
                true
            }
            Err(_) => false,
        },
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Call, run_frames};

    fn plan(total: u64, timeout: Duration) -> Plan {
        Plan {
            call: Call::GetUser,
            data: None,
            metadata: Vec::new(),
            concurrency: 3,
            duration: Duration::from_secs(1),
            total: Some(total),
            warmup: Duration::ZERO,
            rps: None,
            stream_messages: 100,
            timeout,
            server_pid: None,
            timeline: false,
        }
    }

    /// A server that sends its SETTINGS (at most 2 streams) and answers nothing: the frames
    /// each of its connections received, as (type, stream) pairs, once the client is done.
    async fn silent_server() -> (String, tokio::task::JoinHandle<Vec<(u8, u32)>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut settings = BytesMut::new();
            put_head(&mut settings, 6, SETTINGS, 0, 0);
            settings.put_u16(0x3);
            settings.put_u32(2);
            socket.write_all(&settings).await.unwrap();
            let mut wire = BytesMut::new();
            while socket.read_buf(&mut wire).await.unwrap() > 0 {}
            let mut frames = Vec::new();
            let mut at = PREFACE.len();
            while let Some((len, kind, _, stream)) = frame_head(&wire[at..]) {
                frames.push((kind, stream));
                at += 9 + len;
            }
            frames
        });
        (endpoint, server)
    }

    #[tokio::test]
    async fn a_connection_the_server_closes_fails_its_calls_unavailable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut settings = BytesMut::new();
            put_head(&mut settings, 0, SETTINGS, 0, 0);
            socket.write_all(&settings).await.unwrap();
            // The first request's HEADERS, then the server closes its side (and reads
            // until the client has gone).
            let mut wire = BytesMut::new();
            while !has_headers(&wire) && socket.read_buf(&mut wire).await.unwrap() > 0 {}
            socket.shutdown().await.unwrap();
            while socket.read_buf(&mut wire).await.unwrap_or(0) > 0 {}
        });
        let report = three_calls(&endpoint, Duration::from_secs(10)).await;
        assert_eq!(report.count, 3);
        all_failed(&report, "Unavailable", "the server closed the connection");
    }

    /// Three calls, three in flight, to `endpoint` with a deadline of `timeout`.
    async fn three_calls(endpoint: &str, timeout: Duration) -> crate::bench::Report {
        let plan = plan(3, timeout);
        let conn = Frames::connect(endpoint, None, None, &plan).await.unwrap();
        run_frames(vec![conn], &plan, 1, |_| {}).await
    }

    /// Every call of `report` ended with `code` and `message`.
    fn all_failed(report: &crate::bench::Report, code: &str, message: &str) {
        let calls = report.count;
        assert_eq!(
            report.status,
            [(code.to_owned(), calls)].into(),
            "{report:?}"
        );
        assert_eq!(report.errors[code], message, "{report:?}");
    }

    /// Whether `wire` (a client's side) holds a HEADERS frame yet.
    fn has_headers(wire: &[u8]) -> bool {
        let mut at = PREFACE.len();
        while let Some((len, kind, ..)) = frame_head(&wire[at.min(wire.len())..]) {
            if kind == HEADERS {
                return true;
            }
            at += 9 + len;
        }
        false
    }

    #[tokio::test]
    async fn h2s_header_blocks_are_captured_and_decode_to_the_request() {
        let (endpoint, _server) = silent_server().await;
        let plan = plan(1, Duration::from_secs(7));
        let (head, _io) = lean::dial(&endpoint, None, Some("tok"), &plan)
            .await
            .unwrap();
        let (hello, first, later) = capture(&head).await.unwrap();
        assert!(hello.starts_with(PREFACE));
        // The client's SETTINGS and WINDOW_UPDATE follow the preface.
        let kinds: Vec<u8> = std::iter::successors(Some(PREFACE.len()), |at| {
            frame_head(&hello[*at..]).map(|(len, ..)| at + 9 + len)
        })
        .filter_map(|at| frame_head(&hello[at..]).map(|(_, kind, ..)| kind))
        .collect();
        assert_eq!(kinds, [SETTINGS, WINDOW_UPDATE]);
        // Decoded in order, as the server decodes them: the same fields; the later block
        // refers to the table the first one filled.
        let mut decoder = hpack::Decoder::default();
        let mut fields = |block: &[u8]| {
            let mut out = Vec::new();
            decoder
                .decode(block, |n, v| {
                    out.push(format!(
                        "{}: {}",
                        String::from_utf8_lossy(n),
                        String::from_utf8_lossy(v)
                    ))
                })
                .unwrap();
            out.sort();
            out
        };
        let authority = endpoint.trim_start_matches("http://");
        let mut want = vec![
            ":authority: ".to_owned() + authority,
            ":method: POST".into(),
            ":path: /jisucloud.v1.UserService/GetUser".into(),
            ":scheme: http".into(),
            "authorization: Bearer tok".into(),
            "content-type: application/grpc".into(),
            "grpc-timeout: 7000m".into(),
            "te: trailers".into(),
            concat!("user-agent: jisu-bench/", env!("CARGO_PKG_VERSION")).into(),
        ];
        want.sort();
        assert_eq!(fields(&first), want);
        assert_eq!(fields(&later), want);
        assert!(later.len() < first.len(), "{later:?} {first:?}");
    }

    #[tokio::test]
    async fn a_call_unanswered_by_its_deadline_is_reset_and_counted_so() {
        let (endpoint, server) = silent_server().await;
        let report = three_calls(&endpoint, Duration::from_millis(100)).await;
        assert_eq!(report.count, 3);
        all_failed(&report, "DeadlineExceeded", "no answer within 100ms");
        let frames = server.await.unwrap();
        let sent: Vec<_> = (frames.iter())
            .filter(|(kind, _)| matches!(*kind, HEADERS | RST_STREAM))
            .copied()
            .collect();
        // Two calls at a time (the server's limit), each reset when its deadline passed.
        assert_eq!(
            sent,
            [
                (HEADERS, 1),
                (HEADERS, 3),
                (RST_STREAM, 1),
                (RST_STREAM, 3),
                (HEADERS, 5),
                (RST_STREAM, 5)
            ],
            "{frames:?}"
        );
    }

    #[test]
    fn a_payload_is_cut_into_frames_of_the_peers_size_the_last_flagged() {
        let heads = |out: &BytesMut| {
            let mut at = 0;
            let mut heads = Vec::new();
            while let Some((len, kind, flags, stream)) = frame_head(&out[at..]) {
                heads.push((len, kind, flags, stream));
                at += 9 + len;
            }
            assert_eq!(at, out.len(), "whole frames");
            heads
        };
        let mut out = BytesMut::new();
        put_frames(
            &mut out,
            5,
            &[7; 25],
            10,
            (HEADERS, CONTINUATION),
            END_HEADERS,
        );
        assert_eq!(
            heads(&out),
            [
                (10, HEADERS, 0, 5),
                (10, CONTINUATION, 0, 5),
                (5, CONTINUATION, END_HEADERS, 5)
            ]
        );
        let mut out = BytesMut::new();
        put_frames(&mut out, 7, &[], 10, (DATA, DATA), END_STREAM);
        assert_eq!(heads(&out), [(0, DATA, END_STREAM, 7)], "an empty body");
        let mut out = BytesMut::new();
        put_frames(&mut out, 7, &[1; 10], 10, (DATA, DATA), END_STREAM);
        assert_eq!(heads(&out), [(10, DATA, END_STREAM, 7)], "one full frame");
    }

    #[test]
    fn padding_and_priority_are_taken_off() {
        // Pad length 2, "ab", two bytes of padding.
        assert_eq!(unpad(&[2, b'a', b'b', 0, 0], PADDED), Ok(&b"ab"[..]));
        assert_eq!(unpad(b"ab", 0), Ok(&b"ab"[..]));
        assert!(
            unpad(&[3, b'a', 0], PADDED).is_err(),
            "padding past the end"
        );
        let prio = [0, 0, 0, 1, 16, b'x'];
        assert_eq!(headers_fragment(&prio, PRIORITY), Ok(&b"x"[..]));
    }

    #[test]
    fn grpc_status_reads_as_tonic_reads_it() {
        assert_eq!(grpc_status(Some(b"0"), None), (Code::Ok, None));
        assert_eq!(
            grpc_status(Some(b"5"), Some(b"user%20USER9999%20not%20found")),
            (Code::NotFound, Some("user USER9999 not found".into()))
        );
        assert_eq!(grpc_status(None, None).0, Code::Internal);
    }
}
