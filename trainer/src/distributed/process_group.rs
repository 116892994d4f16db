//! Safe handles over libtorch's c10d ([`super::ffi`]): the TCP rendezvous [`Store`] and a
//! [`ProcessGroup`] (Gloo on CPU, NCCL on CUDA) with the collectives the trainer uses. Every
//! collective waits for completion within the group's timeout and reports failures as
//! [`DistError::Collective`].

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::ptr::NonNull;
use std::time::Duration;

use tch::{Device, Tensor};

use super::ffi;
use super::{DistError, Result};

/// Takes the message of a failed call, freeing it.
fn take_message(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown error".into();
    }
    // SAFETY: `err` was allocated by `copy_message` in csrc/c10d.cpp as a NUL-terminated string
    // and is owned by us from here; it is read once and freed once.
    let msg = unsafe {
        let msg = CStr::from_ptr(err).to_string_lossy().into_owned();
        ffi::st_free_string(err);
        msg
    };
    // c10d appends where it was raised and, with TORCH_SHOW_CPP_STACKTRACES, a C++ stack
    let cut = msg.find("\nException raised from").unwrap_or(msg.len());
    msg[..cut].trim().to_string()
}

fn c_string(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| DistError::Invalid(format!("{what} {s:?} contains a NUL byte")))
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// The key-value store ranks meet at (`c10d::TCPStore`): rank 0 serves it on
/// `MASTER_ADDR:MASTER_PORT`, every rank (rank 0 too) is a client.
#[derive(Debug)]
pub struct Store {
    ptr: NonNull<ffi::StStore>,
    addr: String,
}

// SAFETY: a c10d::TCPStore client serialises its requests with an internal lock, so one handle
// may be used from several threads; the handle itself is only freed in Drop.
unsafe impl Send for Store {}
// SAFETY: as above; every method takes `&self` and c10d locks inside.
unsafe impl Sync for Store {}

impl Store {
    /// Connects to (and, with `is_server`, serves) the store at `host:port` as one of the
    /// `world` ranks, waiting up to `timeout` for the server or, on the server, for every
    /// rank to join.
    pub fn connect(
        host: &str,
        port: u16,
        is_server: bool,
        world: usize,
        timeout: Duration,
    ) -> Result<Self> {
        Self::open(host, port, is_server, world, true, timeout)
    }

    /// A further connection of a rank that already joined ([`Self::connect`]), e.g. for a
    /// background thread.
    pub fn connect_extra(host: &str, port: u16, timeout: Duration) -> Result<Self> {
        Self::open(host, port, false, 1, false, timeout)
    }

    fn open(
        host: &str,
        port: u16,
        is_server: bool,
        world: usize,
        join: bool,
        timeout: Duration,
    ) -> Result<Self> {
        let c_host = c_string(host, "MASTER_ADDR")?;
        let mut err = std::ptr::null_mut();
        // SAFETY: `c_host` outlives the call; `err` is a valid out-pointer.
        let ptr = unsafe {
            ffi::st_store_new(
                c_host.as_ptr(),
                i32::from(port),
                i32::from(is_server),
                world as i32,
                i32::from(join),
                millis(timeout),
                &mut err,
            )
        };
        NonNull::new(ptr)
            .map(|ptr| Store {
                ptr,
                addr: format!("{host}:{port}"),
            })
            .ok_or_else(|| DistError::Rendezvous {
                addr: format!("{host}:{port}"),
                msg: take_message(err),
            })
    }

