//! The wire: what the seed fixed and every peer must agree on — the objects' names, the
//! region's layout, the rules for putting text into its fixed fields, and the status codes.
//!
//! Nothing here touches the OS or imports from the layers above; `wire` is what the fuzzers
//! and the loom models share with the code that ships.

mod field;
mod kind;
pub mod layout;
pub mod names;
pub mod seed_stream;
pub mod status;
pub mod text;
