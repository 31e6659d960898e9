//! Embeddings (ABI 5): [`lshm_embed`] turns n texts into n vectors, handed to C as one
//! `malloc`ed array of `count × dim` floats, vector after vector, that
//! [`lshm_embeddings_free`] (or `free`) releases.

use std::ffi::c_char;

use crate::boundary::*;
use crate::conversation::with_client;
use crate::handles::*;
use crate::status::*;

/// Vectors of [`lshm_embed`] (`lshm_embeddings` in C). `values` is the caller's once the call
/// returns: release it with [`lshm_embeddings_free`] (or `free`).
#[repr(C)]
#[derive(Debug)]
pub struct LshmEmbeddings {
    /// `count × dim` floats (`malloc`ed), vector `i` at `values + i * dim`; NULL when there
    /// are none (no texts, or a failed call).
    pub values: *mut f32,
    /// How many vectors: the number of texts.
    pub count: usize,
    /// Numbers per vector.
    pub dim: usize,
}

impl LshmEmbeddings {
    const EMPTY: LshmEmbeddings = LshmEmbeddings {
        values: std::ptr::null_mut(),
        count: 0,
        dim: 0,
    };
}

/// `values` copied into a new `malloc`ed array (NULL for none); `None` when `malloc` fails.
fn malloc_floats(values: &[f32]) -> Option<*mut f32> {
    if values.is_empty() {
        return Some(std::ptr::null_mut());
    }
    let size = std::mem::size_of_val(values);
    // SAFETY: malloc has no preconditions; the result is checked for NULL before use.
    let p = unsafe { libc::malloc(size) }.cast::<f32>();
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` points at `size` bytes just allocated (malloc's alignment suits f32), room
    // for `values.len()` floats, and cannot overlap `values`.
    unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), p, values.len()) };
    Some(p)
}

/// One vector per text of the `n_texts` NUL-terminated strings at `texts`, from the worker's
/// embedding model, pooled and L2-normalised, in `*out_embeddings` (its `values` the caller's
/// to free with [`lshm_embeddings_free`]; all zero after a failure). As many requests go out
/// as the vectors need. No texts (`n_texts` 0; `texts` may then be NULL) give no vectors and
/// send nothing.
///
/// # Errors
/// [`LSHM_E_INVALID_ARGUMENT`] (NULL `client` or `out_embeddings`, NULL `texts` with
/// `n_texts > 0`, a NULL text), [`LSHM_E_INVALID_UTF8`], [`LSHM_E_UNSUPPORTED`] (an engine
/// without embeddings, a worker without a request area), [`LSHM_E_REQUEST_TOO_LARGE`] (one
/// text larger than the request area), [`LSHM_E_CORRUPT`] (a result that does not decode),
/// [`LSHM_E_NO_MEMORY`], and the request failures of [`lshm_request`](crate::lshm_request).
///
/// # Safety
/// `client` is NULL or a live handle not being shut down or freed by another thread; `texts`
/// is NULL or points at `n_texts` pointers, each NULL or a NUL-terminated string;
/// `out_embeddings` and `out_error` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lshm_embed(
    client: *mut LshmClient,
    texts: *const *const c_char,
    n_texts: usize,
    out_embeddings: *mut LshmEmbeddings,
    out_error: *mut *mut c_char,
) -> Status {
    let body = || {
        if out_embeddings.is_null() {
            return Err(Failure::null("out_embeddings"));
        }
        // SAFETY: not NULL, writable per the contract; cleared for the failure paths.
        unsafe { put(out_embeddings, LshmEmbeddings::EMPTY) };
        if client.is_null() {
            return Err(Failure::null("client"));
        }
        if texts.is_null() && n_texts > 0 {
            return Err(Failure::null("texts (with n_texts > 0)"));
        }
        let mut all = Vec::with_capacity(n_texts.min(4096));
        for i in 0..n_texts {
            // SAFETY: `texts` is not NULL here (n_texts > 0) and holds `n_texts` pointers;
            // unaligned, as the caller's array may be anywhere.
            let p = unsafe { texts.add(i).read_unaligned() };
            // SAFETY: each is NULL or NUL-terminated and lives through the call (the contract).
            all.push(unsafe { input_str(p, &format!("texts[{i}]")) }?);
        }
        if all.is_empty() {
            return Ok(());
        }
        // SAFETY: `client` is live and not shared with a shutdown (the contract).
        let e = unsafe { with_client(client, |c| c.embed(&all)) }?;
        if e.count() != all.len() || e.values.len() != e.count() * e.dim {
            return Err(Failure::new(
                LSHM_E_CORRUPT,
                format!(
                    "the worker returned {} vectors of {} numbers for {} texts",
                    e.count(),
                    e.dim,
                    all.len()
                ),
            ));
        }
        let values = malloc_floats(&e.values)
            .ok_or_else(|| Failure::new(LSHM_E_NO_MEMORY, "out of memory copying the embeddings"))?;
        let filled = LshmEmbeddings {
            values,
            count: e.count(),
            dim: e.dim,
        };
        // SAFETY: not NULL (checked above), writable per the contract.
        unsafe { put(out_embeddings, filled) };
        Ok(())
    };
    // SAFETY: `out_error` is NULL or writable (this function's contract).
    unsafe { run(out_error, || no_sigpipe(body)) }
}

/// Frees `embeddings->values` and resets `*embeddings` to zeros. NULL is a no-op.
///
/// # Safety
/// `embeddings` is NULL or points at an `lshm_embeddings` filled by [`lshm_embed`] (or
/// zeroed), whose `values` was not freed yet.
#[no_mangle]
pub unsafe extern "C" fn lshm_embeddings_free(embeddings: *mut LshmEmbeddings) {
    if embeddings.is_null() {
        return;
    }
    // SAFETY: not NULL, and ours per the contract: `values` is NULL or from `malloc` (in
    // `malloc_floats`) not yet freed; `free(NULL)` is a no-op.
    unsafe {
        libc::free((*embeddings).values.cast());
        embeddings.write(LshmEmbeddings::EMPTY);
    }
}
