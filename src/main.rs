use clap::Parser;
use midasflow::cli::{self, Cli, Command};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

// glibc's malloc took about 13 % of a node's samples under write load; mimalloc costs 5-10 %
// less CPU per write (docs/performance.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // mimalloc commits its arenas eagerly, so huge pages make every 2 MiB region it touches
    // resident: an idle node at 1,000 shards held 745 MB instead of 80. Its `no_thp` build
    // stops asking for them; this also keeps a kernel whose THP mode is `always` from
    // giving them unasked.
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes no memory.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let cli = Cli::parse();
    if matches!(cli.command, Command::Kv(_) | Command::Cluster(_)) {
        // Output piped into `head` ends the command quietly, as for any Unix tool (Rust
        // ignores SIGPIPE, and `println!` panics on the broken pipe). Servers keep the
        // default: a peer closing a socket must never kill a node.
        #[cfg(unix)]
        // SAFETY: called before any thread starts; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // openraft warns on routine election races; keep the default output to our own events.
    // A simulation's nodes fail on purpose all the time: it reports through its checkers.
    let default_filter = match cli.command {
        Command::Sim(_) => "off",
        // A demo's user sees its banner, not peers failing to connect while nodes start
        // or while they break the cluster on purpose; RUST_LOG shows everything.
        Command::Demo(_) => "error,openraft=off",
        _ => "info,openraft=error",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .finish()
        .with(midasflow::log_limit::LogRateLimit::default())
        .init();
    if let Command::Sim(args) = cli.command {
        // turmoil runs its own runtimes; the simulation needs none of ours.
        if let Err(message) = midasflow::sim_cli::run(args) {
            eprintln!("error: {message}");
            std::process::exit(1);
        }
        return;
    }
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
            Command::Cert(args) => cli::run_cert(args),
            Command::BenchStorage(args) => midasflow::bench_storage::run(args),
            Command::Sim(_) => unreachable!("handled above"),
        }
    });
    if let Err(message) = result {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
