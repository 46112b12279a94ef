//! What exact resumption needs beyond the weights: the optimiser's moments and the identity
//! of each parameter they belong to.
//!
//! burn keys optimiser state by `ParamId`, a random number given at initialisation, and
//! safetensors (mm's weight format, so that checkpoints stay HF-compatible) does not store it.
//! A checkpoint therefore records each parameter's id by module path, and a resumed model gets
//! its old ids back before the optimiser state is loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use mm_encoders::ClipModel;

use crate::param_path::ModulePath;

pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
pub const PARAM_IDS_FILE: &str = "param_ids.json";

/// Every float parameter's id, by module path.
pub fn param_ids(model: &ClipModel) -> BTreeMap<String, u64> {
    #[derive(Default)]
    struct Collect {
        path: ModulePath,
        ids: BTreeMap<String, u64>,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.ids.insert(self.path.joined(), param.id.val());
        }
    }
    let mut collect = Collect::default();
    model.visit(&mut collect);
    collect.ids
}

/// `model` with the recorded ids restored; every parameter must have one.
pub fn with_param_ids(model: ClipModel, ids: &BTreeMap<String, u64>) -> Result<ClipModel> {
    struct Assign<'a> {
        path: ModulePath,
        ids: &'a BTreeMap<String, u64>,
        missing: Vec<String>,
    }
    impl ModuleMapper for Assign<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let path = self.path.joined();
            match self.ids.get(&path) {
                Some(&id) => {
                    let (_, value, mapper) = param.consume();
                    Param::from_mapped_value(ParamId::from(id), value, mapper)
                }
                None => {
                    self.missing.push(path);
                    param
                }
            }
        }
    }
    let mut assign = Assign {
        path: ModulePath::default(),
        ids,
        missing: Vec::new(),
    };
    let model = model.map(&mut assign);
    if let Some(path) = assign.missing.first() {
        bail!("{PARAM_IDS_FILE} has no id for parameter `{path}`");
    }
    Ok(model)
}

pub fn write_param_ids(dir: &Path, model: &ClipModel) -> Result<()> {
    let path = dir.join(PARAM_IDS_FILE);
    std::fs::write(&path, serde_json::to_string(&param_ids(model))?)
        .with_context(|| format!("writing {}", path.display()))
}

pub fn read_param_ids(dir: &Path) -> Result<BTreeMap<String, u64>> {
    let path = dir.join(PARAM_IDS_FILE);
    let text = mm_data::regular_file::read_text(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid", path.display()))
}

/// Checkpoint directories of a run that could be resumed from, newest first: complete
/// (`state.json` written last) and holding optimiser state.
pub fn candidates(run_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = crate::checkpoint::step_dirs(&run_dir.join("checkpoints"));
    dirs.reverse();
    dirs.retain(|d| {
        d.join(crate::checkpoint::STATE_FILE).exists() && d.join(OPTIMIZER_FILE).exists()
    });
    dirs
}
