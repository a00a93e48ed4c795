// The allocator (see Cargo.toml): many small, short-lived allocations on several threads (the
// proxy's workers, the trace store's writer, sled's) are what jemalloc is built for.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    sidetrace::cli::main()
}
