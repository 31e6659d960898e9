//! The loom façade: the crate's shared-state types come from here, from `std` normally and
//! from `loom` under `--cfg loom`, so the verification models run the shipped code on loom's
//! checked primitives.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::Arc;

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;
