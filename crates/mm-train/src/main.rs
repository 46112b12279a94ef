fn main() -> std::process::ExitCode {
    // Output piped into a reader that stops early (`mm-train zero-shot ... | head`) ends the
    // process quietly, as it does any Unix tool, instead of a panic in `println!` (Rust
    // ignores SIGPIPE by default, turning a closed pipe into a write error).
    // SAFETY: restoring a signal's default disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    mm_train::allocator::keep_freed_memory();
    match mm_train::cli::run(mm_train::cli::Cli::parse_with_kernels()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line naming what went wrong, never a panic backtrace.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
