//! Data parallelism on libtorch's c10d (docs/distributed.md), in one process with one thread per
//! rank over Gloo on loopback: the collectives against hand-computed values, the GRPO update of
//! two ranks against the single-device update of the same batch (weights, norms, shard sizes),
//! and a rank that never arrives named in the error.

use std::net::TcpListener;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};
use trainer::distributed::{
    Backend, DataParallel, DistEnv, DistributedConfig, FlatLayout, Launcher, ProcessGroup,
    ReduceOp, Store,
};
use trainer::grpo::actor::{
    update_actor, update_actor_with, PolicyLogprobs, RolloutBatch, UpdateConfig, UpdateMetrics,
};
use trainer::grpo::advantage::{grpo_advantages, token_advantages, GRPO_EPS};
use trainer::grpo::loss::PolicyClip;
use trainer::grpo::optim::{AdamWConfig, AnyPrecisionAdamW, StateDtype};
use trainer::grpo::Result;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn env(rank: usize, world: usize, port: u16) -> DistEnv {
    DistEnv {
        rank,
        local_rank: rank,
        world_size: world,
        local_world_size: world,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        launcher: Launcher::Torchrun,
    }
}

/// Runs `f(rank)` on `world` threads and returns their results in rank order.
fn on_ranks<T: Send + 'static>(
    world: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let f = f.clone();
            std::thread::spawn(move || f(rank))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn group(rank: usize, world: usize, port: u16, timeout: Duration) -> (Store, ProcessGroup) {
    let store = Store::connect("127.0.0.1", port, rank == 0, world, timeout).unwrap();
    let pg = ProcessGroup::new(&store, Backend::Gloo, rank, world, "127.0.0.1", timeout).unwrap();
    (store, pg)
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.to_kind(Kind::Float).reshape([-1])).unwrap()
}

