//! The `jisu` binary: parse the command line, run it, map an error to an exit code.
#![forbid(unsafe_code)]

mod cli;

use clap::Parser;

/// `--features alloc-count` (scripts/allocs): every allocation counted, with where it was
/// made; written to `$JISU_DHAT_OUT` (default `dhat-heap.json`) when the process exits.
#[cfg(feature = "alloc-count")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// mimalloc: the server makes ~45 allocations per call; glibc's malloc and free took
/// ~10 % of a call's instructions, mimalloc's about half as many (BENCHMARKS.md). Built
/// without transparent huge pages (`no_thp`): with them the server's RSS doubled.
#[cfg(not(feature = "alloc-count"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    #[cfg(feature = "alloc-count")]
    let _profiler = dhat::Profiler::builder()
        .file_name(std::env::var("JISU_DHAT_OUT").unwrap_or_else(|_| "dhat-heap.json".into()))
        .build();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
