use clap::Parser;

fn main() -> std::process::ExitCode {
    mm_train::allocator::keep_freed_memory();
    match mm_train::cli::run(mm_train::cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line naming what went wrong, never a panic backtrace.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
