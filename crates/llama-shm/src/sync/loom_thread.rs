//! `std::thread::scope` on loom threads: every thread spawned in the scope is joined
//! before `scope` returns.
use std::cell::RefCell;
use std::marker::PhantomData;

/// See `std::thread::Scope`.
pub(crate) struct Scope<'scope, 'env: 'scope> {
    handles: RefCell<Vec<loom::thread::JoinHandle<()>>>,
    scope: PhantomData<&'scope mut &'scope ()>,
    env: PhantomData<&'env mut &'env ()>,
}

/// See `std::thread::scope`.
pub(crate) fn scope<'env, F, T>(f: F) -> T
where
    F: for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> T,
{
    let scope = Scope {
        handles: RefCell::new(Vec::new()),
        scope: PhantomData,
        env: PhantomData,
    };
    let result = f(&scope);
    for handle in scope.handles.take() {
        if let Err(panic) = handle.join() {
            std::panic::resume_unwind(panic);
        }
    }
    result
}

/// Spawns the loom thread `name` running `f` in `scope` (joined when the scope ends).
pub(crate) fn spawn_named<'scope, F>(
    scope: &'scope Scope<'scope, '_>,
    name: String,
    f: F,
) -> std::io::Result<()>
where
    F: FnOnce() + Send + 'scope,
{
    let f: Box<dyn FnOnce() + Send + 'scope> = Box::new(f);
    // SAFETY: loom threads must be 'static; this one borrows only what outlives 'scope,
    // and `scope` joins it before 'scope ends, so it never runs past what it borrows. If
    // the model panics first (a failed model), loom abandons the execution while the
    // panic unwinds: its threads (coroutines of the model's one OS thread) are dropped
    // without being resumed or unwound, so none runs again. (This is the crate's only
    // `unsafe` outside `os/`, and it exists only under `--cfg loom`.)
    let f: Box<dyn FnOnce() + Send + 'static> = unsafe {
        std::mem::transmute::<Box<dyn FnOnce() + Send + 'scope>, Box<dyn FnOnce() + Send + 'static>>(f)
    };
    let handle = loom::thread::Builder::new().name(name).spawn(f)?;
    scope.handles.borrow_mut().push(handle);
    Ok(())
}
