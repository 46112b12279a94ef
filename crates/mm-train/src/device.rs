//! Run-time device selection: the backend lives in the `Device`, so this is the only place
//! that names backends.

use burn::tensor::Device;
use clap::Args;

/// The device a command runs its model on, as training's `device` key names it.
#[derive(Args, Debug)]
pub struct DeviceArg {
    /// Device to run on (flex, wgpu, cuda, cuda:N).
    #[arg(long = "device", default_value = "flex")]
    pub name: String,
}

impl DeviceArg {
    pub fn device(&self) -> Result<Device, DeviceError> {
        parse_device(&self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}` (expected flex, wgpu, cuda or cuda:N)")]
    Unknown(String),
    #[error("device `{0}` needs mm-train built with `--features {1}`")]
    NotCompiled(String, &'static str),
}

/// `flex` (pure-Rust CPU), `wgpu` (any GPU through wgpu), `cuda` / `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device, DeviceError> {
    let (kind, index) = match name.split_once(':') {
        Some((kind, index)) => (kind, Some(index)),
        None => (name, None),
    };
    match (kind, index) {
        ("flex" | "cpu", None) => Ok(Device::flex()),
        ("wgpu", None) => wgpu_device(name),
        ("cuda", index) => {
            let index = index.unwrap_or("0");
            let index: usize = index
                .parse()
                .map_err(|_| DeviceError::Unknown(name.into()))?;
            cuda_device(name, index)
        }
        _ => Err(DeviceError::Unknown(name.into())),
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device(_name: &str) -> Result<Device, DeviceError> {
    Ok(Device::wgpu(Default::default()))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device(name: &str) -> Result<Device, DeviceError> {
    Err(DeviceError::NotCompiled(name.into(), "wgpu"))
}

#[cfg(feature = "cuda")]
fn cuda_device(_name: &str, index: usize) -> Result<Device, DeviceError> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(name: &str, _index: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::NotCompiled(name.into(), "cuda"))
}
