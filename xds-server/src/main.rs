//! `shadowmesh-xds`: runs the Shadowmesh control plane (see `--help`).

use clap::Parser;
use shadowmesh_xds::cli::{Args, start};

fn main() -> anyhow::Result<()> {
    // Before the runtime starts its threads, which inherit the mask.
    block_file_size_signal();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or a journal gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let settings = args.resolve()?;
    if args.check {
        println!(
            "configuration OK: http {}, ads {}, grouping {:?}, {} service(s)",
            settings.http_listen,
            settings.ads_listen,
            settings.config.grouping,
            settings.config.services.len()
        );
        return Ok(());
    }
    raise_open_files_limit();
    let mut running = start(settings).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let signal = tokio::select! {
        r = &mut running.task => return r?,
        _ = terminate.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    tracing::info!(
        signal,
        "shutting down: no new connections, ADS streams end, requests in flight finish (a second signal exits at once)"
    );
    tokio::select! {
        r = running.shutdown() => r?,
        // An operator who signals again does not want to wait out the grace periods.
        _ = terminate.recv() => second_signal("SIGTERM"),
        _ = tokio::signal::ctrl_c() => second_signal("SIGINT"),
    }
    tracing::info!("shut down cleanly");
    Ok(())
}

/// A second signal during shutdown: exit now, with the conventional status of a process
/// ended by that signal (128 + its number).
fn second_signal(signal: &str) -> ! {
    tracing::warn!(
        signal,
        "second signal: exiting without waiting for the grace periods"
    );
    std::process::exit(if signal == "SIGINT" { 130 } else { 143 })
}

/// Blocks `SIGXFSZ`: past a file-size limit (`ulimit -f`) a write then fails with `EFBIG`,
/// which the state store handles like a full disk, instead of the signal killing the
/// process mid-request.
fn block_file_size_signal() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGXFSZ);
    if let Err(e) = set.thread_block() {
        eprintln!("cannot block SIGXFSZ: {e}");
    }
}

/// Raises the soft limit of open files to the hard one: every Envoy holds an ADS stream and
/// a default soft limit of 1,024 would cap a mesh far below the listeners' own caps. (The
/// listeners' caps keep either side from taking the descriptors the other needs.)
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open files limit"),
            Err(e) => tracing::warn!(error = %e, soft, "cannot raise the open files limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}
