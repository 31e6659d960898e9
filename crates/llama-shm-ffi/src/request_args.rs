//! What a request's C arguments become: messages ([`LshmMessage`]), the per-request options
//! ([`LshmRequestOptions`], size-checked), the two prompts, and the optional
//! [`LshmResponseExtras`] a conversation's answer fills. Read once, checked, turned into the
//! Rust client's types.

use std::ffi::c_char;
use std::time::Duration;

use llama_shm::{Constraint, Message, Prompts, RequestOptions, Response, Role};

use crate::boundary::*;
use crate::status::*;

/// [`LshmMessage::role`]: instructions (who the model is, how to answer).
pub const LSHM_ROLE_SYSTEM: u32 = 0;
/// [`LshmMessage::role`]: the user.
pub const LSHM_ROLE_USER: u32 = 1;
/// [`LshmMessage::role`]: the model (an earlier answer).
pub const LSHM_ROLE_ASSISTANT: u32 = 2;

/// One message of a conversation (`lshm_message` in C): who wrote it and what it says.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LshmMessage {
    /// An `LSHM_ROLE_*` value.
    pub role: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// `content_len` bytes of UTF-8 (no terminating NUL needed); may be NULL when
    /// `content_len` is 0.
    pub content: *const c_char,
    /// Length of `content` in bytes.
    pub content_len: usize,
}

/// What a request asks beyond its prompts (`lshm_request_options` in C). Start from
/// [`lshm_request_options_default`] and change what you need; a zero field or a NULL string
/// means none.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LshmRequestOptions {
    /// `sizeof(lshm_request_options)` as the caller was compiled: another size (another ABI)
    /// is `LSHM_E_INVALID_ARGUMENT`.
    pub struct_size: u32,
    /// Most tokens to generate; 0 = the worker's own limit.
    pub max_tokens: u32,
    /// Generation budget in ms, counted by the worker; 0 = none.
    pub deadline_ms: u64,
    /// Sampling seed of this request; 0 = none (the worker's own sampler goes on).
    pub seed: u32,
    /// 1: a conversation over the context loses its oldest messages instead of failing with
    /// `LSHM_E_PROMPT_TOO_LONG`; 0: it fails.
    pub drop_oldest: u32,
    /// A JSON schema (NUL-terminated UTF-8) the answer must match; NULL = none.
    pub json_schema: *const c_char,
    /// A GBNF grammar (root rule `root`, NUL-terminated UTF-8) the answer must match; NULL =
    /// none. At most one of `json_schema` and `grammar`.
    pub grammar: *const c_char,
}

/// What a request reports beyond `lshm_response` (`lshm_response_extras` in C). The caller
/// sets `struct_size`; the library fills the rest (zeros after a failed call).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LshmResponseExtras {
    /// `sizeof(lshm_response_extras)` as the caller was compiled, set by the caller: another
    /// size is `LSHM_E_INVALID_ARGUMENT` (and nothing is sent).
    pub struct_size: u32,
    /// Messages dropped from the front of the conversation to fit the context (with
    /// `drop_oldest`).
    pub dropped_messages: u32,
}

/// What a request carries, read from C's arguments.
pub(crate) enum Body<'a> {
    /// Two prompts (the seed's fields).
    Prompts(Prompts<'a>),
    /// A conversation (the request area).
    Chat(Vec<Message>),
}

/// The two prompts of [`lshm_request`](crate::lshm_request) and its kin.
///
/// # Safety
/// `user` and `system` are NULL or NUL-terminated strings that stay valid for `'a`.
pub(crate) unsafe fn read_prompts<'a>(
    user: *const c_char,
    system: *const c_char,
) -> Result<Body<'a>, Failure> {
    // SAFETY: per this function's contract.
    let (user, system) = unsafe { (input_str(user, "user")?, input_str(system, "system")?) };
    Ok(Body::Prompts(Prompts { system, user }))
}

/// The conversation of `n` messages at `messages`, copied out and checked.
///
/// # Safety
/// `messages` is NULL or points at `n` readable `lshm_message`s, each of whose `content` is
/// NULL or points at `content_len` readable bytes.
pub(crate) unsafe fn read_messages(messages: *const LshmMessage, n: usize) -> Result<Vec<Message>, Failure> {
    if messages.is_null() {
        return if n == 0 {
            Ok(Vec::new())
        } else {
            Err(Failure::null("messages (with n_messages > 0)"))
        };
    }
    let mut out = Vec::with_capacity(n.min(4096));
    for i in 0..n {
        // SAFETY: `messages` holds `n` structs (the contract); unaligned, as the caller's
        // array may be anywhere.
        let m = unsafe { messages.add(i).read_unaligned() };
        let role = match m.role {
            LSHM_ROLE_SYSTEM => Role::System,
            LSHM_ROLE_USER => Role::User,
            LSHM_ROLE_ASSISTANT => Role::Assistant,
            other => {
                return Err(Failure::new(
                    LSHM_E_INVALID_ARGUMENT,
                    format!("messages[{i}].role {other} is not an LSHM_ROLE_* value"),
                ))
            }
        };
        if m.reserved != 0 {
            return Err(Failure::new(
                LSHM_E_INVALID_ARGUMENT,
                format!("messages[{i}].reserved must be 0"),
            ));
        }
        let bytes: &[u8] = if m.content_len == 0 {
            &[]
        } else if m.content.is_null() {
            return Err(Failure::null(&format!(
                "messages[{i}].content (with content_len {})",
                m.content_len
            )));
        } else {
            // SAFETY: not NULL, and `content_len` readable bytes that outlive this call (the
            // contract); copied out below.
            unsafe { std::slice::from_raw_parts(m.content.cast::<u8>(), m.content_len) }
        };
        let content = std::str::from_utf8(bytes).map_err(|e| {
            Failure::new(
                LSHM_E_INVALID_UTF8,
                format!("messages[{i}].content is not valid UTF-8: {e}"),
            )
        })?;
        out.push(Message::new(role, content));
    }
    Ok(out)
}

