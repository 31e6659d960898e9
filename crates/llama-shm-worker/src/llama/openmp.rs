//! libgomp's spin, shortened for a busy machine by executing the program again.

/// Executes the current program again with `GOMP_SPINCOUNT=1000` unless the user set
/// `GOMP_SPINCOUNT` or `OMP_WAIT_POLICY`; returns only when it does not (or the exec failed).
///
/// libgomp's threads spin at every barrier (GOMP_SPINCOUNT, 300,000 by default) before they
/// sleep. ggml meets at a barrier many times per token, so when another busy process shares
/// the cores, a waiting thread burns the CPU its descheduled partner needs: on a 2-core machine
/// one CPU hog made 64 tokens take 28 s instead of 0.8 s; with a spin count of 1000 the same
/// run took 2.3 s, and unloaded generation was unchanged (`llama-shm-worker --test`, measured
/// alternately). libgomp reads the variable when it is loaded, before `main`, hence the exec:
/// call this first thing in `main`, before any thread or state exists (the pid, the open
/// descriptors without close-on-exec, such as a control socket on stdin, and the arguments
/// are kept).
pub fn reexec_with_short_openmp_spin() {
    use std::os::unix::process::CommandExt;
    if ["GOMP_SPINCOUNT", "OMP_WAIT_POLICY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    {
        return;
    }
    let mut argv = std::env::args_os();
    let arg0 = argv.next().unwrap_or_default();
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(argv)
        .env("GOMP_SPINCOUNT", "1000")
        .exec();
    tracing::warn!("could not execute again with GOMP_SPINCOUNT set: {err}");
}
