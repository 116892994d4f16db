//! Device and dtype selection shared by every subcommand (`--device cpu|cuda|cuda:K`,
//! `--dtype f32|bf16`).

use std::str::FromStr;

use tch::{Device, Kind};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("unknown device '{0}': expected cpu, cuda or cuda:K")]
    Unknown(String),
    #[error("device '{requested}' asked for, but CUDA is not available (libtorch sees {count} GPU(s); a CPU-only libtorch or a build without `--features cuda`?)")]
    NoCuda { requested: String, count: i64 },
    #[error("device cuda:{index} asked for, but only {count} GPU(s) are visible")]
    NoSuchGpu { index: usize, count: i64 },
    #[error("unknown dtype '{0}': expected f32 or bf16")]
    UnknownDtype(String),
}

/// A device as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceArg {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceArg::Cpu),
            "cuda" | "gpu" => Ok(DeviceArg::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(index)) => Ok(DeviceArg::Cuda(index)),
                _ => Err(DeviceError::Unknown(s.to_string())),
            },
        }
    }
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceArg::Cpu => write!(f, "cpu"),
            DeviceArg::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceArg {
    /// Resolves to a tch device, failing clearly when the GPU is not there.
    pub fn resolve(self) -> Result<Device, DeviceError> {
        match self {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Cuda(index) => {
                let count = tch::Cuda::device_count();
                if !tch::Cuda::is_available() {
                    return Err(DeviceError::NoCuda {
                        requested: self.to_string(),
                        count,
                    });
                }
                if index as i64 >= count {
                    return Err(DeviceError::NoSuchGpu { index, count });
                }
                Ok(Device::Cuda(index))
            }
        }
    }
}

/// Floating-point kind of weights and activations as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtypeArg {
    F32,
    Bf16,
}

impl FromStr for DtypeArg {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "float32" | "fp32" => Ok(DtypeArg::F32),
            "bf16" | "bfloat16" => Ok(DtypeArg::Bf16),
            _ => Err(DeviceError::UnknownDtype(s.to_string())),
        }
    }
}

impl DtypeArg {
    pub fn kind(self) -> Kind {
        match self {
            DtypeArg::F32 => Kind::Float,
            DtypeArg::Bf16 => Kind::BFloat16,
        }
    }
}

/// Signature of the CUDA runtime's `cudaGetDevice(int*)`.
type CudaGetDevice = unsafe extern "C" fn(*mut libc::c_int) -> libc::c_int;
/// Signature of the CUDA runtime's `cudaSetDevice(int)`.
type CudaSetDevice = unsafe extern "C" fn(libc::c_int) -> libc::c_int;
/// Signature of the CUDA runtime's `cudaMemGetInfo(size_t* free, size_t* total)`.
type CudaMemGetInfo = unsafe extern "C" fn(*mut libc::size_t, *mut libc::size_t) -> libc::c_int;
/// `cudaSuccess`.
const CUDA_SUCCESS: libc::c_int = 0;

/// The address of `name` among the symbols already loaded into the process, if any.
fn loaded_symbol(name: &std::ffi::CStr) -> Option<*mut libc::c_void> {
    // SAFETY: dlsym only reads the NUL-terminated name; RTLD_DEFAULT searches the libraries
    // already loaded and returns null when the symbol is absent.
    let ptr = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!ptr.is_null()).then_some(ptr)
}

/// Free and total memory of CUDA device `index` in bytes, from the CUDA runtime libtorch links
/// (`cudaMemGetInfo`, found among the loaded symbols, so no CUDA library is linked here). The
/// current device is switched for the query and restored. `None` when the runtime is absent
/// (a CPU-only libtorch) or any call fails (no driver, no such device).
pub fn cuda_memory_info(index: usize) -> Option<(u64, u64)> {
    let get = loaded_symbol(c"cudaGetDevice")?;
    let set = loaded_symbol(c"cudaSetDevice")?;
    let info = loaded_symbol(c"cudaMemGetInfo")?;
    let index = libc::c_int::try_from(index).ok()?;
    // SAFETY: the symbols are the CUDA runtime's exported C functions of these signatures
    // (stable across CUDA 11-13).
    let (get, set, info) = unsafe {
        (
            std::mem::transmute::<*mut libc::c_void, CudaGetDevice>(get),
            std::mem::transmute::<*mut libc::c_void, CudaSetDevice>(set),
            std::mem::transmute::<*mut libc::c_void, CudaMemGetInfo>(info),
        )
    };
    let mut previous: libc::c_int = 0;
    // SAFETY: `previous` is a valid out-pointer for the call's duration.
    if unsafe { get(&mut previous) } != CUDA_SUCCESS {
        return None;
    }
    // SAFETY: plain call with an integer argument; an invalid index returns an error code.
    if unsafe { set(index) } != CUDA_SUCCESS {
        return None;
    }
    let (mut free, mut total): (libc::size_t, libc::size_t) = (0, 0);
    // SAFETY: both out-pointers are valid for the call's duration.
    let status = unsafe { info(&mut free, &mut total) };
    // SAFETY: restores the device that was current before (a valid index: the runtime gave it).
    unsafe { set(previous) };
    (status == CUDA_SUCCESS).then_some((free as u64, total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceArg>().unwrap(), DeviceArg::Cpu);
        assert_eq!("cuda".parse::<DeviceArg>().unwrap(), DeviceArg::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceArg>().unwrap(), DeviceArg::Cuda(3));
        assert!("cuda:x".parse::<DeviceArg>().is_err());
        assert!("tpu".parse::<DeviceArg>().is_err());
    }

    #[test]
    fn cuda_request_fails_clearly_without_gpu() {
        if tch::Cuda::is_available() {
            return;
        }
        let err = DeviceArg::Cuda(0).resolve().unwrap_err().to_string();
        assert!(err.contains("CUDA is not available"), "{err}");
    }

    #[test]
    fn cuda_memory_query_without_gpu_is_none() {
        let info = cuda_memory_info(0);
        if tch::Cuda::is_available() {
            let (free, total) = info.expect("a visible GPU reports its memory");
            assert!(free <= total && total > 0);
        } else {
            assert_eq!(info, None);
        }
    }
}
