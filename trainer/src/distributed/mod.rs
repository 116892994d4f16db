//! Data parallelism across processes on libtorch's torch.distributed (c10d): NCCL between GPUs,
//! Gloo between CPU processes (docs/distributed.md).
//!
//! - [`env`]: the job as torchrun, `spatialthinker launch` or Slurm describe it;
//! - [`process_group`]: the rendezvous store and the process group (a C++ binding of c10d);
//! - [`heartbeat`]: a lost rank stops the others with an error naming it;
//! - [`zero`]: f32 bucketed gradient all-reduce and the ZeRO-1 optimizer shards;
//! - [`DataParallel`]: what the trainer holds — the group, the liveness watch, and collectives
//!   that name the rank at fault when they fail.

pub mod env;
mod ffi;
pub mod heartbeat;
pub mod process_group;
pub mod zero;

use std::cell::Cell;
use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

pub use env::{first_host, DistEnv, Launcher};
pub use heartbeat::{Heartbeat, LOST_RANK_EXIT_CODE};
pub use process_group::{Backend, ProcessGroup, ReduceOp, Store};
pub use zero::FlatLayout;

/// Errors of the distributed layer.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The launcher's environment is incomplete or malformed.
    #[error("distributed environment: {0}")]
    Env(String),
    /// The rendezvous store could not be reached or served.
    #[error("rendezvous store at {addr}: {msg}")]
    Rendezvous { addr: String, msg: String },
    /// A collective failed or timed out.
    #[error("{op} failed on rank {rank}: {msg}")]
    Collective {
        op: &'static str,
        rank: usize,
        msg: String,
    },
    /// Arguments of a call are inconsistent.
    #[error("distributed: {0}")]
    Invalid(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result type of the distributed layer.
pub type Result<T> = std::result::Result<T, DistError>;

/// `[distributed]` of the training config: timeouts and communication sizes of multi-process
/// runs (ignored by a single process).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedConfig {
    /// Seconds a collective waits for the slowest rank (ranks meet after rollouts, whose
    /// lengths differ): 1800.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Seconds between liveness beats: 1.
    #[serde(default = "default_heartbeat_interval_s")]
    pub heartbeat_interval_s: f64,
    /// Seconds without a beat after which a rank counts as lost and the others exit: 30.
    #[serde(default = "default_heartbeat_timeout_s")]
    pub heartbeat_timeout_s: f64,
    /// MiB of f32 per gradient all-reduce and parameter all-gather bucket: 64.
    #[serde(default = "default_bucket_mib")]
    pub bucket_mib: f64,
    /// Keep each rank's share of the optimizer state only (ZeRO-1): true.
    #[serde(default = "default_true")]
    pub shard_optimizer: bool,
}

fn default_timeout_s() -> f64 {
    1800.0
}
fn default_heartbeat_interval_s() -> f64 {
    1.0
}
fn default_heartbeat_timeout_s() -> f64 {
    30.0
}
fn default_bucket_mib() -> f64 {
    64.0
}
fn default_true() -> bool {
    true
}

impl Default for DistributedConfig {
    fn default() -> Self {
        DistributedConfig {
            timeout_s: default_timeout_s(),
            heartbeat_interval_s: default_heartbeat_interval_s(),
            heartbeat_timeout_s: default_heartbeat_timeout_s(),
            bucket_mib: default_bucket_mib(),
            shard_optimizer: true,
        }
    }
}

