//! Parameters by their dotted module path (`vision_model.encoder.layers.0.mlp.fc1.weight`),
//! as burn's module visitors and mappers walk them.

use anyhow::{Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use mm_encoders::ClipModel;

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
pub fn check_finite(model: &ClipModel) -> Result<()> {
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