    /// `host:port` of the store.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Adds `delta` to the counter at `key` (created at 0); returns its new value (`delta` 0
    /// reads it).
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let c_key = c_string(key, "store key")?;
        let mut value = 0i64;
        let mut err = std::ptr::null_mut();
        // SAFETY: the handle is live (owned by self); pointers are valid for the call.
        let rc = unsafe {
            ffi::st_store_add(
                self.ptr.as_ptr(),
                c_key.as_ptr(),
                delta,
                &mut value,
                &mut err,
            )
        };
        self.check(rc, err)?;
        Ok(value)
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let c_key = c_string(key, "store key")?;
        let mut err = std::ptr::null_mut();
        // SAFETY: as in `add`; `value` is valid for `value.len()` bytes.
        let rc = unsafe {
            ffi::st_store_set(
                self.ptr.as_ptr(),
                c_key.as_ptr(),
                value.as_ptr(),
                value.len(),
                &mut err,
            )
        };
        self.check(rc, err)
    }

    /// The value at `key`, `None` when it is not set (no waiting).
    pub fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let c_key = c_string(key, "store key")?;
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut len = 0usize;
        let mut found = 0;
        let mut err = std::ptr::null_mut();
        // SAFETY: as in `add`; on success `data` is a malloc'd buffer of `len` bytes we own.
        let rc = unsafe {
            ffi::st_store_try_get(
                self.ptr.as_ptr(),
                c_key.as_ptr(),
                &mut data,
                &mut len,
                &mut found,
                &mut err,
            )
        };
        self.check(rc, err)?;
        if found == 0 || data.is_null() {
            return Ok(None);
        }
        // SAFETY: `data` holds `len` initialised bytes (copied by st_store_try_get) and is freed
        // once, right after the copy.
        let value = unsafe {
            let v = std::slice::from_raw_parts(data, len).to_vec();
            ffi::st_free_string(data.cast());
            v
        };
        Ok(Some(value))
    }

    fn check(&self, rc: i32, err: *mut c_char) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        Err(DistError::Rendezvous {
            addr: self.addr.clone(),
            msg: take_message(err),
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: the handle was created by st_store_new and is freed once.
        unsafe { ffi::st_store_free(self.ptr.as_ptr()) }
    }
}

/// The collective-communication library of a [`ProcessGroup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Gloo (CPU tensors; TCP between processes).
    Gloo,
    /// NCCL (CUDA tensors; NVLink/InfiniBand between GPUs).
    Nccl,
}

impl Backend {
    /// NCCL for CUDA devices, Gloo otherwise (torch.distributed's default choice).
    pub fn for_device(device: Device) -> Self {
        match device {
            Device::Cuda(_) => Backend::Nccl,
            _ => Backend::Gloo,
        }
    }

