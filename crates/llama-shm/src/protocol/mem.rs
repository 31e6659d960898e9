//! A [`Region`] over private memory, and a [`Semaphore`] that never blocks.
//!
//! For tests and fuzzers, not for shared memory: [`MemRegion`] keeps a whole object (or a
//! seed-size region) as bytes in a `RefCell`, so the protocol's functions can run on any byte
//! pattern in a single thread, with no OS object and no `unsafe`. It follows the rules of the
//! POSIX region ([`crate::objects::ShmRegion`]): a read outside a field yields zeros, a write
//! or fill outside a field is dropped, and a seed-size region has no extension page (its
//! words and extension fields read zero, writes to them are dropped).
//!
//! Its words are plain native-endian bytes, not atomics: a `MemRegion` is not `Sync` and is
//! never shared between threads.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::time::Instant;

use crate::protocol::{Region, Semaphore};
use crate::wire::layout::{
    Field, ObjectKind, Word32, Word64, AREA_LEN, AREA_OBJECT_SIZE, AREA_OFFSET, EXT_MAGIC, EXT_SIZE,
    EXT_VERSION, FEATURE_REQUEST_AREA, OBJECT_SIZE, SEED_SIZE,
};

/// A whole object (49152 bytes, or with the request area [`AREA_OBJECT_SIZE`]: see
/// [`MemRegion::with_area`]) or a seed-era region (40961 bytes) in private memory.
pub struct MemRegion {
    bytes: RefCell<Vec<u8>>,
    kind: ObjectKind,
    /// What [`Region::current_cpu`] reports (see [`MemRegion::set_cpu`]).
    cpu: Cell<u32>,
}

impl fmt::Debug for MemRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemRegion")
            .field("kind", &self.kind)
            .field("len", &self.bytes.borrow().len())
            .finish_non_exhaustive()
    }
}

impl MemRegion {
    /// The number of bytes a region of `kind` holds: [`SEED_SIZE`] for a seed region,
    /// [`OBJECT_SIZE`] for an extended one.
    pub const fn size_of(kind: ObjectKind) -> usize {
        match kind {
            ObjectKind::Seed => SEED_SIZE,
            ObjectKind::Extended => OBJECT_SIZE,
        }
    }

    /// A region of `kind` holding a copy of `bytes`, zero-padded or truncated to
    /// [`MemRegion::size_of`] `kind`. The bytes are taken as they are: nothing checks that an
    /// extended region carries the magic (see [`MemRegion::initialised`] for one that does).
    pub fn from_bytes(bytes: &[u8], kind: ObjectKind) -> Self {
        let size = Self::size_of(kind);
        let mut buf = vec![0u8; size];
        let n = bytes.len().min(size);
        buf[..n].copy_from_slice(&bytes[..n]);
        Self {
            bytes: RefCell::new(buf),
            kind,
            cpu: Cell::new(0),
        }
    }

    /// An all-zero region of `kind`.
    pub fn zeroed(kind: ObjectKind) -> Self {
        Self::from_bytes(&[], kind)
    }

    /// A zeroed region of `kind` whose extension page (if it has one) is initialised as a
    /// creator leaves it: version, page size, `features`, then the magic.
    pub fn initialised(kind: ObjectKind, features: u32) -> Self {
        let region = Self::zeroed(kind);
        if kind == ObjectKind::Extended {
            region.store32(Word32::Version, EXT_VERSION);
            region.store32(Word32::PageSize, EXT_SIZE as u32);
            region.store32(Word32::Features, features);
            region.write(Field::Magic, 0, &EXT_MAGIC);
        }
        region
    }

    /// [`MemRegion::initialised`] extended, with the request area as a creator of this version
    /// makes it: [`AREA_OBJECT_SIZE`] bytes, [`FEATURE_REQUEST_AREA`] and `area_size` set.
    pub fn with_area(features: u32) -> Self {
        let region = Self::initialised(ObjectKind::Extended, features | FEATURE_REQUEST_AREA);
        region.bytes.borrow_mut().resize(AREA_OBJECT_SIZE, 0);
        region.store32(Word32::AreaSize, AREA_LEN as u32);
        region
    }

