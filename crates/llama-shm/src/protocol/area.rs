//! What travels in the request area: conversations, a schema or grammar, texts to embed or
//! count (client → worker), and embeddings (worker → client).
//!
//! A request is a sequence of records, `tag: u32 | len: u32 | len bytes` (little-endian, no
//! padding). The worker decodes only its private copy of the area's bytes, never the shared
//! memory itself, and refuses anything out of place: an unknown tag, a length past the end, a
//! text that is not UTF-8 or holds a NUL, a record the request's kind does not take.

use std::fmt;

use crate::wire::layout::{KIND_CHAT, KIND_COUNT, KIND_EMBED};

/// Record tag: a system message.
pub const TAG_SYSTEM: u32 = 1;
/// Record tag: a user message.
pub const TAG_USER: u32 = 2;
/// Record tag: an assistant message (an earlier answer).
pub const TAG_ASSISTANT: u32 = 3;
/// Record tag: a JSON schema the answer must match.
pub const TAG_JSON_SCHEMA: u32 = 16;
/// Record tag: a GBNF grammar the answer must match (root rule `root`).
pub const TAG_GRAMMAR: u32 = 17;
/// Record tag: a text to embed or count.
pub const TAG_TEXT: u32 = 32;

/// Bytes of a record's header.
const HEADER: usize = 8;

/// Who wrote a message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Instructions: who the model is, how to answer.
    System,
    /// The user.
    User,
    /// The model (an earlier answer).
    Assistant,
}

impl Role {
    /// The role's name as chat templates spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    const fn tag(self) -> u32 {
        match self {
            Role::System => TAG_SYSTEM,
            Role::User => TAG_USER,
            Role::Assistant => TAG_ASSISTANT,
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    /// The conversation two prompts stand for: a system message (when `system` is not
    /// empty) and a user message.
    pub fn from_prompts(system: &str, user: &str) -> Vec<Message> {
        let mut out = Vec::with_capacity(2);
        if !system.is_empty() {
            out.push(Message::system(system));
        }
        out.push(Message::user(user));
        out
    }
}

/// What the answer must match; the worker refuses a constraint it cannot compile before it
/// generates anything.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Constraint {
    /// A JSON schema (the text of it): the answer is JSON that the schema accepts.
    JsonSchema(String),
    /// A GBNF grammar whose start rule is `root`.
    Grammar(String),
}

/// A request as the request area carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AreaRequest {
    /// The conversation (chat; or a conversation to count).
    pub messages: Vec<Message>,
    /// What the answer must match (chat only).
    pub constraint: Option<Constraint>,
    /// Texts to embed, or the one text to count.
    pub texts: Vec<String>,
}

/// Why the worker refused a request area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AreaError {
    /// A record's header or payload runs past the bytes the request uses.
    Truncated {
        /// Where the record starts.
        at: usize,
    },
    /// A tag this version does not know.
    UnknownTag {
        /// The tag.
        tag: u32,
        /// Where the record starts.
        at: usize,
    },
    /// A text is not UTF-8, or holds a NUL.
    BadText {
        /// Which record (from 0).
        record: usize,
    },
    /// A record the request's kind does not take, or a kind with what it needs missing.
    Shape(&'static str),
    /// A request kind this version does not know.
    UnknownKind(u32),
    /// The encoded request or result does not fit the area.
    TooLarge {
        /// Bytes it needs.
        len: usize,
        /// Bytes the area holds.
        max: usize,
    },
}

impl fmt::Display for AreaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AreaError::Truncated { at } => {
                write!(f, "request area: the record at byte {at} runs past the end")
            }
            AreaError::UnknownTag { tag, at } => {
                write!(f, "request area: unknown record tag {tag} at byte {at}")
            }
            AreaError::BadText { record } => {
                write!(f, "request area: record {record} is not UTF-8 or holds a NUL")
            }
            AreaError::Shape(what) => write!(f, "request area: {what}"),
            AreaError::UnknownKind(k) => write!(f, "request kind {k} is unknown"),
            AreaError::TooLarge { len, max } => {
                write!(f, "{len} bytes do not fit the request area of {max}")
            }
        }
    }
}

impl std::error::Error for AreaError {}