/// The defaults: `struct_size` set, every other field 0 or NULL (no budget, no deadline, no
/// seed, no constraint, a conversation that does not fit fails).
#[no_mangle]
pub extern "C" fn lshm_request_options_default() -> LshmRequestOptions {
    LshmRequestOptions {
        struct_size: std::mem::size_of::<LshmRequestOptions>() as u32,
        max_tokens: 0,
        deadline_ms: 0,
        seed: 0,
        drop_oldest: 0,
        json_schema: std::ptr::null(),
        grammar: std::ptr::null(),
    }
}

/// The library's options for C's (NULL: the defaults). Their `struct_size` is read alone
/// first, so a struct of another ABI is refused before the rest is read.
///
/// # Safety
/// `options` is NULL or points at a readable `lshm_request_options` of the caller's ABI (at
/// least its first field readable), whose strings are NULL or NUL-terminated.
pub(crate) unsafe fn read_request_options(
    options: *const LshmRequestOptions,
) -> Result<RequestOptions, Failure> {
    if options.is_null() {
        return Ok(RequestOptions::default());
    }
    // SAFETY: not NULL, and its first field is readable per the contract (`addr_of!` makes
    // no reference to the whole struct; unaligned: the caller's allocation may be anywhere).
    let size = unsafe { std::ptr::addr_of!((*options).struct_size).read_unaligned() };
    let ours = std::mem::size_of::<LshmRequestOptions>();
    if size as usize != ours {
        return Err(Failure::new(
            LSHM_E_INVALID_ARGUMENT,
            format!(
                "options.struct_size is {size}, this library's lshm_request_options has {ours} bytes (ABI {LSHM_ABI_VERSION})"
            ),
        ));
    }
    // SAFETY: the caller's struct has this library's size, so all of it is readable; plain
    // data, copied out whole.
    let o = unsafe { options.read_unaligned() };
    let drop_oldest = match o.drop_oldest {
        0 => false,
        1 => true,
        other => {
            return Err(Failure::new(
                LSHM_E_INVALID_ARGUMENT,
                format!("options.drop_oldest is {other}, not 0 or 1"),
            ))
        }
    };
    let text = |p: *const c_char, what: &str| -> Result<Option<String>, Failure> {
        // SAFETY: not NULL where `then` calls it, so NUL-terminated per the contract; copied
        // out at once.
        (!p.is_null())
            .then(|| unsafe { input_str(p, what) }.map(str::to_owned))
            .transpose()
    };
    let constraint = match (
        text(o.json_schema, "options.json_schema")?,
        text(o.grammar, "options.grammar")?,
    ) {
        (None, None) => None,
        (Some(schema), None) => Some(Constraint::JsonSchema(schema)),
        (None, Some(grammar)) => Some(Constraint::Grammar(grammar)),
        (Some(_), Some(_)) => {
            return Err(Failure::new(
                LSHM_E_INVALID_ARGUMENT,
                "options.json_schema and options.grammar are both set: give at most one",
            ))
        }
    };
    Ok(RequestOptions {
        deadline: (o.deadline_ms > 0).then(|| Duration::from_millis(o.deadline_ms)),
        max_tokens: (o.max_tokens > 0).then_some(o.max_tokens),
        constraint,
        seed: (o.seed > 0).then_some(o.seed),
        drop_oldest,
    })
}

/// Checks the caller's extras (NULL: not wanted) and zeroes what the library fills.
///
/// # Safety
/// `extras` is NULL or points at a writable `lshm_response_extras` of the caller's ABI (at
/// least its first field).
pub(crate) unsafe fn clear_extras(extras: *mut LshmResponseExtras) -> Result<(), Failure> {
    if extras.is_null() {
        return Ok(());
    }
    // SAFETY: not NULL, its first field readable per the contract (no reference to the whole).
    let size = unsafe { std::ptr::addr_of!((*extras).struct_size).read_unaligned() };
    let ours = std::mem::size_of::<LshmResponseExtras>();
    if size as usize != ours {
        return Err(Failure::new(
            LSHM_E_INVALID_ARGUMENT,
            format!(
                "out_extras->struct_size is {size}, this library's lshm_response_extras has {ours} bytes (ABI {LSHM_ABI_VERSION})"
            ),
        ));
    }
    // SAFETY: the caller's struct has this library's size, so all of it is writable.
    unsafe { extras.write_unaligned(extras_of(None)) };
    Ok(())
}

pub(crate) fn extras_of(r: Option<&Response>) -> LshmResponseExtras {
    LshmResponseExtras {
        struct_size: std::mem::size_of::<LshmResponseExtras>() as u32,
        dropped_messages: r.map_or(0, |r| r.dropped_messages),
    }
}
