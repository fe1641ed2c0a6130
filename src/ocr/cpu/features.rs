//! The one place that checks what the CPU can do, and the compute-path switch built on it.
//!
//! A [`Tier`] names an instruction set dsocr has kernels for. An [`Isa`] is proof that this CPU
//! has a tier: it can only be made by [`Isa::new`] (or [`Isa::best`]), which runs the feature
//! check. Every kernel entry point in [`super`] takes an `Isa` and dispatches on it, so a safe
//! function can never reach an instruction the CPU lacks: the `unsafe` calls into
//! `#[target_feature]` code rest on the check made when the `Isa` was built.
//!
//! [`Kernels`] is what a user asks for (`--kernels`, `DSOCR_KERNELS`, `[ocr] kernels`);
//! [`Kernels::plan`] turns it into a [`Plan`]: for each phase (vision, prefill, decode) either
//! libtorch's own ops (the sequence CUDA runs) or the kernels of one tier.

use std::fmt;

use tch::{Device, Kind};

use crate::ocr::error::{OcrError, Result};

/// An instruction-set tier of the CPU kernels, fastest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// AVX-512F (x86-64): every kernel, including SAM's fused attention.
    Avx512,
    /// AVX2 with FMA (x86-64): the matrix-vector and few-row products.
    Avx2,
    /// Portable Rust, vectorised by the compiler for the target's baseline (SSE2, NEON): the
    /// same kernels as AVX2, on any CPU.
    Scalar,
}

impl Tier {
    /// Every tier, fastest first.
    pub const ALL: [Tier; 3] = [Tier::Avx512, Tier::Avx2, Tier::Scalar];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Avx512 => "avx512",
            Tier::Avx2 => "avx2",
            Tier::Scalar => "scalar",
        }
    }

    /// The CPU features the tier needs, in words (for errors and skipped tests).
    pub fn needs(self) -> &'static str {
        match self {
            Tier::Avx512 => "an x86-64 CPU with avx512f",
            Tier::Avx2 => "an x86-64 CPU with avx2 and fma",
            Tier::Scalar => "nothing",
        }
    }

    /// Whether this CPU has the tier's instructions.
    pub fn supported(self) -> bool {
        match self {
            Tier::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Tier::Avx512 | Tier::Avx2 => false,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A tier this CPU has (see the module docs): the token every kernel takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Isa {
    tier: Tier,
}

impl Isa {
    /// `tier`, if this CPU has it.
    pub fn new(tier: Tier) -> Option<Self> {
        tier.supported().then_some(Self { tier })
    }

    /// The fastest tier this CPU has.
    pub fn best() -> Self {
        Tier::ALL
            .into_iter()
            .find_map(Self::new)
            .unwrap_or(Self { tier: Tier::Scalar })
    }

    /// The portable tier (every CPU has it).
    pub fn scalar() -> Self {
        Self { tier: Tier::Scalar }
    }

    pub fn tier(self) -> Tier {
        self.tier
    }
}

/// True when the CPU has bf16 matrix instructions (`avx512_bf16` or AMX), the ones libtorch's
/// bf16 matmuls need to be fast (read once from `/proc/cpuinfo`; false elsewhere).
pub fn has_bf16_matmul() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
            info.lines()
                .find(|l| l.starts_with("flags"))
                .is_some_and(|l| {
                    l.split_whitespace()
                        .any(|f| f == "avx512_bf16" || f == "amx_bf16")
                })
        })
    })
}

/// The compute path a user asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Kernels {
    /// Per phase, what is fastest on this CPU (see [`Kernels::plan`]); libtorch on CUDA.
    #[default]
    Auto,
    /// libtorch's ops only: exactly the sequence CUDA runs, no CPU-only kernel.
    Libtorch,
    /// The kernels of one tier in every phase (refused when the CPU lacks it).
    Tier(Tier),
}

/// The environment variable that picks the compute path when no flag does.
pub const KERNELS_ENV: &str = "DSOCR_KERNELS";

