//! Where a rank learns its place in the job: the environment torchrun (and
//! `spatialthinker launch`) sets, or Slurm's for `srun` (docs/distributed.md, "Launching").

use super::{DistError, Result};

/// torchrun's default rendezvous port.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// Which launcher described the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// torchrun or `spatialthinker launch` (RANK, WORLD_SIZE, …).
    Torchrun,
    /// Slurm `srun` (SLURM_PROCID, SLURM_NTASKS, …).
    Slurm,
}

/// One rank's view of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// Global rank, 0-based.
    pub rank: usize,
    /// Rank within its node (the CUDA device it uses).
    pub local_rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// Ranks on this node.
    pub local_world_size: usize,
    /// Host of the rendezvous store (rank 0's node).
    pub master_addr: String,
    /// Port of the rendezvous store.
    pub master_port: u16,
    /// Where these came from.
    pub launcher: Launcher,
}

impl DistEnv {
    /// The job described by this process's environment, `None` for a single process (no
    /// launcher variables, or a world of one).
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Self::from_env`] over any variable lookup (tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let num = |key: &str| -> Result<Option<usize>> {
            get(key)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        DistError::Env(format!("{key}={v:?} is not a non-negative integer"))
                    })
                })
                .transpose()
        };
        let port = || -> Result<u16> {
            match get("MASTER_PORT") {
                None => Ok(DEFAULT_MASTER_PORT),
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| DistError::Env(format!("MASTER_PORT={v:?} is not a port"))),
            }
        };
        let env = if let (Some(rank), Some(world)) = (num("RANK")?, num("WORLD_SIZE")?) {
            let master_addr = get("MASTER_ADDR").ok_or_else(|| {
                DistError::Env("RANK and WORLD_SIZE are set but MASTER_ADDR is not".into())
            })?;
            DistEnv {
                rank,
                local_rank: num("LOCAL_RANK")?.unwrap_or(rank),
                world_size: world,
                local_world_size: num("LOCAL_WORLD_SIZE")?.unwrap_or(world),
                master_addr,
                master_port: port()?,
                launcher: Launcher::Torchrun,
            }
        } else if let (Some(rank), Some(world)) = (num("SLURM_PROCID")?, num("SLURM_NTASKS")?) {
            let master_addr = match get("MASTER_ADDR") {
                Some(a) => a,
                None => {
                    let list = get("SLURM_STEP_NODELIST")
                        .or_else(|| get("SLURM_JOB_NODELIST"))
                        .or_else(|| get("SLURM_NODELIST"))
                        .ok_or_else(|| {
                            DistError::Env(
                                "SLURM_PROCID is set but neither MASTER_ADDR nor SLURM_NODELIST is"
                                    .into(),
                            )
                        })?;
                    first_host(&list)?
                }
            };
            let local_world = match get("SLURM_NTASKS_PER_NODE")
                .or_else(|| get("SLURM_STEP_TASKS_PER_NODE"))
                .or_else(|| get("SLURM_TASKS_PER_NODE"))
            {
                Some(v) => Some(leading_count(&v).ok_or_else(|| {
                    DistError::Env(format!("SLURM tasks per node {v:?} is not a count"))
                })?),
                None => None,
            };
            DistEnv {
                rank,
                local_rank: num("SLURM_LOCALID")?.unwrap_or(0),
                world_size: world,
                local_world_size: local_world.unwrap_or(world),
                master_addr,
                master_port: port()?,
                launcher: Launcher::Slurm,
            }
        } else {
            return Ok(None);
        };
        if env.world_size == 0 || env.rank >= env.world_size {
            return Err(DistError::Env(format!(
                "rank {} is outside a world of {}",
                env.rank, env.world_size
            )));
        }
        if env.local_rank >= env.local_world_size.max(1) {
            return Err(DistError::Env(format!(
                "local rank {} is outside a node of {} ranks",
                env.local_rank, env.local_world_size
            )));
        }
        Ok((env.world_size > 1).then_some(env))
    }
}

/// The count at the start of a Slurm tasks-per-node value (`4(x2),3` → 4).
fn leading_count(v: &str) -> Option<usize> {
    let digits: String = v.trim().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The first host of a Slurm node list: `gpu[03-05,07],cpu1` → `gpu03`, `a,b` → `a`,
/// `node-[1-4]` → `node-1` (the host rank 0 runs on under the default block distribution).
pub fn first_host(nodelist: &str) -> Result<String> {
    let list = nodelist.trim();
    let bad = || DistError::Env(format!("cannot read the Slurm node list {nodelist:?}"));
    // the first entry ends at the first comma outside brackets
    let mut depth = 0usize;
    let mut end = list.len();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1).ok_or_else(bad)?,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let entry = &list[..end];
    let Some(open) = entry.find('[') else {
        return if entry.is_empty() {
            Err(bad())
        } else {
            Ok(entry.to_string())
        };
    };
    let close = entry.rfind(']').ok_or_else(bad)?;
    let prefix = &entry[..open];
    let suffix = &entry[close + 1..];
    let first = entry[open + 1..close].split(',').next().ok_or_else(bad)?;
    let first = first.split('-').next().ok_or_else(bad)?;
    if prefix.is_empty() && first.is_empty() {
        return Err(bad());
    }
    Ok(format!("{prefix}{first}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DistEnv::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn slurm_node_lists() {
        assert_eq!(first_host("gpu[03-05,07],cpu1").unwrap(), "gpu03");
        assert_eq!(first_host("a,b").unwrap(), "a");
        assert_eq!(first_host("node-[1-4]").unwrap(), "node-1");
        assert_eq!(first_host("n[7]").unwrap(), "n7");
        assert_eq!(first_host("solo").unwrap(), "solo");
        assert_eq!(first_host("rack[2-3]-gpu").unwrap(), "rack2-gpu");
        assert!(first_host("").is_err());
        assert!(first_host("n]1[").is_err());
    }

    #[test]
    fn torchrun_environment() {
        let e = env(&[
            ("RANK", "5"),
            ("LOCAL_RANK", "1"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29501"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (e.rank, e.local_rank, e.world_size, e.local_world_size),
            (5, 1, 8, 4)
        );
        assert_eq!((e.master_addr.as_str(), e.master_port), ("10.0.0.1", 29501));
        assert_eq!(e.launcher, Launcher::Torchrun);
    }

    #[test]
    fn slurm_environment() {
        let e = env(&[
            ("SLURM_PROCID", "6"),
            ("SLURM_LOCALID", "2"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_TASKS_PER_NODE", "4(x2)"),
            ("SLURM_JOB_NODELIST", "gpu[11-12]"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (e.rank, e.local_rank, e.world_size, e.local_world_size),
            (6, 2, 8, 4)
        );
        assert_eq!(
            (e.master_addr.as_str(), e.master_port),
            ("gpu11", DEFAULT_MASTER_PORT)
        );
        assert_eq!(e.launcher, Launcher::Slurm);
    }

    #[test]
    fn single_process_and_bad_values() {
        assert_eq!(env(&[]).unwrap(), None);
        assert_eq!(
            env(&[("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "h")]).unwrap(),
            None
        );
        let err = env(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]).unwrap_err();
        assert!(
            err.to_string().contains("rank 2 is outside a world of 2"),
            "{err}"
        );
        let err = env(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(err.to_string().contains("RANK=\"x\""), "{err}");
        let err = env(&[("RANK", "0"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(err.to_string().contains("MASTER_ADDR"), "{err}");
    }
}