impl DistributedConfig {
    /// Checks the durations and sizes.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.timeout_s)
            || !positive(self.heartbeat_interval_s)
            || !positive(self.heartbeat_timeout_s)
        {
            return Err("distributed.timeout_s, heartbeat_interval_s and heartbeat_timeout_s must be positive".into());
        }
        if self.heartbeat_timeout_s < 3.0 * self.heartbeat_interval_s {
            return Err(format!(
                "distributed.heartbeat_timeout_s = {} must be at least 3 × heartbeat_interval_s = {}",
                self.heartbeat_timeout_s, self.heartbeat_interval_s
            ));
        }
        if !positive(self.bucket_mib) {
            return Err("distributed.bucket_mib must be positive".into());
        }
        Ok(())
    }

    /// Elements of one f32 bucket.
    pub fn bucket_elements(&self) -> i64 {
        zero::bucket_elements((self.bucket_mib * (1u64 << 20) as f64) as usize)
    }
}

/// Store key of `rank`'s count of collectives entered.
fn collective_key(rank: usize) -> String {
    format!("spatialthinker/collectives/{rank}")
}

/// This process's part in a data-parallel job.
#[derive(Debug)]
pub struct DataParallel {
    env: DistEnv,
    store: Store,
    group: ProcessGroup,
    heartbeat: Option<Heartbeat>,
    cfg: DistributedConfig,
    /// Collectives this rank has entered.
    entered: Cell<u64>,
}

impl DataParallel {
    /// Joins the job `env` describes: the store on rank 0's `MASTER_ADDR:MASTER_PORT`, a
    /// process group of `backend`, and the heartbeat. `on_lost` receives the message when
    /// another rank is lost (the binary prints it and exits).
    pub fn init(
        env: &DistEnv,
        backend: Backend,
        cfg: &DistributedConfig,
        on_lost: Box<dyn Fn(&str) + Send>,
    ) -> Result<Self> {
        cfg.validate().map_err(DistError::Invalid)?;
        let timeout = Duration::from_secs_f64(cfg.timeout_s);
        let connect_timeout = timeout.min(Duration::from_secs(300));
        let store = Store::connect(
            &env.master_addr,
            env.master_port,
            env.rank == 0,
            env.world_size,
            connect_timeout,
        )?;
        // Gloo binds each rank's transport to the address its peers reach it at: loopback
        // when the whole job is on this host, else this host's name.
        let hostname = if env.local_world_size == env.world_size {
            "127.0.0.1".to_string()
        } else {
            hostname()
        };
        let group = ProcessGroup::new(
            &store,
            backend,
            env.rank,
            env.world_size,
            &hostname,
            timeout,
        )?;
        let watch = Store::connect_extra(&env.master_addr, env.master_port, connect_timeout)?;
        let heartbeat = Heartbeat::start(
            watch,
            env.rank,
            env.world_size,
            Duration::from_secs_f64(cfg.heartbeat_interval_s),
            Duration::from_secs_f64(cfg.heartbeat_timeout_s),
            on_lost,
        )?;
        let dp = DataParallel {
            env: env.clone(),
            store,
            group,
            heartbeat: Some(heartbeat),
            cfg: cfg.clone(),
            entered: Cell::new(0),
        };
        dp.barrier()?;
        Ok(dp)
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.env.rank
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.env.world_size
    }

    /// Whether this is rank 0 (logs, checkpoints).
    pub fn is_main(&self) -> bool {
        self.env.rank == 0
    }

    /// The job.
    pub fn env(&self) -> &DistEnv {
        &self.env
    }

    /// The communication settings.
    pub fn config(&self) -> &DistributedConfig {
        &self.cfg
    }

    /// The process group.
    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// The device of this rank given the configured one: `cuda:LOCAL_RANK` for CUDA, or
    /// `cuda:0` when the launcher gave each rank one visible GPU (`CUDA_VISIBLE_DEVICES` per
    /// task, as `srun --gpus-per-task=1` does).
    pub fn device(&self, configured: Device) -> Device {
        match configured {
            Device::Cuda(_) if tch::Cuda::device_count() == 1 => Device::Cuda(0),
            Device::Cuda(_) => Device::Cuda(self.env.local_rank),
            d => d,
        }
    }

