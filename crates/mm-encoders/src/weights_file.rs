//! What every weights loader (mm's own, HF, open_clip) checks of a safetensors file before
//! trusting it, and the dtype its tensors are loaded in.
//!
//! The safetensors crate and burn's store read the header into a map, so a tensor named twice
//! silently takes one of its two values; and a loaded float tensor keeps the file's dtype, so
//! an fp16, bf16 or f64 file would put half- or double-precision parameters into an f32
//! model. Here both are settled once.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::path::Path;

use burn::store::FloatCastAdapter;
use burn::tensor::DType;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::hf::HfError;

/// The dtype parameters are loaded in, whatever the file holds: the fp32 master weights that
/// training updates and inference casts from (see mm-train's `precision`).
pub const LOAD_DTYPE: DType = DType::F32;

/// A header larger than this is not a weights file (the safetensors crate's own limit).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// Float tensors of any dtype (f16, bf16, f32, f64) converted to [`LOAD_DTYPE`] as they load.
pub fn to_load_dtype() -> FloatCastAdapter {
    FloatCastAdapter::to(LOAD_DTYPE)
}

/// Checks that `path` is a regular file whose safetensors header names each tensor once.
pub fn check_header(path: &Path) -> Result<(), HfError> {
    let fail = |message: String| HfError::Weights {
        path: path.display().to_string(),
        message,
    };
    let mut file = mm_data::regular_file::open_regular(path).map_err(|e| fail(e.to_string()))?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length)
        .map_err(|_| fail("not safetensors: shorter than its header".into()))?;
    let length = u64::from_le_bytes(length);
    if length > MAX_HEADER_BYTES {
        return Err(fail(format!(
            "not safetensors: a header of {length} bytes (at most {MAX_HEADER_BYTES})"
        )));
    }
    let mut header = vec![0u8; length as usize];
    file.read_exact(&mut header)
        .map_err(|_| fail("not safetensors: the file ends inside its header".into()))?;
    serde_json::from_slice::<UniqueKeys>(&header)
        .map(|_| ())
        .map_err(|e| fail(format!("not a valid safetensors header: {e}")))
}

/// A JSON object whose keys are all different (its values are not looked at).
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object of tensors")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
                let mut seen = BTreeSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format!("tensor `{key}` appears twice")));
                    }
                }
                Ok(UniqueKeys)
            }
        }
        deserializer.deserialize_map(Keys)
    }
}
