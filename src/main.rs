use clap::Parser;
use midasflow::cli::{self, Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    // openraft warns on routine election races; keep the default output to our own events.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => cli::run_demo(args).await,
            Command::Server(args) => cli::run_server(*args).await,
            Command::Kv(args) => cli::run_kv(args).await,
            Command::Cluster(args) => cli::run_cluster(args).await,
            Command::Bench(args) => midasflow::bench::run(args).await,
        }
    });
    if let Err(message) = result {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