    /// A region of `kind` holding `bytes` as they are, whatever their length (at least
    /// [`SEED_SIZE`] is sensible): a fuzzer's object of any size, the request area included.
    pub fn from_exact_bytes(bytes: &[u8], kind: ObjectKind) -> Self {
        Self {
            bytes: RefCell::new(bytes.to_vec()),
            kind,
            cpu: Cell::new(0),
        }
    }

    /// Makes [`Region::current_cpu`] report `cpu` (a CPU plus one, as a thread running on it
    /// would see it; 0, the default, is unknown), so tests can check what a side advertises
    /// in `worker_cpu` / `client_cpu` after its waits.
    pub fn set_cpu(&self, cpu: u32) {
        self.cpu.set(cpu);
    }

    /// A copy of the region's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.borrow().clone()
    }

    /// The region's bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes.into_inner()
    }

    /// The number of bytes the region holds.
    pub fn len(&self) -> usize {
        self.bytes.borrow().len()
    }

    /// Whether the region holds no bytes (never true: regions are at least [`SEED_SIZE`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The absolute byte range `[offset, offset + len)` of the buffer, if the field-relative
    /// range `[at, at + len)` lies inside `field` and the buffer holds it.
    fn range(&self, field: Field, at: usize, len: usize) -> Option<std::ops::Range<usize>> {
        let span = field.span();
        let end_in_field = at.checked_add(len)?;
        if end_in_field > span.len {
            return None;
        }
        let start = span.offset + at;
        let end = start + len;
        (end <= self.bytes.borrow().len()).then_some(start..end)
    }

    fn word<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.bytes.borrow().get(offset..offset + N) {
            out.copy_from_slice(src);
        }
        out
    }

    fn set_word(&self, offset: usize, value: &[u8]) {
        if let Some(dst) = self.bytes.borrow_mut().get_mut(offset..offset + value.len()) {
            dst.copy_from_slice(value);
        }
    }
}

impl Region for MemRegion {
    fn kind(&self) -> ObjectKind {
        self.kind
    }

    fn read(&self, field: Field, at: usize, dst: &mut [u8]) {
        match self.range(field, at, dst.len()) {
            Some(r) => dst.copy_from_slice(&self.bytes.borrow()[r]),
            None => dst.fill(0),
        }
    }

    fn write(&self, field: Field, at: usize, src: &[u8]) {
        if let Some(r) = self.range(field, at, src.len()) {
            self.bytes.borrow_mut()[r].copy_from_slice(src);
        }
    }

    fn fill(&self, field: Field, at: usize, len: usize, byte: u8) {
        if let Some(r) = self.range(field, at, len) {
            self.bytes.borrow_mut()[r].fill(byte);
        }
    }

    fn load32(&self, word: Word32) -> u32 {
        u32::from_ne_bytes(self.word(word.offset()))
    }

    fn store32(&self, word: Word32, value: u32) {
        self.set_word(word.offset(), &value.to_ne_bytes());
    }

    fn load64(&self, word: Word64) -> u64 {
        u64::from_ne_bytes(self.word(word.offset()))
    }

    fn store64(&self, word: Word64, value: u64) {
        self.set_word(word.offset(), &value.to_ne_bytes());
    }

    fn current_cpu(&self) -> u32 {
        self.cpu.get()
    }

    fn area_len(&self) -> usize {
        match self.kind {
            ObjectKind::Extended => self.len().saturating_sub(AREA_OFFSET).min(AREA_LEN),
            ObjectKind::Seed => 0,
        }
    }
}

/// A semaphore that is always available: `post` does nothing, `wait_until` returns at once
/// as if posted. For driving one side of the protocol alone in tests and fuzzers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoopSemaphore;

impl Semaphore for NoopSemaphore {
    fn post(&self) -> io::Result<()> {
        Ok(())
    }

    fn wait_until(&self, _deadline: Option<Instant>) -> io::Result<bool> {
        Ok(true)
    }