fn record(out: &mut Vec<u8>, tag: u32, payload: &[u8]) {
    out.extend_from_slice(&tag.to_le_bytes());
    // Lengths over u32 are refused by `encode` before this (the area is far smaller).
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

impl AreaRequest {
    /// A conversation to answer, optionally constrained.
    pub fn chat(messages: &[Message], constraint: Option<&Constraint>) -> Self {
        Self {
            messages: messages.to_vec(),
            constraint: constraint.cloned(),
            texts: Vec::new(),
        }
    }

    /// The records of this request, at most `max` bytes.
    ///
    /// # Errors
    /// [`AreaError::TooLarge`] when they need more; [`AreaError::BadText`] for a text holding
    /// a NUL (what the worker would refuse: caught before anything is sent).
    pub fn encode(&self, max: usize) -> Result<Vec<u8>, AreaError> {
        let len = self.encoded_len();
        if len > max {
            return Err(AreaError::TooLarge { len, max });
        }
        let constraint = self.constraint.iter().map(|c| match c {
            Constraint::JsonSchema(s) | Constraint::Grammar(s) => s.as_str(),
        });
        let texts = self
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .chain(constraint)
            .chain(self.texts.iter().map(String::as_str));
        if let Some(record) = texts.enumerate().find_map(|(i, t)| t.contains('\0').then_some(i)) {
            return Err(AreaError::BadText { record });
        }
        let mut out = Vec::with_capacity(len);
        for m in &self.messages {
            record(&mut out, m.role.tag(), m.content.as_bytes());
        }
        match &self.constraint {
            Some(Constraint::JsonSchema(s)) => record(&mut out, TAG_JSON_SCHEMA, s.as_bytes()),
            Some(Constraint::Grammar(g)) => record(&mut out, TAG_GRAMMAR, g.as_bytes()),
            None => {}
        }
        for t in &self.texts {
            record(&mut out, TAG_TEXT, t.as_bytes());
        }
        Ok(out)
    }

    /// Bytes [`AreaRequest::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        let texts = self
            .messages
            .iter()
            .map(|m| m.content.len())
            .chain(self.texts.iter().map(String::len));
        let constraint = match &self.constraint {
            Some(Constraint::JsonSchema(s) | Constraint::Grammar(s)) => HEADER + s.len(),
            None => 0,
        };
        texts.map(|n| HEADER + n).sum::<usize>() + constraint
    }

    /// Decodes the records in `bytes` (the worker's private copy) for a request of `kind`,
    /// checking that the kind gets what it needs and nothing else.
    ///
    /// # Errors
    /// [`AreaError`] for anything malformed or out of place.
    pub fn decode(kind: u32, bytes: &[u8]) -> Result<Self, AreaError> {
        let mut req = AreaRequest::default();
        let mut at = 0;
        let mut index = 0;
        while at < bytes.len() {
            let header = bytes.get(at..at + HEADER).ok_or(AreaError::Truncated { at })?;
            let tag = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
            let len = u32::from_le_bytes(header[4..].try_into().expect("4 bytes")) as usize;
            let start = at + HEADER;
            let payload = start
                .checked_add(len)
                .and_then(|end| bytes.get(start..end))
                .ok_or(AreaError::Truncated { at })?;
            let text = std::str::from_utf8(payload)
                .ok()
                .filter(|t| !t.contains('\0'))
                .ok_or(AreaError::BadText { record: index })?
                .to_owned();
            // One order only, the one `encode` writes: messages, the constraint, texts.
            let messages_done = req.constraint.is_some() || !req.texts.is_empty();
            if matches!(tag, TAG_SYSTEM | TAG_USER | TAG_ASSISTANT) && messages_done
                || matches!(tag, TAG_JSON_SCHEMA | TAG_GRAMMAR) && !req.texts.is_empty()
            {
                return Err(AreaError::Shape(
                    "records out of order: messages, then a constraint, then texts",
                ));
            }
            match tag {
                TAG_SYSTEM => req.messages.push(Message::system(text)),
                TAG_USER => req.messages.push(Message::user(text)),
                TAG_ASSISTANT => req.messages.push(Message::assistant(text)),
                TAG_JSON_SCHEMA | TAG_GRAMMAR if req.constraint.is_some() => {
                    return Err(AreaError::Shape("more than one schema or grammar"))
                }
                TAG_JSON_SCHEMA => req.constraint = Some(Constraint::JsonSchema(text)),
                TAG_GRAMMAR => req.constraint = Some(Constraint::Grammar(text)),
                TAG_TEXT => req.texts.push(text),
                tag => return Err(AreaError::UnknownTag { tag, at }),
            }
            at = start + len;
            index += 1;
        }
        req.check(kind)?;
        Ok(req)
    }

    fn check(&self, kind: u32) -> Result<(), AreaError> {
        let (messages, texts, constrained) = (
            !self.messages.is_empty(),
            self.texts.len(),
            self.constraint.is_some(),
        );
        match kind {
            KIND_CHAT if !messages => Err(AreaError::Shape("a conversation needs at least one message")),
            KIND_CHAT if texts > 0 => Err(AreaError::Shape("a conversation takes no text records")),
            KIND_CHAT => Ok(()),
            KIND_EMBED if messages || constrained => {
                Err(AreaError::Shape("an embedding request takes only text records"))
            }
            KIND_EMBED if texts == 0 => Err(AreaError::Shape("an embedding request needs at least one text")),
            KIND_EMBED => Ok(()),
            KIND_COUNT if constrained => Err(AreaError::Shape("a count takes no schema or grammar")),
            KIND_COUNT if messages == (texts > 0) || texts > 1 => {
                Err(AreaError::Shape("a count takes one text or one conversation"))
            }
            KIND_COUNT => Ok(()),
            other => Err(AreaError::UnknownKind(other)),
        }
    }
}

