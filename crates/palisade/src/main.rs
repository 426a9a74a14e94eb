//! The `palisade` binary: parses the command line and hands over to the wiring in `app`.

mod app;
mod audit;
mod audit_ship;
mod audit_sink;
mod cli;
mod client;
mod guardcli;
mod import;
mod limits;
mod masterkey;
mod model;
mod otlp;
mod redirect;
mod shared;
mod telemetry;
mod tls;

use clap::Parser;

/// jemalloc instead of glibc's malloc: a request allocates and frees many small buffers on
/// two or more threads, and glibc's arenas spent a fifth of the gateway's CPU doing it. Built
/// without jemalloc's cache-oblivious offset, which adds a page to every large allocation
/// (hyper's and rustls' buffers of each open stream). Measured in bench/README.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(app::run(cli)) {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