    /// Runs collective `op` (`f`), counting it; when it fails, the error says which ranks went
    /// silent (lost) or had not reached this collective (late or hung).
    pub fn collective<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&ProcessGroup) -> Result<T>,
    ) -> Result<T> {
        let seq = self.entered.get() + 1;
        self.entered.set(seq);
        // the count only serves diagnostics: a store hiccup must not fail the collective
        let _ = self.store.add(&collective_key(self.rank()), 1);
        f(&self.group).map_err(|e| self.explain(op, seq, e))
    }

    /// The error of collective #`seq` with the ranks at fault named.
    fn explain(&self, op: &'static str, seq: u64, e: DistError) -> DistError {
        let mut notes = Vec::new();
        let silent = self
            .heartbeat
            .as_ref()
            .map(Heartbeat::silent_ranks)
            .unwrap_or_default();
        for r in &silent {
            notes.push(format!(
                "rank {r} is lost: its heartbeat stopped (killed, crashed, or its host is unreachable)"
            ));
        }
        for r in (0..self.world()).filter(|r| *r != self.rank() && !silent.contains(r)) {
            match self.store.add(&collective_key(r), 0) {
                Ok(n) if (n as u64) < seq => notes.push(format!(
                    "rank {r} has not reached it (it entered {n} collectives): it is hung or slower than distributed.timeout_s"
                )),
                Ok(_) => {}
                Err(_) => {
                    notes.push("rank 0 is lost (its rendezvous store is unreachable)".into());
                    break;
                }
            }
        }
        let msg = match e {
            DistError::Collective { msg, .. } => msg,
            other => other.to_string(),
        };
        let detail = if notes.is_empty() {
            String::new()
        } else {
            format!("; {}", notes.join("; "))
        };
        DistError::Collective {
            op,
            rank: self.rank(),
            msg: format!("collective #{seq}: {msg}{detail}"),
        }
    }

    /// Returns when every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        self.collective("barrier", |g| g.barrier())
    }

    /// Reduces `values` over ranks in place (f64).
    pub fn all_reduce_f64(&self, values: &mut [f64], op: ReduceOp) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let mut t = Tensor::f_from_slice(values)?.f_to_kind(Kind::Double)?;
        self.collective("all_reduce", |g| g.all_reduce(&mut t, op))?;
        let out: Vec<f64> = Vec::<f64>::try_from(&t)?;
        values.copy_from_slice(&out);
        Ok(())
    }

    /// Copies every tensor of rank 0 into the same tensor of every rank (parameters at start and
    /// after rank 0 alone changed them), one f32 bucket at a time.
    pub fn broadcast_from_main(&self, tensors: &[(String, Tensor)]) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let bucket = self.cfg.bucket_elements();
        let layout = FlatLayout::of(tensors, 1);
        let mut start = 0;
        while start < layout.total() {
            let end = (start + bucket).min(layout.total());
            let segments = layout.segments(start..end);
            let parts = segments
                .iter()
                .map(|s| {
                    Ok(tensors[s.param]
                        .1
                        .f_view([-1])?
                        .f_narrow(0, s.start, s.len)?
                        .f_to_kind(Kind::Float)?)
                })
                .collect::<Result<Vec<_>>>()?;
            let mut flat = Tensor::f_cat(&parts, 0)?;
            self.collective("broadcast", |g| g.broadcast(&mut flat, 0))?;
            let mut at = 0;
            for s in &segments {
                let mut dst = tensors[s.param]
                    .1
                    .f_view([-1])?
                    .f_narrow(0, s.start, s.len)?;
                dst.f_copy_(&flat.f_narrow(0, at, s.len)?)?;
                at += s.len;
            }
            start = end;
        }
        Ok(())
    }

    /// Sums gradients over ranks (f32 buckets, [`zero::all_reduce_gradients`]).
    pub fn all_reduce_gradients(&self, params: &[(String, Tensor)]) -> Result<()> {
        let bucket = self.cfg.bucket_elements();
        self.collective("all_reduce(gradients)", |g| {
            zero::all_reduce_gradients(g, params, bucket)
        })
    }

    /// Gives every rank the shards the others updated ([`zero::all_gather_parameters`]).
    pub fn all_gather_parameters(&self, params: &[(String, Tensor)]) -> Result<()> {
        let bucket = self.cfg.bucket_elements();
        self.collective("all_gather(parameters)", |g| {
            zero::all_gather_parameters(g, params, bucket)
        })
    }

    /// Ends the job in order: this rank stops beating (the others stop watching it), then
    /// waits for every rank, so rank 0's store outlives everyone's last use of it.
    pub fn finish(mut self) -> Result<()> {
        if let Some(hb) = self.heartbeat.take() {
            hb.finish()?;
        }
        self.collective("barrier", |g| g.barrier())
    }
}