/// Embeddings as the area carries them back: `count: u32 | dim: u32 | count × dim f32`
/// (little-endian).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embeddings {
    /// Numbers per vector.
    pub dim: usize,
    /// `count × dim` numbers, vector after vector.
    pub values: Vec<f32>,
}

impl Embeddings {
    /// How many vectors there are.
    pub fn count(&self) -> usize {
        self.values.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Vector `i`.
    pub fn vector(&self, i: usize) -> Option<&[f32]> {
        let start = i.checked_mul(self.dim)?;
        self.values.get(start..start.checked_add(self.dim)?)
    }

    /// Bytes the result of `count` vectors of `dim` numbers takes.
    pub const fn encoded_len(count: usize, dim: usize) -> usize {
        HEADER + 4 * count * dim
    }

    /// The result's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::encoded_len(self.count(), self.dim));
        out.extend_from_slice(&(self.count() as u32).to_le_bytes());
        out.extend_from_slice(&(self.dim as u32).to_le_bytes());
        for v in &self.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Decodes a result (the client's private copy).
    ///
    /// # Errors
    /// [`AreaError::Shape`] when the header and the length disagree.
    pub fn decode(bytes: &[u8]) -> Result<Self, AreaError> {
        let header = bytes
            .get(..HEADER)
            .ok_or(AreaError::Shape("embeddings: no header"))?;
        let count = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let dim = u32::from_le_bytes(header[4..].try_into().expect("4 bytes")) as usize;
        let body = &bytes[HEADER..];
        if count == 0 || dim == 0 || count.checked_mul(dim).and_then(|n| n.checked_mul(4)) != Some(body.len())
        {
            return Err(AreaError::Shape(
                "embeddings: the header disagrees with the length",
            ));
        }
        let values = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok(Self { dim, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn role() -> impl Strategy<Value = Role> {
        prop_oneof![Just(Role::System), Just(Role::User), Just(Role::Assistant)]
    }

    proptest! {
        #[test]
        fn conversations_round_trip(
            msgs in proptest::collection::vec((role(), "[^\u{0}]{0,40}"), 1..8),
            schema in proptest::option::of("[^\u{0}]{0,40}"),
        ) {
            let messages: Vec<Message> = msgs.into_iter().map(|(r, c)| Message::new(r, c)).collect();
            let req = AreaRequest::chat(&messages, schema.map(Constraint::JsonSchema).as_ref());
            let bytes = req.encode(usize::MAX).unwrap();
            prop_assert_eq!(bytes.len(), req.encoded_len());
            prop_assert_eq!(AreaRequest::decode(KIND_CHAT, &bytes).unwrap(), req);
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(kind in 0u32..5, bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = AreaRequest::decode(kind, &bytes);
            let _ = Embeddings::decode(&bytes);
        }
    }

    #[test]
    fn malformed_records_are_refused_with_where() {
        let mut bytes = AreaRequest::chat(&[Message::user("hi")], None)
            .encode(1 << 20)
            .unwrap();
        assert_eq!(
            AreaRequest::decode(KIND_CHAT, &bytes[..bytes.len() - 1]),
            Err(AreaError::Truncated { at: 0 })
        );
        bytes[0] = 9;
        assert_eq!(
            AreaRequest::decode(KIND_CHAT, &bytes),
            Err(AreaError::UnknownTag { tag: 9, at: 0 })
        );
        let mut nul = Vec::new();
        record(&mut nul, TAG_USER, b"a\0b");
        assert_eq!(
            AreaRequest::decode(KIND_CHAT, &nul),
            Err(AreaError::BadText { record: 0 })
        );
        let mut bad = Vec::new();
        record(&mut bad, TAG_USER, b"ok");
        record(&mut bad, TAG_USER, &[0xff, 0xfe]);
        assert_eq!(
            AreaRequest::decode(KIND_CHAT, &bad),
            Err(AreaError::BadText { record: 1 })
        );
        let mut huge = Vec::new();
        huge.extend_from_slice(&TAG_USER.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            AreaRequest::decode(KIND_CHAT, &huge),
            Err(AreaError::Truncated { at: 0 })
        );
    }

    #[test]
    fn each_kind_takes_only_its_records() {
        let chat = AreaRequest::chat(
            &[Message::user("q")],
            Some(&Constraint::Grammar("root ::= \"a\"".into())),
        );
        let bytes = chat.encode(1 << 20).unwrap();
        assert!(AreaRequest::decode(KIND_CHAT, &bytes).is_ok());
        assert!(matches!(
            AreaRequest::decode(KIND_EMBED, &bytes),
            Err(AreaError::Shape(_))
        ));
        assert!(matches!(
            AreaRequest::decode(KIND_COUNT, &bytes),
            Err(AreaError::Shape(_))
        ));
        assert_eq!(AreaRequest::decode(7, &bytes), Err(AreaError::UnknownKind(7)));
        assert!(matches!(
            AreaRequest::decode(KIND_CHAT, &[]),
            Err(AreaError::Shape(_))
        ));
        let two = AreaRequest {
            texts: vec!["a".into(), "b".into()],
            ..AreaRequest::default()
        };
        let bytes = two.encode(1 << 20).unwrap();
        assert_eq!(AreaRequest::decode(KIND_EMBED, &bytes).unwrap(), two);
        assert!(matches!(
            AreaRequest::decode(KIND_COUNT, &bytes),
            Err(AreaError::Shape(_))
        ));
        let mut late = Vec::new();
        record(&mut late, TAG_GRAMMAR, b"g");
        record(&mut late, TAG_USER, b"q");
        assert!(matches!(
            AreaRequest::decode(KIND_CHAT, &late),
            Err(AreaError::Shape(_))
        ));
        let mut twice = Vec::new();
        record(&mut twice, TAG_USER, b"q");
        record(&mut twice, TAG_GRAMMAR, b"g");
        record(&mut twice, TAG_JSON_SCHEMA, b"{}");
        assert!(matches!(
            AreaRequest::decode(KIND_CHAT, &twice),
            Err(AreaError::Shape(_))
        ));
    }

    #[test]
    fn a_text_with_a_nul_is_refused_before_it_is_written() {
        let req = AreaRequest::chat(&[Message::user("ok"), Message::assistant("a\0b")], None);
        assert_eq!(req.encode(1 << 20), Err(AreaError::BadText { record: 1 }));
        let schema = AreaRequest::chat(&[Message::user("ok")], Some(&Constraint::Grammar("\0".into())));
        assert_eq!(schema.encode(1 << 20), Err(AreaError::BadText { record: 1 }));
    }

    #[test]
    fn a_request_over_the_area_is_refused_before_it_is_written() {
        let big = AreaRequest::chat(&[Message::user("x".repeat(100))], None);
        assert_eq!(big.encode(50), Err(AreaError::TooLarge { len: 108, max: 50 }));
    }

    #[test]
    fn embeddings_round_trip_and_bad_lengths_are_refused() {
        let e = Embeddings {
            dim: 3,
            values: vec![1.0, -2.5, 0.0, 3.0, 4.0, 5.0],
        };
        let bytes = e.encode();
        assert_eq!(bytes.len(), Embeddings::encoded_len(2, 3));
        assert_eq!(Embeddings::decode(&bytes).unwrap(), e);
        assert_eq!(e.vector(1), Some(&[3.0, 4.0, 5.0][..]));
        assert!(Embeddings::decode(&bytes[..bytes.len() - 4]).is_err());
        let mut lying = bytes.clone();
        lying[0] = 200;
        assert!(Embeddings::decode(&lying).is_err());
    }
}
