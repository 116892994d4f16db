//! `spatialthinker launch`: start the ranks of a data-parallel job on this node, as torchrun
//! does — one process per GPU (or per CPU rank) with RANK, LOCAL_RANK, WORLD_SIZE,
//! LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set — forward SIGINT/SIGTERM to them, and stop
//! them all when one fails (docs/distributed.md, "Launching").

use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use trainer::distributed::env::DEFAULT_MASTER_PORT;

/// Run a command (normally `train …`) as the ranks of a data-parallel job on this node.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  spatialthinker launch --nproc-per-node 2 -- train --set trainer.max_steps=3
  spatialthinker launch --nproc-per-node 4 -- train --config configs/spatialthinker-7b.toml
  # two nodes × 4 GPUs: run on each node with its --node-rank
  spatialthinker launch --nnodes 2 --node-rank 0 --nproc-per-node 4 \\
      --master-addr node0 --master-port 29500 -- train --config configs/spatialthinker-7b.toml
torchrun works the same way: torchrun --nproc-per-node 4 --no-python spatialthinker train …;
under Slurm, srun sets SLURM_PROCID/SLURM_NTASKS/SLURM_NODELIST and `train` reads them
(scripts/slurm/). Ranks use cuda:LOCAL_RANK when trainer.device is CUDA (NCCL), else the CPU
(Gloo). When one rank fails, the others get --grace-s seconds to report the lost rank and exit,
then are stopped; the launcher exits with the first failure's status.")]
pub struct Args {
    /// Processes (ranks) on this node: one per GPU.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub nproc_per_node: u64,
    /// Nodes in the job.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub nnodes: u64,
    /// This node's index (0 serves the rendezvous store).
    #[arg(long, default_value_t = 0)]
    pub node_rank: u64,
    /// Host of node 0, reachable from every node.
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Port of the rendezvous store on node 0. Default: a free port on a single node, 29500 on
    /// several.
    #[arg(long)]
    pub master_port: Option<u16>,
    /// Seconds the other ranks get to exit by themselves after one fails.
    #[arg(long, default_value_t = 15.0)]
    pub grace_s: f64,
    /// The spatialthinker command each rank runs, after `--` (e.g. `-- train --config …`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The signal received by the launcher (0: none), set by [`on_signal`].
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: i32) {
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// Catches SIGINT and SIGTERM so that they are forwarded to the ranks.
fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_signal` only stores into an atomic, which is async-signal-safe; the
        // handler pointer stays valid for the life of the process.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Sends `sig` to a child still running.
fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we have not reaped yet (the pid cannot have been
    // reused) has no memory effects.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}{}", signal_name(sig)),
        _ => "ended".into(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        _ => "",
    }
}

/// A free TCP port on this host for a single-node job's store.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

pub fn run(args: Args) -> Result<()> {
    if args.node_rank >= args.nnodes {
        bail!(
            "--node-rank {} is outside --nnodes {}",
            args.node_rank,
            args.nnodes
        );
    }
    let port = match args.master_port {
        Some(p) => p,
        None if args.nnodes == 1 => free_port()?,
        None => DEFAULT_MASTER_PORT,
    };
    let exe = std::env::current_exe().context("locating the spatialthinker binary")?;
    let local = args.nproc_per_node;
    let world = local * args.nnodes;
    catch_signals();
    let mut children: Vec<(u64, Child)> = Vec::new();
    for local_rank in 0..local {
        let rank = args.node_rank * local + local_rank;
        let child = Command::new(&exe)
            .args(&args.command)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local_rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", local.to_string())
            .env("GROUP_RANK", args.node_rank.to_string())
            .env("MASTER_ADDR", &args.master_addr)
            .env("MASTER_PORT", port.to_string())
            .spawn()
            .with_context(|| format!("starting rank {rank}"))?;
        children.push((rank, child));
    }
    eprintln!(
        "launch: {local} ranks on this node (ranks {}..{} of {world}), store {}:{port}",
        args.node_rank * local,
        (args.node_rank + 1) * local - 1,
        args.master_addr
    );
    supervise(children, Duration::from_secs_f64(args.grace_s.max(0.0)))
}

/// Waits for every rank; forwards signals; after the first failure gives the others `grace`
/// to exit, then stops them. Errors with the first failure.
fn supervise(mut running: Vec<(u64, Child)>, grace: Duration) -> Result<()> {
    let mut failure: Option<(u64, String, i32)> = None;
    let mut stop_at: Option<Instant> = None;
    let mut terminated = false;
    while !running.is_empty() {
        let sig = RECEIVED.swap(0, Ordering::SeqCst);
        if sig != 0 {
            for (_, c) in &running {
                signal(c, sig);
            }
            if failure.is_none() {
                failure = Some((u64::MAX, format!("received signal {sig}"), 128 + sig));
            }
        }
        let mut i = 0;
        while i < running.len() {
            match running[i].1.try_wait()? {
                Some(status) => {
                    let (rank, _) = running.remove(i);
                    if !status.success() && failure.is_none() {
                        eprintln!(
                            "launch: rank {rank} {}; the other ranks get {:.0} s to stop",
                            describe(&status),
                            grace.as_secs_f64()
                        );
                        failure = Some((rank, describe(&status), status.code().unwrap_or(1)));
                        stop_at = Some(Instant::now() + grace);
                    }
                }
                None => i += 1,
            }
        }
        if let Some(at) = stop_at {
            if Instant::now() >= at && !running.is_empty() {
                let sig = if terminated {
                    libc::SIGKILL
                } else {
                    libc::SIGTERM
                };
                for (rank, c) in &running {
                    eprintln!("launch: stopping rank {rank}{}", signal_name(sig));
                    signal(c, sig);
                }
                terminated = true;
                stop_at = Some(Instant::now() + Duration::from_secs(10));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match failure {
        None => Ok(()),
        Some((rank, what, code)) => {
            if rank != u64::MAX {
                eprintln!("launch: rank {rank} {what}");
            }
            // the first failure's status is the launcher's
            std::process::exit(if code == 0 { 1 } else { code });
        }
    }
}