impl crate::grpo::actor::Replicas for DataParallel {
    fn world(&self) -> usize {
        DataParallel::world(self)
    }

    fn sum(&self, values: &mut [f64]) -> crate::grpo::Result<()> {
        self.all_reduce_f64(values, ReduceOp::Sum).map_err(boxed)
    }

    fn max(&self, n: usize) -> crate::grpo::Result<usize> {
        let mut v = [n as f64];
        self.all_reduce_f64(&mut v, ReduceOp::Max).map_err(boxed)?;
        Ok(v[0] as usize)
    }

    fn reduce_gradients(&self, params: &[(String, Tensor)]) -> crate::grpo::Result<()> {
        self.all_reduce_gradients(params).map_err(boxed)
    }

    fn gather_parameters(&self, params: &[(String, Tensor)]) -> crate::grpo::Result<()> {
        if self.cfg.shard_optimizer {
            self.all_gather_parameters(params).map_err(boxed)
        } else {
            // every rank stepped every parameter from the same gradients
            Ok(())
        }
    }
}

fn boxed(e: DistError) -> crate::grpo::GrpoError {
    crate::grpo::GrpoError::Replicas(Box::new(e))
}

/// This host's name as other nodes reach it (`HOSTNAME`, else the kernel's node name).
fn hostname() -> String {
    if let Ok(h) = std::env::var("HOSTNAME") {
        if !h.is_empty() {
            return h;
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into())
}

/// The rows of a batch of `rows` (prompts, in order) that `rank` of `world` takes: each
/// optimiser step's `per_step` prompts are cut into `world` equal consecutive blocks, so every
/// rank holds whole GRPO groups (advantages need no communication) and each optimiser step
/// covers the same prompts as on one device (docs/distributed.md, "Sharding").
pub fn shard_rows(rows: usize, per_step: usize, world: usize, rank: usize) -> Vec<usize> {
    let per_step = per_step.max(1);
    let mut out = Vec::new();
    for step_start in (0..rows).step_by(per_step) {
        let len = per_step.min(rows - step_start);
        let block = len.div_ceil(world.max(1));
        let r: Range<usize> =
            (step_start + (rank * block).min(len))..(step_start + ((rank + 1) * block).min(len));
        out.extend(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_sharded_per_optimizer_step() {
        // 8 prompts, 4 per optimiser step, 2 ranks: each rank takes half of each step
        assert_eq!(shard_rows(8, 4, 2, 0), vec![0, 1, 4, 5]);
        assert_eq!(shard_rows(8, 4, 2, 1), vec![2, 3, 6, 7]);
        assert_eq!(shard_rows(8, 4, 4, 3), vec![3, 7]);
        // a short last batch: the later ranks may get nothing of it
        assert_eq!(shard_rows(6, 4, 2, 0), vec![0, 1, 4]);
        assert_eq!(shard_rows(6, 4, 2, 1), vec![2, 3, 5]);
        let all: Vec<usize> = (0..3).flat_map(|r| shard_rows(9, 6, 3, r)).collect();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, (0..9).collect::<Vec<_>>());
    }
}