impl Kernels {
    /// The accepted names, for help and errors.
    pub const NAMES: &'static str = "auto, libtorch, avx512, avx2, scalar";

    /// Parse `auto|libtorch|avx512|avx2|scalar` (case and surrounding space ignored).
    pub fn parse(name: &str) -> Result<Self> {
        let name = name.trim().to_ascii_lowercase();
        if let Some(tier) = Tier::ALL.into_iter().find(|t| t.name() == name) {
            return Ok(Kernels::Tier(tier));
        }
        match name.as_str() {
            "auto" | "" => Ok(Kernels::Auto),
            "libtorch" | "torch" => Ok(Kernels::Libtorch),
            _ => Err(OcrError::Invalid(format!(
                "unknown kernels {name:?}: use one of {}",
                Self::NAMES
            ))),
        }
    }

    /// `$DSOCR_KERNELS`, or auto when it is unset. An unknown value is an error.
    pub fn from_env() -> Result<Self> {
        match std::env::var(KERNELS_ENV) {
            Ok(v) => Self::from_env_value(&v),
            Err(_) => Ok(Kernels::Auto),
        }
    }

    /// A value of `$DSOCR_KERNELS`, parsed; an unknown one is an error that names the variable.
    pub fn from_env_value(v: &str) -> Result<Self> {
        Self::parse(v).map_err(|e| OcrError::Invalid(format!("{KERNELS_ENV}={v:?}: {e}")))
    }

    /// The name of the choice (`auto`, `libtorch`, a tier).
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Auto => "auto",
            Kernels::Libtorch => "libtorch",
            Kernels::Tier(t) => t.name(),
        }
    }

    /// The plan for a model on `device`. On CUDA every phase is libtorch (a CPU tier asked for
    /// there is refused). On the CPU, `auto` runs every phase on the fastest tier this CPU has
    /// (x86-64), or on libtorch where dsocr has no SIMD kernels (other architectures); a tier
    /// the CPU lacks is refused with what it needs.
    pub fn plan(self, device: Device) -> Result<Plan> {
        if device != Device::Cpu {
            return match self {
                Kernels::Auto | Kernels::Libtorch => Ok(Plan::libtorch()),
                Kernels::Tier(t) => Err(OcrError::Invalid(format!(
                    "--kernels {t} runs on the CPU, but the model is on {device:?}: use \
                     --kernels auto or libtorch with a GPU, or --device cpu"
                ))),
            };
        }
        match self {
            Kernels::Libtorch => Ok(Plan::libtorch()),
            Kernels::Tier(t) => Isa::new(t).map(Plan::all).ok_or_else(|| {
                OcrError::Invalid(format!(
                    "--kernels {t} needs {}; this CPU has {} (use --kernels auto)",
                    t.needs(),
                    Isa::best().tier()
                ))
            }),
            Kernels::Auto => Ok(Self::auto_plan()),
        }
    }

    /// `auto` on this CPU; see BENCHMARKS.md ("How auto decides") for the measurements.
    fn auto_plan() -> Plan {
        let best = Isa::best();
        if cfg!(target_arch = "x86_64") {
            Plan::all(best)
        } else {
            Plan::libtorch()
        }
    }
}

/// Where one phase's work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// libtorch's ops (the CUDA sequence).
    Libtorch,
    /// dsocr's CPU kernels of this tier where they exist, libtorch's ops for the rest.
    Kernels(Isa),
}

impl Path {
    /// The tier, when the path is the CPU kernels.
    pub fn isa(self) -> Option<Isa> {
        match self {
            Path::Libtorch => None,
            Path::Kernels(isa) => Some(isa),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Path::Libtorch => "libtorch",
            Path::Kernels(isa) => isa.tier().name(),
        }
    }
}

/// The compute path of each phase of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// SAM, CLIP and the projector.
    pub vision: Path,
    /// The decoder over the whole prompt.
    pub prefill: Path,
    /// One token at a time.
    pub decode: Path,
}

impl Plan {
    /// libtorch's ops in every phase.
    pub fn libtorch() -> Self {
        Self {
            vision: Path::Libtorch,
            prefill: Path::Libtorch,
            decode: Path::Libtorch,
        }
    }

