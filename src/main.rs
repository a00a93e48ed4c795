/// mimalloc: the request path allocates per call, and glibc's malloc showed arena lock
/// contention and a heap that grew under load (load-tests/README.md has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sidetrace::cli::main()
}
