//! The `sipedge` binary: everything but the allocator is in the library
//! ([`sipedge::cli`]).
#![forbid(unsafe_code)]

/// mimalloc instead of glibc's malloc, as Kamailio is best run with TLSF
/// (`-x tlsf`): per-call state is many small, short-lived allocations.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sipedge::cli::main()
}
