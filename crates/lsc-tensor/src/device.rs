//! Where tensors live, and the run-time probe for a CUDA driver.
//!
//! Nothing here links against CUDA: the probe opens `libcuda` with `dlopen` at run time, so the
//! workspace builds and tests on machines without a GPU. GPU tests call [`probe_cuda`] and skip
//! with its reason, or fail when `LSC_REQUIRE_GPU=1` (see [`require_gpu`]).

use std::ffi::{c_char, c_int};

/// A compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A CUDA device by ordinal (storage arrives with the CUDA backend).
    Cuda(usize),
}

/// What the driver reported.
#[derive(Clone, Debug)]
pub struct CudaInfo {
    pub library: String,
    pub driver_version: i32,
    pub devices: Vec<String>,
}

/// Why no GPU can be used here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoGpu {
    /// No `libcuda` could be opened.
    NoDriver(String),
    /// The driver loaded but `cuInit` failed.
    InitFailed(i32),
    /// The driver reports zero devices.
    NoDevice,
}

impl std::fmt::Display for NoGpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoGpu::NoDriver(why) => write!(f, "no driver: {why}"),
            NoGpu::InitFailed(code) => write!(
                f,
                "driver present but cuInit failed with CUresult {code} (no usable device)"
            ),
            NoGpu::NoDevice => write!(f, "no device: the driver reports 0 CUDA devices"),
        }
    }
}

const LIBS: [&str; 2] = ["libcuda.so.1", "libcuda.so"];

/// Opens the CUDA driver at run time and lists its devices.
pub fn probe_cuda() -> Result<CudaInfo, NoGpu> {
    let mut errs = Vec::new();
    for name in LIBS {
        // SAFETY: loading libcuda runs its initialisers, which are designed to be loaded by any
        // process; we only call documented driver entry points with their C signatures below.
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => return query(&lib, name),
            Err(e) => errs.push(format!("{name}: {e}")),
        }
    }
    Err(NoGpu::NoDriver(errs.join("; ")))
}

fn query(lib: &libloading::Library, name: &str) -> Result<CudaInfo, NoGpu> {
    type Init = unsafe extern "C" fn(u32) -> c_int;
    type Count = unsafe extern "C" fn(*mut c_int) -> c_int;
    type Get = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
    type Name = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    type Version = unsafe extern "C" fn(*mut c_int) -> c_int;
    let missing = |s: &str, e: libloading::Error| NoGpu::NoDriver(format!("{name} lacks {s}: {e}"));
    // SAFETY: the symbol types match the CUDA driver API (cuda.h) for these five functions, and
    // the library outlives every call made through them in this function.
    unsafe {
        let init: libloading::Symbol<Init> = lib.get(b"cuInit\0").map_err(|e| missing("cuInit", e))?;
        let count: libloading::Symbol<Count> = lib
            .get(b"cuDeviceGetCount\0")
            .map_err(|e| missing("cuDeviceGetCount", e))?;
        let get: libloading::Symbol<Get> = lib.get(b"cuDeviceGet\0").map_err(|e| missing("cuDeviceGet", e))?;
        let dname: libloading::Symbol<Name> = lib
            .get(b"cuDeviceGetName\0")
            .map_err(|e| missing("cuDeviceGetName", e))?;
        let version: libloading::Symbol<Version> = lib
            .get(b"cuDriverGetVersion\0")
            .map_err(|e| missing("cuDriverGetVersion", e))?;
        let rc = init(0);
        if rc != 0 {
            return Err(NoGpu::InitFailed(rc));
        }
        let mut v = 0;
        version(&mut v);
        let mut n = 0;
        if count(&mut n) != 0 || n == 0 {
            return Err(NoGpu::NoDevice);
        }
        let mut devices = Vec::new();
        for i in 0..n {
            let mut dev = 0;
            let mut buf = [0 as c_char; 256];
            let s = if get(&mut dev, i) == 0 && dname(buf.as_mut_ptr(), 256, dev) == 0 {
                std::ffi::CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
            } else {
                format!("device {i} (name unavailable)")
            };
            devices.push(s);
        }
        Ok(CudaInfo {
            library: name.to_string(),
            driver_version: v,
            devices,
        })
    }
}

/// True when `LSC_REQUIRE_GPU=1`: a missing GPU must then fail instead of skip.
pub fn gpu_required() -> bool {
    std::env::var("LSC_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// For GPU tests: `Some(info)` when a GPU is usable; otherwise prints a visible skip line and
/// returns `None`, or panics when `LSC_REQUIRE_GPU=1`.
pub fn require_gpu(test: &str) -> Option<CudaInfo> {
    match probe_cuda() {
        Ok(info) => Some(info),
        Err(why) if gpu_required() => panic!("{test}: LSC_REQUIRE_GPU=1 but no GPU: {why}"),
        Err(why) => {
            eprintln!("SKIPPED (GPU column) {test}: {why}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GPU column's probe: with a GPU it must list at least one named device.
    #[test]
    fn gpu_probe_lists_devices() {
        if let Some(info) = require_gpu("gpu_probe_lists_devices") {
            assert!(!info.devices.is_empty());
            assert!(info.driver_version > 0, "driver version {}", info.driver_version);
        }
    }

    #[test]
    fn missing_driver_is_reported_by_name() {
        let reason = NoGpu::NoDriver("libcuda.so.1: cannot open".into()).to_string();
        assert!(reason.starts_with("no driver: libcuda.so.1"));
        assert!(NoGpu::NoDevice.to_string().contains("0 CUDA devices"));
    }
}
