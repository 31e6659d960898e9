//! The wire: the object's layout and the rules for putting text into its fixed fields.
//!
//! Nothing here touches the OS; `wire` is what the fuzzers and the loom models share with
//! the code that ships.

pub mod layout;
pub mod status;
pub mod text;
