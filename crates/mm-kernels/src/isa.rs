//! Which instruction set the kernels run on: the one place that looks at the CPU.
//!
//! Every kernel with more than one build (the fp32 and bf16 GEMMs, the element-wise maps) asks
//! [`isa`] at run time, never `cfg(target_feature)`, so one binary runs on any x86-64 CPU and
//! takes the widest path it has. `MM_MAX_ISA` caps the choice (`avx512-bf16`, `avx512`,
//! `avx2`, `scalar`), so that every path can be run and measured on the widest machine: the
//! side-by-side bench caps PyTorch alike, and CI runs the parity tests under each cap. burn's
//! own Flex ops (element-wise, convolution, embedding) dispatch by themselves and are not
//! capped.

use std::fmt;
use std::sync::OnceLock;

/// The environment variable that caps [`isa`].
pub const MAX_ISA_VAR: &str = "MM_MAX_ISA";

/// The kernel builds, from narrowest to widest; each implies the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// No hand-written vector code: what the compiler makes of the target's baseline (SSE2 on
    /// x86-64, NEON on aarch64).
    Scalar,
    /// 256-bit AVX2 with FMA (Zen 2/3, Intel since Haswell).
    Avx2,
    /// 512-bit AVX-512 F/BW/VL with FMA (Zen 4/5, Intel server).
    Avx512,
    /// AVX-512 with `vdpbf16ps` (AVX512-BF16: Zen 4/5, Sapphire Rapids): the bf16 GEMM.
    Avx512Bf16,
}

impl Isa {
    const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16];

    /// The name `MM_MAX_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512-bf16",
        }
    }

    /// The widest build this CPU can run.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("fma");
            if avx512 && has!("avx512bf16") {
                return Isa::Avx512Bf16;
            }
            if avx512 {
                return Isa::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// The cap `value` names (a value of `MM_MAX_ISA`), or why it names none.
    pub fn parse(value: &str) -> Result<Isa, String> {
        let wanted = value.trim().to_ascii_lowercase().replace('_', "-");
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<_> = Isa::ALL.iter().map(|isa| isa.name()).collect();
                format!("{MAX_ISA_VAR}={value:?} is not one of {}", names.join(", "))
            })
    }

    /// `MM_MAX_ISA`'s cap: `None` when unset or empty, an error when it names nothing.
    pub fn cap_from_env() -> Result<Option<Isa>, String> {
        match std::env::var(MAX_ISA_VAR) {
            Ok(value) if !value.trim().is_empty() => Isa::parse(&value).map(Some),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("{MAX_ISA_VAR} is not valid UTF-8"))
            }
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The build the kernels use: the CPU's widest, lowered to `MM_MAX_ISA` when that is set.
/// Read once per process. A cap the variable does not name is ignored here; programs call
/// [`check_cap`] first to refuse it.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let detected = Isa::detected();
        match Isa::cap_from_env() {
            Ok(Some(cap)) => detected.min(cap),
            _ => detected,
        }
    })
}

/// An error naming `MM_MAX_ISA` and the values it takes when it is set to anything else.
pub fn check_cap() -> Result<(), String> {
    Isa::cap_from_env().map(|_| ())
}

/// One line saying which paths this CPU gets, for logs and `--version`.
pub fn describe() -> String {
    let (detected, used) = (Isa::detected(), isa());
    let gemm = match used {
        Isa::Avx512 | Isa::Avx512Bf16 => "fp32 GEMM the gemm crate's AVX-512",
        Isa::Avx2 => "fp32 GEMM AVX2+FMA 6x16",
        Isa::Scalar => "fp32 GEMM portable 4x16",
    };
    let bf16 = match used {
        Isa::Avx512Bf16 => "bf16 GEMM vdpbf16ps",
        _ => "bf16 GEMM unavailable (bf16 runs fp32 GEMMs)",
    };
    let cap = match used < detected {
        true => format!(", capped by {MAX_ISA_VAR} from {detected}"),
        false => String::new(),
    };
    format!("kernels: {used}{cap} ({gemm}; {bf16})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_parse_and_order() {
        assert_eq!(Isa::parse("AVX2"), Ok(Isa::Avx2));
        assert_eq!(Isa::parse(" avx512_bf16 "), Ok(Isa::Avx512Bf16));
        assert_eq!(Isa::parse("scalar"), Ok(Isa::Scalar));
        let err = Isa::parse("sse4").unwrap_err();
        assert!(err.contains("MM_MAX_ISA") && err.contains("avx2"), "{err}");
        assert!(Isa::Scalar < Isa::Avx2 && Isa::Avx512 < Isa::Avx512Bf16);
        assert!(isa() <= Isa::detected());
    }
}
