//! Checkpoint tensors by their own names.
//!
//! Skeleton: loads a safetensors file into memory, converting to the compute dtype. The engine
//! work replaces this with memory-mapped loading, the name/shape contract and the seeded
//! initialisation, keeping the `Weights::get` API that the model code uses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::error::{OcrError, Result};

/// Tensors of one checkpoint, keyed by checkpoint name (`model.sam_model.blocks.0.attn.qkv.weight`).
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    source: PathBuf,
}

impl Weights {
    pub fn load(path: &Path, kind: Kind, device: Device) -> Result<Self> {
        let list = Tensor::read_safetensors(path).map_err(|e| OcrError::Weights {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut tensors = HashMap::with_capacity(list.len());
        for (name, t) in list {
            let t = if t.is_floating_point() {
                t.to_kind(kind)
            } else {
                t
            };
            tensors.insert(name, t.to_device(device));
        }
        Ok(Self {
            tensors,
            source: path.to_path_buf(),
        })
    }

    /// The tensor named `name` (a shallow clone sharing storage).
    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.tensors
            .get(name)
            .map(|t| t.shallow_clone())
            .ok_or_else(|| OcrError::Weights {
                path: self.source.clone(),
                message: format!("missing tensor {name}"),
            })
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}
