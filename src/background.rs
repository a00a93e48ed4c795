//! Threads that work beside the calls (the trace store's writer, the span export): they run at
//! a raised nice value, so that on a busy core the calls come first.

/// How much a background thread raises its nice value (Linux). Its work (a store batch, a
/// second's traces sealed, an export batch encoded) comes in bursts of up to a millisecond,
/// which at the process's own nice value share the core evenly with the runtime and stretch
/// the calls in flight; 5 higher, it still gets a fifth to a quarter of a core that calls keep
/// busy, several times what it needs.
pub const BACKGROUND_NICE: i32 = 5;

/// Raises the calling thread's nice value by [`BACKGROUND_NICE`] (a per-thread value on Linux;
/// threads it starts inherit it); a failure only costs latency, so it is logged and the thread
/// goes on. `what`: the thread's work, for the log.
pub fn yield_to_calls(what: &str) {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::nice(BACKGROUND_NICE) {
        tracing::debug!(error = %e, "cannot lower the priority of the {what}");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = what;
}
