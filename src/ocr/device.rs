//! Device and dtype choice (`auto|cpu|cuda|cuda:N`, `bf16|f16|f32`) and libtorch facts.

use tch::{Cuda, Device, Kind};

use super::error::{OcrError, Result};

/// Parse a device name: `auto` (CUDA 0 when available, else CPU), `cpu`, `cuda`, `cuda:N`.
/// A CUDA device that this machine does not have is an error.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    let device = match name.as_str() {
        "auto" => return Ok(Device::cuda_if_available()),
        "cpu" => Device::Cpu,
        "cuda" | "gpu" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Device::Cuda(i),
            _ => {
                return Err(OcrError::Invalid(format!(
                    "unknown device {name:?}: use auto, cpu, cuda or cuda:N"
                )));
            }
        },
    };
    if let Device::Cuda(i) = device {
        let count = Cuda::device_count().max(0) as usize;
        if i >= count {
            return Err(OcrError::Invalid(format!(
                "device cuda:{i} is not available (this machine has {count} CUDA device(s)); \
                 use --device cpu"
            )));
        }
    }
    Ok(device)
}

/// Parse a compute dtype: `bf16`/`bfloat16`, `f16`/`float16`/`half`, `f32`/`float32`/`float`.
pub fn parse_kind(name: &str) -> Result<Kind> {
    match name.trim().to_ascii_lowercase().as_str() {
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "f16" | "fp16" | "float16" | "half" => Ok(Kind::Half),
        "f32" | "fp32" | "float32" | "float" => Ok(Kind::Float),
        other => Err(OcrError::Invalid(format!(
            "unknown dtype {other:?}: use bf16, f16 or f32"
        ))),
    }
}

/// The compute dtype when none is asked for, on `device`: bf16 on every device today (the
/// checkpoint's own dtype; where dsocr's CPU kernels run, the bf16 weights are multiplied in
/// f32). The one place a per-device default would go.
pub fn default_kind(_device: Device) -> Kind {
    Kind::BFloat16
}

/// The dtype asked for (`--dtype`, the config file's `[ocr] dtype`), else the default for
/// `device`.
pub fn kind_or_default(dtype: Option<&str>, device: Device) -> Result<Kind> {
    dtype.map_or(Ok(default_kind(device)), parse_kind)
}

/// Short name of a compute dtype (`bf16`, `f16`, `f32`), for reports.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        Kind::Float => "f32",
        Kind::Double => "f64",
        _ => "other",
    }
}

/// Short name of a device (`cpu`, `cuda:0`), for reports.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// What libtorch reports about itself and the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchInfo {
    /// CUDA runtime version libtorch was built with, as `12.8` (None for a CPU-only build).
    pub cuda_runtime: Option<String>,
    /// cuDNN version (None when absent).
    pub cudnn: Option<i64>,
    pub cuda_available: bool,
    pub cuda_device_count: i64,
    /// Intra-op threads libtorch uses on the CPU.
    pub cpu_threads: i32,
}

/// Collect [`TorchInfo`].
pub fn torch_info() -> TorchInfo {
    let cuda_available = Cuda::is_available();
    let (cuda_runtime, cudnn) = if cuda_available {
        let v = tch::utils::version_cudart();
        let runtime = (v > 0).then(|| format!("{}.{}", v / 1000, (v % 1000) / 10));
        let cudnn = Some(tch::utils::version_cudnn()).filter(|v| *v > 0);
        (runtime, cudnn)
    } else {
        (None, None)
    };
    TorchInfo {
        cuda_runtime,
        cudnn,
        cuda_available,
        cuda_device_count: Cuda::device_count(),
        cpu_threads: tch::get_num_threads(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!(parse_device("cpu").ok(), Some(Device::Cpu));
        assert_eq!(parse_device(" CPU ").ok(), Some(Device::Cpu));
        let auto = parse_device("auto").ok();
        assert_eq!(auto, Some(Device::cuda_if_available()));
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        // A device index past the machine's count is refused with a hint.
        let err = parse_device("cuda:999").unwrap_err().to_string();
        assert!(
            err.contains("cuda:999") && err.contains("--device cpu"),
            "{err}"
        );
    }

    #[test]
    fn parses_kinds() {
        assert_eq!(parse_kind("bf16").ok(), Some(Kind::BFloat16));
        assert_eq!(parse_kind("float16").ok(), Some(Kind::Half));
        assert_eq!(parse_kind("F32").ok(), Some(Kind::Float));
        assert!(parse_kind("int8").is_err());
        // No dtype: bf16 everywhere.
        for device in [Device::Cpu, Device::Cuda(0)] {
            assert_eq!(default_kind(device), Kind::BFloat16);
            assert_eq!(kind_or_default(None, device).ok(), Some(Kind::BFloat16));
        }
        assert_eq!(
            kind_or_default(Some("f32"), Device::Cpu).ok(),
            Some(Kind::Float)
        );
        assert!(kind_or_default(Some("int8"), Device::Cpu).is_err());
        assert_eq!(kind_name(Kind::BFloat16), "bf16");
        assert_eq!(device_name(Device::Cuda(1)), "cuda:1");
    }

    #[test]
    fn reports_torch_facts() {
        let info = torch_info();
        assert_eq!(info.cuda_available, Cuda::is_available());
        assert!(info.cpu_threads >= 1);
        if !info.cuda_available {
            assert_eq!(info.cuda_runtime, None);
        }
    }
}