    /// Whether this binary can create process groups of this backend.
    pub fn available(self) -> bool {
        match self {
            Backend::Gloo => true,
            // SAFETY: a constant query with no arguments.
            Backend::Nccl => unsafe { ffi::st_has_nccl() != 0 },
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

/// Reduction of a collective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

impl ReduceOp {
    fn code(self) -> i32 {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        }
    }
}

/// A c10d process group over all ranks of the job.
#[derive(Debug)]
pub struct ProcessGroup {
    ptr: NonNull<ffi::StGroup>,
    rank: usize,
    world: usize,
    backend: Backend,
}

// SAFETY: c10d backends are used from whichever thread issues a collective (PyTorch calls them
// from any Python thread); this handle is only freed in Drop.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Creates the group of `world` ranks through `store`; Gloo binds its transport to
    /// `hostname` (this rank's address as the others reach it). Collectives fail after `timeout`.
    pub fn new(
        store: &Store,
        backend: Backend,
        rank: usize,
        world: usize,
        hostname: &str,
        timeout: Duration,
    ) -> Result<Self> {
        if !backend.available() {
            return Err(DistError::Invalid(format!(
                "this binary has no {} process group: build with `--features cuda` and NCCL headers (docs/distributed.md)",
                backend.name()
            )));
        }
        let c_host = c_string(hostname, "hostname")?;
        let code = match backend {
            Backend::Gloo => 0,
            Backend::Nccl => 1,
        };
        let mut err = std::ptr::null_mut();
        // SAFETY: the store handle is live for the call (c10d keeps its own reference to the
        // store); the strings outlive the call.
        let ptr = unsafe {
            ffi::st_group_new(
                store.ptr.as_ptr(),
                code,
                rank as i32,
                world as i32,
                c_host.as_ptr(),
                millis(timeout),
                &mut err,
            )
        };
        let ptr = NonNull::new(ptr).ok_or_else(|| DistError::Rendezvous {
            addr: store.addr.clone(),
            msg: format!(
                "creating the {} process group: {}",
                backend.name(),
                take_message(err)
            ),
        })?;
        Ok(ProcessGroup {
            ptr,
            rank,
            world,
            backend,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn check(&self, op: &'static str, rc: i32, err: *mut c_char) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        Err(DistError::Collective {
            op,
            rank: self.rank,
            msg: take_message(err),
        })
    }

    fn contiguous(op: &'static str, t: &Tensor) -> Result<()> {
        if !t.is_contiguous() {
            return Err(DistError::Invalid(format!(
                "{op}: tensor is not contiguous"
            )));
        }
        Ok(())
    }

    /// Reduces `t` over all ranks in place.
    pub fn all_reduce(&self, t: &mut Tensor, op: ReduceOp) -> Result<()> {
        Self::contiguous("all_reduce", t)?;
        let mut err = std::ptr::null_mut();
        // SAFETY: `t` is a live tensor for the duration of the call, which completes the
        // collective before returning.
        let rc =
            unsafe { ffi::st_all_reduce(self.ptr.as_ptr(), t.as_mut_ptr(), op.code(), &mut err) };
        self.check("all_reduce", rc, err)
    }

    /// Copies `t` of rank `root` into `t` of every rank.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        Self::contiguous("broadcast", t)?;
        let mut err = std::ptr::null_mut();
        // SAFETY: as in `all_reduce`.
        let rc =
            unsafe { ffi::st_broadcast(self.ptr.as_ptr(), t.as_mut_ptr(), root as i32, &mut err) };
        self.check("broadcast", rc, err)
    }

    /// Fills `output` (`world × input.numel()` elements) with every rank's `input` in rank order.
    pub fn all_gather(&self, output: &mut Tensor, input: &Tensor) -> Result<()> {
        Self::contiguous("all_gather", output)?;
        Self::contiguous("all_gather", input)?;
        if output.numel() != input.numel() * self.world {
            return Err(DistError::Invalid(format!(
                "all_gather: output has {} elements, want {} × {}",
                output.numel(),
                self.world,
                input.numel()
            )));
        }
        let mut input = input.shallow_clone();
        let mut err = std::ptr::null_mut();
        // SAFETY: as in `all_reduce`; `input` is only read by c10d.
        let rc = unsafe {
            ffi::st_all_gather(
                self.ptr.as_ptr(),
                output.as_mut_ptr(),
                input.as_mut_ptr(),
                &mut err,
            )
        };
        self.check("all_gather", rc, err)
    }

    /// Fills `output` with the reduction over ranks of slice `rank` of `input`
    /// (`world × output.numel()` elements).
    pub fn reduce_scatter(&self, output: &mut Tensor, input: &Tensor, op: ReduceOp) -> Result<()> {
        Self::contiguous("reduce_scatter", output)?;
        Self::contiguous("reduce_scatter", input)?;
        if input.numel() != output.numel() * self.world {
            return Err(DistError::Invalid(format!(
                "reduce_scatter: input has {} elements, want {} × {}",
                input.numel(),
                self.world,
                output.numel()
            )));
        }
        let mut input = input.shallow_clone();
        let mut err = std::ptr::null_mut();
        // SAFETY: as in `all_gather`.
        let rc = unsafe {
            ffi::st_reduce_scatter(
                self.ptr.as_ptr(),
                output.as_mut_ptr(),
                input.as_mut_ptr(),
                op.code(),
                &mut err,
            )
        };
        self.check("reduce_scatter", rc, err)
    }

    /// Returns when every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        let mut err = std::ptr::null_mut();
        // SAFETY: the group handle is live.
        let rc = unsafe { ffi::st_barrier(self.ptr.as_ptr(), &mut err) };
        self.check("barrier", rc, err)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle was created by st_group_new and is freed once.
        unsafe { ffi::st_group_free(self.ptr.as_ptr()) }
    }
}