#[test]
fn collectives_over_gloo() {
    tch::set_num_threads(1);
    let port = free_port();
    let results = on_ranks(3, move |rank| {
        let (_store, pg) = group(rank, 3, port, Duration::from_secs(60));
        let r = rank as f32;
        // all_reduce: 1+2+3 per element, and the max
        let mut t = Tensor::from_slice(&[r + 1.0, 10.0 * (r + 1.0)]);
        pg.all_reduce(&mut t, ReduceOp::Sum).unwrap();
        let sum = values(&t);
        let mut m = Tensor::from_slice(&[r, -r]);
        pg.all_reduce(&mut m, ReduceOp::Max).unwrap();
        let max = values(&m);
        // broadcast from rank 2
        let mut b = Tensor::from_slice(&[r * 7.0, 1.0]);
        pg.broadcast(&mut b, 2).unwrap();
        let bcast = values(&b);
        // all_gather: every rank's [r, r + 0.5]
        let input = Tensor::from_slice(&[r, r + 0.5]);
        let mut out = Tensor::zeros([6], (Kind::Float, Device::Cpu));
        pg.all_gather(&mut out, &input).unwrap();
        let gathered = values(&out);
        // reduce_scatter: rank k receives the sum over ranks of slice k of [0..6) + 10 r
        let input = Tensor::arange(6, (Kind::Float, Device::Cpu)) + 10.0 * r as f64;
        let mut out = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        pg.reduce_scatter(&mut out, &input, ReduceOp::Sum).unwrap();
        let scattered = values(&out);
        pg.barrier().unwrap();
        (sum, max, bcast, gathered, scattered)
    });
    for (rank, (sum, max, bcast, gathered, scattered)) in results.into_iter().enumerate() {
        assert_eq!(sum, vec![6.0, 60.0]);
        assert_eq!(max, vec![2.0, 0.0]);
        assert_eq!(bcast, vec![14.0, 1.0]);
        assert_eq!(gathered, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
        // slice k of each rank's input is [2k, 2k+1] + 10 r; summed over r = 0, 1, 2
        let k = rank as f32;
        assert_eq!(
            scattered,
            vec![3.0 * 2.0 * k + 30.0, 3.0 * (2.0 * k + 1.0) + 30.0]
        );
    }
}

#[test]
fn wrong_sizes_are_errors_not_crashes() {
    tch::set_num_threads(1);
    let port = free_port();
    let results = on_ranks(2, move |rank| {
        let (_store, pg) = group(rank, 2, port, Duration::from_secs(60));
        let input = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let mut out = Tensor::zeros([5], (Kind::Float, Device::Cpu));
        let gather = pg.all_gather(&mut out, &input).unwrap_err().to_string();
        let strided = Tensor::zeros([4, 4], (Kind::Float, Device::Cpu)).tr();
        let mut strided = strided.shallow_clone();
        let reduce = pg
            .all_reduce(&mut strided, ReduceOp::Sum)
            .unwrap_err()
            .to_string();
        pg.barrier().unwrap();
        (gather, reduce)
    });
    for (gather, reduce) in results {
        assert!(
            gather.contains("output has 5 elements, want 2 × 3"),
            "{gather}"
        );
        assert!(reduce.contains("not contiguous"), "{reduce}");
    }
}

/// A bigram policy over a shared vocabulary: `log p(x_t | x_{t−1}) = log_softmax(E[x_{t−1}] Wᵀ)`.
struct Bigram {
    embed: Tensor,
    head: Tensor,
    /// `[N, T + 1]`: a prompt token, then the response.
    seqs: Tensor,
}

const VOCAB: i64 = 11;
const WIDTH: i64 = 6;

/// Initial `(embed, head)` of the policy. Every random tensor of these tests is drawn on the
/// test's own thread before the ranks start: libtorch's generator is global, and ranks drawing
/// from it concurrently would get different values.
fn initial_weights() -> (Tensor, Tensor) {
    tch::manual_seed(5);
    (
        Tensor::randn([VOCAB, WIDTH], (Kind::Float, Device::Cpu)) * 0.5,
        Tensor::randn([VOCAB, WIDTH], (Kind::Float, Device::Cpu)) * 0.5,
    )
}

impl Bigram {
    fn new(seqs: Tensor, (embed, head): &(Tensor, Tensor)) -> Self {
        Bigram {
            embed: embed.copy().set_requires_grad(true),
            head: head.copy().set_requires_grad(true),
            seqs,
        }
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        vec![
            ("embed".into(), self.embed.shallow_clone()),
            ("head".into(), self.head.shallow_clone()),
        ]
    }
}

impl PolicyLogprobs for Bigram {
    fn response_log_probs(&mut self, rows: &[usize]) -> Result<Tensor> {
        let idx = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
        let seqs = self.seqs.index_select(0, &idx);
        let t = seqs.size()[1] - 1;
        let prev = seqs.narrow(1, 0, t);
        let next = seqs.narrow(1, 1, t);
        let logits = self
            .embed
            .index_select(0, &prev.reshape([-1]))
            .matmul(&self.head.tr());
        let lp = logits.log_softmax(-1, Kind::Float);
        Ok(lp
            .gather(1, &next.reshape([-1, 1]), false)
            .reshape([rows.len() as i64, t]))
    }
}

/// 16 responses of 4 prompts (groups of 4) with lengths 3..6 and rewards that differ within
/// each group; the old and reference log-probs are perturbed copies of the initial policy's.
fn rollout() -> (Tensor, RolloutBatch) {
    tch::manual_seed(11);
    let n = 16;
    let t = 6;
    let seqs = Tensor::randint(VOCAB, [n, t + 1], (Kind::Int64, Device::Cpu));
    let lengths: Vec<usize> = (0..n as usize).map(|i| 3 + i % 4).collect();
    let mut mask = vec![0f32; (n * t) as usize];
    for (i, &len) in lengths.iter().enumerate() {
        mask[i * t as usize..i * t as usize + len].fill(1.0);
    }
    let mask = Tensor::from_slice(&mask).reshape([n, t]);
    let scores: Vec<f32> = (0..n).map(|i| ((i * 7 % 5) as f32) / 4.0).collect();
    let groups: Vec<u64> = (0..n as u64).map(|i| i / 4).collect();
    let adv =
        token_advantages(&grpo_advantages(&scores, &groups, GRPO_EPS).unwrap(), &mask).unwrap();
    let mut policy = Bigram::new(seqs.shallow_clone(), &initial_weights());
    let rows: Vec<usize> = (0..n as usize).collect();
    let current = tch::no_grad(|| policy.response_log_probs(&rows).unwrap());
    let old = &current + Tensor::randn([n, t], (Kind::Float, Device::Cpu)) * 0.05;
    let reference = &current + Tensor::randn([n, t], (Kind::Float, Device::Cpu)) * 0.1;
    let batch = RolloutBatch::new(mask, old, Some(reference), adv).unwrap();
    (seqs, batch)
}

fn update_config(mini: usize) -> UpdateConfig {
    UpdateConfig {
        mini_batch_size: mini,
        micro_batch_size: 2,
        max_tokens_per_forward: None,
        ppo_epochs: 2,
        clip: PolicyClip {
            clip_ratio_low: 0.2,
            clip_ratio_high: 0.3,
            clip_ratio_dual: 3.0,
        },
        kl_coef: Some(0.05),
        // small enough that every step is clipped: the norm must be the global one
        max_grad_norm: 0.05,
    }
}

fn adamw() -> AdamWConfig {
    AdamWConfig {
        // a large eps makes the update proportional to the gradient, so a wrongly scaled
        // gradient (a missing 1/world) changes the weights
        eps: 1.0,
        state_dtype: StateDtype::F32,
        kahan_summation: false,
        ..AdamWConfig::default()
    }
}

fn take_rows(batch: &RolloutBatch, rows: &[i64]) -> RolloutBatch {
    let idx = Tensor::from_slice(rows);
    let pick = |t: &Tensor| t.index_select(0, &idx);
    RolloutBatch::new(
        pick(&batch.response_mask),
        pick(&batch.old_log_probs),
        batch.ref_log_probs.as_ref().map(pick),
        pick(&batch.advantages),
    )
    .unwrap()
}

/// The update of rank `rank` of 2 on its rows (per optimiser step of 8 responses = 2 prompts,
/// rank 0 takes the first prompt, rank 1 the second); returns its weights, metrics and the
/// optimiser state it holds.
fn update_on_rank(
    rank: usize,
    port: u16,
    shard: bool,
    (seqs, batch, weights): &(Tensor, RolloutBatch, (Tensor, Tensor)),
) -> (Vec<Vec<f32>>, UpdateMetrics, i64) {
    tch::set_num_threads(1);
    let prompts = [rank as i64, 2 + rank as i64];
    let rows: Vec<i64> = prompts.iter().flat_map(|p| p * 4..p * 4 + 4).collect();
    let idx = Tensor::from_slice(&rows);
    let mut policy = Bigram::new(seqs.index_select(0, &idx), weights);
    let local = take_rows(batch, &rows);
    let cfg = DistributedConfig {
        shard_optimizer: shard,
        // 26 f32 per bucket: parameters are split across buckets, buckets span parameters
        bucket_mib: 1e-4,
        ..DistributedConfig::default()
    };
    let dp = DataParallel::init(
        &env(rank, 2, port),
        Backend::Gloo,
        &cfg,
        Box::new(|msg: &str| panic!("lost a rank: {msg}")),
    )
    .unwrap();
    let mut opt = AnyPrecisionAdamW::new(policy.params(), adamw()).unwrap();
    if shard {
        let layout = FlatLayout::of(opt.params(), 2);
        opt = opt.with_shard(layout.owned(rank)).unwrap();
    }
    let m = update_actor_with(&update_config(4), &mut policy, &local, &mut opt, 0.5, &dp).unwrap();
    let held = opt.state_elements();
    dp.finish().unwrap();
    (vec![values(&policy.embed), values(&policy.head)], m, held)
}

fn batch_copy(batch: &RolloutBatch) -> RolloutBatch {
    take_rows(batch, &(0..batch.len() as i64).collect::<Vec<_>>())
}

fn copy2((a, b): &(Tensor, Tensor)) -> (Tensor, Tensor) {
    (a.copy(), b.copy())
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn two_ranks_update_as_one_device() {
    tch::set_num_threads(1);
    let (seqs, batch) = rollout();
    let weights = initial_weights();
    let mut policy = Bigram::new(seqs.shallow_clone(), &weights);
    let start = vec![values(&policy.embed), values(&policy.head)];
    let mut opt = AnyPrecisionAdamW::new(policy.params(), adamw()).unwrap();
    let single = update_actor(&update_config(8), &mut policy, &batch, &mut opt, 0.5).unwrap();
    let want = vec![values(&policy.embed), values(&policy.head)];
    assert_eq!(single.grad_norms.len(), 4, "2 epochs × 2 mini-batches");
    assert!(
        single.grad_norms.iter().all(|&g| g > 0.05),
        "every step clipped"
    );
    let moved = max_diff(&start, &want);
    assert!(moved > 1e-2, "the update moves the weights ({moved})");

    for shard in [true, false] {
        let port = free_port();
        // tensors are not Sync: each rank takes its own copy under the lock
        let inputs = Arc::new(Mutex::new((
            seqs.copy(),
            batch_copy(&batch),
            copy2(&weights),
        )));
        let ranks = on_ranks(2, move |rank| {
            let mine = {
                let g = inputs.lock().unwrap();
                (g.0.copy(), batch_copy(&g.1), copy2(&g.2))
            };
            update_on_rank(rank, port, shard, &mine)
        });
        let total = FlatLayout::new(&[VOCAB * WIDTH, VOCAB * WIDTH], 2).total();
        for (rank, (weights, m, held)) in ranks.iter().enumerate() {
            let diff = max_diff(weights, &want);
            println!("shard={shard} rank {rank}: max |w − w_single| = {diff:.3e}, holds {held} of {total} state elements");
            assert!(
                diff <= 1e-6,
                "rank {rank} differs from one device by {diff}"
            );
            for (a, b) in m.grad_norms.iter().zip(&single.grad_norms) {
                assert!((a - b).abs() <= 1e-6 * b, "grad norm {a} vs {b}");
            }
            assert!(
                (m.pg_loss - single.pg_loss).abs() <= 1e-6,
                "{} vs {}",
                m.pg_loss,
                single.pg_loss
            );
            assert_eq!(m.micro_batches, single.micro_batches);
            // ZeRO-1: each of 2 ranks holds half of the optimiser state
            assert_eq!(*held, if shard { total / 2 } else { total });
        }
    }
}

#[test]
fn a_rank_that_never_arrives_is_named() {
    tch::set_num_threads(1);
    let port = free_port();
    let cfg = DistributedConfig {
        timeout_s: 3.0,
        heartbeat_interval_s: 0.2,
        heartbeat_timeout_s: 60.0,
        ..DistributedConfig::default()
    };
    let done = Arc::new(Barrier::new(2));
    let lost = Arc::new(Mutex::new(Vec::<String>::new()));
    let results = on_ranks(2, {
        let (done, lost) = (done.clone(), lost.clone());
        move |rank| {
            let lost = lost.clone();
            let dp = DataParallel::init(
                &env(rank, 2, port),
                Backend::Gloo,
                &cfg,
                Box::new(move |msg: &str| lost.lock().unwrap().push(msg.to_string())),
            )
            .unwrap();
            let out = if rank == 0 {
                let started = Instant::now();
                let err = dp.barrier().unwrap_err().to_string();
                Some((err, started.elapsed()))
            } else {
                None
            };
            // rank 1 stays alive (beating) but skips the barrier until rank 0 gave up
            done.wait();
            out
        }
    });
    let (err, took) = results[0].clone().unwrap();
    println!("rank 0 after {:.1} s: {err}", took.as_secs_f64());
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(err.contains("barrier failed on rank 0"), "{err}");
    assert!(err.contains("rank 1 has not reached it"), "{err}");
    assert!(
        lost.lock().unwrap().is_empty(),
        "no rank was lost: {:?}",
        lost.lock().unwrap()
    );
}
