//! Parameters by their dotted module path (`vision_model.encoder.layers.0.mlp.fc1.weight`),
//! as burn's module visitors and mappers walk them.
//!
//! Exact resumption needs each parameter's identity besides its value: burn keys optimiser
//! state by `ParamId`, a random number given at initialisation, and safetensors (mm's weight
//! format, so that checkpoints stay HF-compatible) does not store it. A checkpoint therefore
//! records each parameter's id by path, and a resumed model gets its old ids back before the
//! optimiser state is loaded.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

/// Tracks the dotted module path during a visit or a map.
#[derive(Default)]
pub(crate) struct ModulePath {
    parts: Vec<String>,
}

impl ModulePath {
    pub(crate) fn enter(&mut self, name: &str) {
        self.parts.push(name.to_string());
    }
    pub(crate) fn exit(&mut self) {
        self.parts.pop();
    }
    pub(crate) fn joined(&self) -> String {
        self.parts.join(".")
    }
}

/// An error naming the first parameter that holds a NaN or infinity: such weights give NaN
/// for every input, so no command should run with them.
pub fn check_finite<M: Module>(model: &M) -> Result<()> {
    #[derive(Default)]
    struct FirstNonFinite {
        path: ModulePath,
        found: Option<String>,
    }
    impl ModuleVisitor for FirstNonFinite {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.found.is_none() && !param.val().is_finite().all().into_scalar::<bool>() {
                self.found = Some(self.path.joined());
            }
        }
    }
    let mut visitor = FirstNonFinite::default();
    model.visit(&mut visitor);
    match visitor.found {
        Some(path) => bail!("tensor `{path}` holds NaN or infinite values (a diverged run?)"),
        None => Ok(()),
    }
}

/// Every float parameter's id, by module path.
pub fn param_ids<M: Module>(model: &M) -> BTreeMap<String, u64> {
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
pub fn with_param_ids<M: Module>(model: M, ids: &BTreeMap<String, u64>) -> Result<M> {
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
        bail!("no recorded id for parameter `{path}`");
    }
    Ok(model)
}
