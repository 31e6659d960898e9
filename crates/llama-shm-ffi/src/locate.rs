//! Finding the worker binary: the core crate's rule, with this library's own directory first.

use std::path::PathBuf;

/// The default worker: `$LLAMA_SHM_WORKER`, else `llama-shm-worker` next to this library
/// (`target/release` holds both), else next to the executable.
pub(crate) fn default_worker() -> Option<PathBuf> {
    let lib = library_dir();
    llama_shm::internals::os::locate::worker_binary(&lib.iter().map(PathBuf::as_path).collect::<Vec<_>>())
}

/// The directory of the file this code was loaded from (the `.so`, or the executable it is
/// linked into), from the mapping of one of its functions in `/proc/self/maps`.
pub(crate) fn library_dir() -> Option<PathBuf> {
    let addr = crate::lshm_version as *const () as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (lo, hi) = fields.next()?.split_once('-')?;
        let (lo, hi) = (
            usize::from_str_radix(lo, 16).ok()?,
            usize::from_str_radix(hi, 16).ok()?,
        );
        let path = fields.nth(4)?;
        ((lo..hi).contains(&addr) && path.starts_with('/'))
            .then(|| PathBuf::from(path).parent().map(PathBuf::from))
            .flatten()
    })
}
