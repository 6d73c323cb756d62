//! The `wal-archiver` binary: the CLI in `cli/` over the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