    /// The kernels of `isa` in every phase.
    pub fn all(isa: Isa) -> Self {
        let p = Path::Kernels(isa);
        Self {
            vision: p,
            prefill: p,
            decode: p,
        }
    }

    /// True when no phase uses dsocr's CPU kernels.
    pub fn is_libtorch(&self) -> bool {
        [self.vision, self.prefill, self.decode]
            .iter()
            .all(|p| *p == Path::Libtorch)
    }

    /// The dtype of activations and arithmetic for weights stored in `stored` on `device`: the
    /// stored dtype on libtorch's path (as on CUDA); f32 over bf16 or f16 weights when the CPU
    /// kernels run (the weights stay narrow in memory and are widened in registers).
    pub fn compute_kind(&self, device: Device, stored: Kind) -> Kind {
        let narrow = matches!(stored, Kind::BFloat16 | Kind::Half);
        if device == Device::Cpu && narrow && !self.is_libtorch() {
            Kind::Float
        } else {
            stored
        }
    }

    /// `libtorch`, a tier name when every phase runs it, or `vision X, prefill Y, decode Z`.
    pub fn describe(&self) -> String {
        let names = [self.vision.name(), self.prefill.name(), self.decode.name()];
        if names.iter().all(|n| *n == names[0]) {
            names[0].to_string()
        } else {
            format!(
                "vision {}, prefill {}, decode {}",
                names[0], names[1], names[2]
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_name_and_refuses_others() {
        assert_eq!(Kernels::parse("auto").ok(), Some(Kernels::Auto));
        assert_eq!(Kernels::parse(" LibTorch ").ok(), Some(Kernels::Libtorch));
        for t in Tier::ALL {
            assert_eq!(Kernels::parse(t.name()).ok(), Some(Kernels::Tier(t)));
        }
        let err = Kernels::parse("sse9").unwrap_err().to_string();
        assert!(err.contains("sse9") && err.contains("avx2"), "{err}");
    }

    #[test]
    fn plans_follow_the_cpu() {
        assert!(
            Kernels::Libtorch
                .plan(Device::Cpu)
                .expect("libtorch")
                .is_libtorch()
        );
        for t in Tier::ALL {
            match Kernels::Tier(t).plan(Device::Cpu) {
                Ok(plan) => {
                    assert!(t.supported(), "{t} planned on a CPU without it");
                    assert_eq!(plan.describe(), t.name());
                    assert_eq!(plan.decode.isa().map(Isa::tier), Some(t));
                }
                Err(e) => {
                    assert!(!t.supported(), "{t} refused on a CPU with it: {e}");
                    assert!(e.to_string().contains(t.needs()), "{e}");
                }
            }
        }
        // A CPU tier with a GPU model is refused; auto there is libtorch.
        assert!(Kernels::Tier(Tier::Scalar).plan(Device::Cuda(0)).is_err());
        assert!(
            Kernels::Auto
                .plan(Device::Cuda(0))
                .expect("auto")
                .is_libtorch()
        );
        assert_eq!(Isa::scalar().tier(), Tier::Scalar);
        assert!(Isa::best().tier().supported());
    }

    #[test]
    fn compute_kind_follows_the_plan() {
        let kernels = Plan::all(Isa::scalar());
        assert_eq!(
            kernels.compute_kind(Device::Cpu, Kind::BFloat16),
            Kind::Float
        );
        assert_eq!(kernels.compute_kind(Device::Cpu, Kind::Float), Kind::Float);
        let torch = Plan::libtorch();
        assert_eq!(
            torch.compute_kind(Device::Cpu, Kind::BFloat16),
            Kind::BFloat16
        );
        assert_eq!(
            torch.compute_kind(Device::Cuda(0), Kind::BFloat16),
            Kind::BFloat16
        );
        let mixed = Plan {
            decode: Path::Libtorch,
            ..kernels
        };
        assert_eq!(
            mixed.describe(),
            "vision scalar, prefill scalar, decode libtorch"
        );
    }
}