    /// Never finds a pending post: a waiting side sees no stale posts to drain.
    fn try_wait(&self) -> io::Result<bool> {
        Ok(false)
    }

    fn value(&self) -> io::Result<u32> {
        Ok(0)
    }
}

/// A counting semaphore whose waits never block: a wait on zero times out at once. For
/// single-threaded tests of both sides of the protocol (`serve` included), where the count
/// shows exactly how many posts were made.
#[derive(Debug, Default)]
pub struct CountingSemaphore(std::sync::Mutex<u32>);

impl Semaphore for CountingSemaphore {
    fn post(&self) -> io::Result<()> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Ok(())
    }

    fn wait_until(&self, _deadline: Option<Instant>) -> io::Result<bool> {
        self.try_wait()
    }

    fn try_wait(&self) -> io::Result<bool> {
        let mut n = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let taken = *n > 0;
        *n -= u32::from(taken);
        Ok(taken)
    }

    fn value(&self) -> io::Result<u32> {
        Ok(*self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use super::*;
    use crate::protocol::Prompts;
    use crate::protocol::{Channel, Incoming, Outcome, PreparedRequest, Usage};
    use crate::wire::layout::{FEATURE_TOKEN_REQUIRED, RESPONSE_LEN, TOKEN_LEN};
    use crate::wire::status::{Finish, StatusCode};
    use crate::wire::text::{DecodeFlags, Policy};

    fn channel(region: MemRegion) -> Channel<NoopSemaphore, MemRegion> {
        Channel::new(NoopSemaphore, NoopSemaphore, NoopSemaphore, region)
    }

    fn take(
        ch: &Channel<NoopSemaphore, MemRegion>,
        token: Option<&[u8; TOKEN_LEN]>,
    ) -> (Incoming, String, String) {
        let (mut system, mut user) = (String::from("stale"), String::from("stale"));
        let mut scratch = [0u8; 4096];
        let incoming = ch.worker_take(token, &mut system, &mut user, &mut scratch);
        (incoming, system, user)
    }

    fn request<'a>(
        system: &'a str,
        user: &'a str,
        seq: u64,
        token: Option<&'a [u8; TOKEN_LEN]>,
    ) -> PreparedRequest<'a> {
        let mut req = PreparedRequest::encode(Prompts { system, user }, Policy::Truncate).unwrap();
        req.seq = seq;
        req.token = token;
        req.client_pid = 4242;
        req
    }

    #[test]
    fn sizes_follow_the_kind() {
        assert_eq!(MemRegion::zeroed(ObjectKind::Seed).len(), SEED_SIZE);
        assert_eq!(MemRegion::zeroed(ObjectKind::Extended).len(), OBJECT_SIZE);
        let long = vec![7u8; OBJECT_SIZE + 10];
        assert_eq!(
            MemRegion::from_bytes(&long, ObjectKind::Seed).into_bytes(),
            vec![7u8; SEED_SIZE]
        );
        let r = MemRegion::from_bytes(&[1, 2, 3], ObjectKind::Extended);
        assert!(!r.is_empty());
        let bytes = r.into_bytes();
        assert_eq!(&bytes[..4], &[1, 2, 3, 0]);
        assert!(bytes[3..].iter().all(|&b| b == 0));
    }

    #[test]
    fn out_of_field_access_is_clamped() {
        let r = MemRegion::from_bytes(&[0x55; OBJECT_SIZE], ObjectKind::Extended);
        let mut dst = [0xEEu8; 4];
        // Past the end of the 1-byte shutdown field: zeros, nothing read from the gap.
        r.read(Field::Shutdown, 0, &mut dst);
        assert_eq!(dst, [0; 4]);
        r.read(Field::UserPrompt, 4094, &mut dst[..2]);
        assert_eq!(dst[..2], [0x55; 2]);
        r.read(Field::UserPrompt, usize::MAX, &mut dst);
        assert_eq!(dst, [0; 4]);
        // Dropped, not partly applied.
        r.write(Field::SystemPrompt, 4094, &[1, 2, 3]);
        r.fill(Field::SystemPrompt, 4000, 97, 9);
        r.fill(Field::SystemPrompt, usize::MAX, 2, 9);
        assert_eq!(r.to_bytes(), vec![0x55; OBJECT_SIZE]);
        r.fill(Field::SystemPrompt, 4000, 96, 9);
        assert!(r.to_bytes()[4000..4096].iter().all(|&b| b == 9));
    }

    #[test]
    fn seed_region_has_no_extension_page() {
        let r = MemRegion::from_bytes(&[0xFF; OBJECT_SIZE], ObjectKind::Seed);
        assert_eq!(r.kind(), ObjectKind::Seed);
        assert_eq!(r.load32(Word32::Version), 0);
        assert_eq!(r.load64(Word64::RequestSeq), 0);
        r.store64(Word64::ResponseSeq, 9);
        assert_eq!(r.load64(Word64::ResponseSeq), 0);
        let mut magic = [1u8; 8];
        r.read(Field::Magic, 0, &mut magic);
        assert_eq!(magic, [0; 8]);
        r.write(Field::AuthToken, 0, &[3; TOKEN_LEN]);
        assert_eq!(r.into_bytes(), vec![0xFF; SEED_SIZE]);
    }

    #[test]
    fn words_are_native_endian_bytes() {
        let r = MemRegion::zeroed(ObjectKind::Extended);
        r.store32(Word32::Status, 0x0102_0304);
        r.store64(Word64::ErrorArg1, 0x0102_0304_0506_0708);
        let bytes = r.to_bytes();
        let off = Word32::Status.offset();
        assert_eq!(bytes[off..off + 4], 0x0102_0304u32.to_ne_bytes());
        let off = Word64::ErrorArg1.offset();
        assert_eq!(bytes[off..off + 8], 0x0102_0304_0506_0708u64.to_ne_bytes());
        assert_eq!(r.load32(Word32::Status), 0x0102_0304);
        assert_eq!(r.load64(Word64::ErrorArg1), 0x0102_0304_0506_0708);
    }

    #[test]
    fn initialised_page_classifies_as_extended() {
        let r = MemRegion::initialised(ObjectKind::Extended, FEATURE_TOKEN_REQUIRED);
        let mut magic = [0u8; 8];
        r.read(Field::Magic, 0, &mut magic);
        let kind = ObjectKind::classify(r.len() as u64, Some(magic), r.load32(Word32::Version));
        assert_eq!(kind, Ok(ObjectKind::Extended));
        assert!(channel(r).token_required());
        let seed = MemRegion::initialised(ObjectKind::Seed, FEATURE_TOKEN_REQUIRED);
        assert_eq!(seed.to_bytes(), vec![0; SEED_SIZE]);
    }

    #[test]
    fn noop_semaphore_never_blocks() {
        assert!(NoopSemaphore.post().is_ok());
        assert!(NoopSemaphore.wait_until(None).unwrap());
        assert!(NoopSemaphore.wait_until(Some(Instant::now())).unwrap());
    }

    #[test]
    fn round_trip_extended() {
        let token = [0x5Au8; TOKEN_LEN];
        let ch = channel(MemRegion::initialised(
            ObjectKind::Extended,
            FEATURE_TOKEN_REQUIRED,
        ));
        // Garbage from an earlier, longer request must not survive behind the NUL.
        ch.region.fill(Field::UserPrompt, 0, 4096, b'x');
        ch.worker_ready().unwrap();
        assert_eq!(ch.region.load64(Word64::RequestSeq), 0);
        ch.client_write(&request("be brief", "héllo", 7, Some(&token)))
            .unwrap();
        assert_eq!(ch.region.load32(Word32::ClientPid), 4242);
        let (incoming, system, user) = take(&ch, Some(&token));
        assert_eq!(
            incoming,
            Incoming::Request {
                seq: 7,
                system: DecodeFlags::default(),
                user: DecodeFlags::default(),
                params: crate::protocol::RequestParams::default(),
                area: None,
            }
        );
        assert_eq!((system.as_str(), user.as_str()), ("be brief", "héllo"));
        // A wrong token is refused.
        let (incoming, _, _) = take(&ch, Some(&[0; TOKEN_LEN]));
        assert!(matches!(
            incoming,
            Incoming::Refused {
                seq: 7,
                status: StatusCode::Unauthorized,
                ..
            }
        ));

        let outcome = Outcome {
            status: StatusCode::Ok,
            text: "bonjour",
            flags: 0,
            error: "",
            error_args: (1, 2),
            usage: Usage {
                prompt_tokens: 3,
                generated_tokens: 4,
                prompt_time: Duration::from_micros(5),
                generation_time: Duration::from_micros(6),
                cached_tokens: 7,
            },
            finish: Finish::Stop,
            dropped_messages: 0,
            result: &[],
        };
        ch.worker_respond(7, &outcome).unwrap();
        let raw = ch
            .client_await(7, None, Duration::from_millis(1), &|| true)
            .unwrap();
        assert_eq!(raw.status, StatusCode::Ok);
        assert_eq!(raw.text, "bonjour");
        assert_eq!(raw.error_args, (1, 2));
        assert_eq!(raw.usage, outcome.usage);
        assert_eq!(raw.finish, Finish::Stop);
        assert!(!raw.decode.any() && !raw.truncated());

        // A stale response (another seq) is skipped; a dead peer ends the wait.
        let calls = Cell::new(0);
        let alive = || {
            calls.set(calls.get() + 1);
            calls.get() < 3
        };
        assert!(ch
            .client_await(8, None, Duration::from_millis(1), &alive)
            .is_err());
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn round_trip_area_request() {
        use crate::protocol::{AreaRequest, Constraint, Message};
        use crate::wire::layout::{KIND_CHAT, KIND_EMBED};
        let ch = channel(MemRegion::with_area(0));
        assert!(ch.area_supported());
        let messages = [
            Message::system("s"),
            Message::user("q".repeat(5000)),
            Message::assistant("a"),
        ];
        let area_req = AreaRequest::chat(&messages, Some(&Constraint::JsonSchema("{}".into())));
        let bytes = area_req.encode(1 << 20).unwrap();
        let send = |seq: u64, kind: u32, area: &[u8]| {
            ch.worker_ready().unwrap();
            let mut req = request("", "", seq, None);
            req.params.kind = kind;
            req.params.sample_seed = 9;
            req.area = area;
            ch.client_write(&req).unwrap();
        };
        send(3, KIND_CHAT, &bytes);
        let (incoming, _, _) = take(&ch, None);
        match incoming {
            Incoming::Request {
                seq: 3,
                params,
                area: Some(a),
                ..
            } => {
                assert_eq!((params.kind, params.sample_seed), (KIND_CHAT, 9));
                assert_eq!(a, area_req);
            }
            other => panic!("{other:?}"),
        }
        // A byte of the area changed after the client wrote it: the checksum says so.
        send(4, KIND_CHAT, &bytes);
        ch.region.write(Field::RequestArea, 20, b"X");
        let (incoming, _, _) = take(&ch, None);
        assert!(
            matches!(incoming, Incoming::Refused { seq: 4, status: StatusCode::BadRequest, ref message, .. } if message.contains("checksum")),
            "{incoming:?}"
        );
        // A length word past the area is refused before anything is read.
        send(5, KIND_CHAT, &bytes);
        ch.region.store32(Word32::AreaUsed, (AREA_LEN + 1) as u32);
        assert!(matches!(
            take(&ch, None).0,
            Incoming::Refused {
                seq: 5,
                status: StatusCode::BadRequest,
                ..
            }
        ));
        // The result comes back through the area, covered by the checksum.
        send(
            6,
            KIND_EMBED,
            &AreaRequest {
                texts: vec!["t".into()],
                ..AreaRequest::default()
            }
            .encode(1 << 20)
            .unwrap(),
        );
        assert!(matches!(
            take(&ch, None).0,
            Incoming::Request {
                seq: 6,
                area: Some(_),
                ..
            }
        ));
        let result = crate::protocol::Embeddings {
            dim: 2,
            values: vec![0.5, -1.0],
        }
        .encode();
        let mut o = Outcome::error(StatusCode::Ok, "");
        o.finish = Finish::Stop;
        o.result = &result;
        ch.worker_respond(6, &o).unwrap();
        let raw = ch
            .client_await(6, None, Duration::from_millis(1), &|| true)
            .unwrap();
        assert!(raw.intact);
        assert_eq!(raw.result, result);
        ch.worker_respond(6, &o).unwrap();
        ch.region.write(Field::RequestArea, 9, &[0x77]);
        assert!(
            !ch.client_await(6, None, Duration::from_millis(1), &|| true)
                .unwrap()
                .intact
        );
    }

    #[test]
    fn an_object_without_the_area_refuses_area_requests() {
        use crate::wire::layout::KIND_COUNT;
        let ch = channel(MemRegion::initialised(ObjectKind::Extended, 0));
        assert!(!ch.area_supported());
        ch.worker_ready().unwrap();
        let mut req = request("", "", 2, None);
        req.params.kind = KIND_COUNT;
        ch.client_write(&req).unwrap();
        let (incoming, _, _) = take(&ch, None);
        assert!(
            matches!(incoming, Incoming::Refused { seq: 2, status: StatusCode::BadRequest, ref message, .. } if message.contains("no request area")),
            "{incoming:?}"
        );
    }

    #[test]
    fn round_trip_seed() {
        let ch = channel(MemRegion::zeroed(ObjectKind::Seed));
        ch.region.fill(Field::SystemPrompt, 0, 4096, 0xFF);
        ch.worker_ready().unwrap();
        // A seed-mode client sends seq 0 and no token; the extension fields are not there.
        ch.client_write(&request("sys", "€uro", 0, None)).unwrap();
        let (incoming, system, user) = take(&ch, None);
        assert_eq!(
            incoming,
            Incoming::Request {
                seq: 0,
                system: DecodeFlags::default(),
                user: DecodeFlags::default(),
                params: crate::protocol::RequestParams::default(),
                area: None,
            }
        );
        assert_eq!((system.as_str(), user.as_str()), ("sys", "€uro"));
        // A worker that requires a token refuses every seed-mode request.
        let (incoming, _, _) = take(&ch, Some(&[0; TOKEN_LEN]));
        assert!(matches!(
            incoming,
            Incoming::Refused {
                status: StatusCode::Unauthorized,
                ..
            }
        ));
        ch.worker_respond(0, &Outcome::error(StatusCode::Ok, "ignored"))
            .unwrap();
        let raw = ch
            .client_await(0, None, Duration::from_millis(1), &|| true)
            .unwrap();
        assert_eq!(raw.text, "");
        assert_eq!(raw.status, StatusCode::Ok);
        assert_eq!(ch.region.len(), SEED_SIZE);

        let long = "a".repeat(RESPONSE_LEN + 10);
        let mut outcome = Outcome::error(StatusCode::Ok, "");
        outcome.text = &long;
        ch.worker_respond(0, &outcome).unwrap();
        let raw = ch
            .client_await(0, None, Duration::from_millis(1), &|| true)
            .unwrap();
        assert_eq!(raw.text.len(), RESPONSE_LEN - 1);
    }

    #[test]
    fn shutdown_byte_round_trip() {
        for kind in [ObjectKind::Seed, ObjectKind::Extended] {
            let ch = channel(MemRegion::initialised(kind, 0));
            ch.client_request_shutdown(None, 3).unwrap();
            assert_eq!(take(&ch, None).0, Incoming::Shutdown);
            ch.region.write(Field::Shutdown, 0, &[2]);
            assert!(matches!(
                take(&ch, None).0,
                Incoming::Refused {
                    status: StatusCode::BadRequest,
                    ..
                }
            ));
            let mut byte = [9u8];
            ch.region.read(Field::Shutdown, 0, &mut byte);
            assert_eq!(byte, [0]);
        }
    }
}
