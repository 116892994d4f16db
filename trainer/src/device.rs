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
}
