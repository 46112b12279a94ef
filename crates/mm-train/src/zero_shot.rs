//! Zero-shot classification: class names become text embeddings through prompt templates,
//! images are assigned to the class whose embedding is most similar.

use anyhow::{Result, bail};
use burn::tensor::Tensor;
use burn::tensor::activation::{sigmoid, softmax};
use mm_contrastive::{clip_logits, l2_normalize, siglip_logits};
use mm_data::{ClipTokenizer, token_ids_tensor};
use mm_encoders::ClipModel;

/// The most classes a zero-shot classifier takes (as many as a classifier can be trained on).
pub const MAX_CLASSES: usize = crate::config::MAX_CLASSES;
/// The most prompt templates one classifier ensembles (open_clip's ImageNet set has 80).
pub const MAX_TEMPLATES: usize = 1000;
/// Prompts one classifier encodes at most (classes x templates).
pub const MAX_PROMPTS: usize = 100_000;
/// Prompts encoded in one pass.
const PROMPTS_PER_CHUNK: usize = 256;

/// Normalised text embeddings of each class, averaged over prompt templates.
pub struct ZeroShotClassifier {
    pub class_names: Vec<String>,
    /// `[n_classes, embed_dim]`, unit rows.
    pub class_embeddings: Tensor<2>,
}

impl ZeroShotClassifier {
    pub fn new(
        model: &ClipModel,
        tokenizer: &ClipTokenizer,
        class_names: &[String],
        templates: &[String],
        context_length: usize,
    ) -> Result<Self> {
        if class_names.is_empty() {
            bail!("no classes given");
        }
        if class_names.len() > MAX_CLASSES {
            bail!(
                "{} classes: zero-shot classifies into at most {MAX_CLASSES}",
                class_names.len()
            );
        }
        if templates.is_empty() || templates.iter().any(|t| !t.contains("{}")) {
            bail!("every prompt template needs a `{{}}` for the class name: {templates:?}");
        }
        if templates.len() > MAX_TEMPLATES {
            bail!(
                "{} prompt templates: at most {MAX_TEMPLATES} are ensembled",
                templates.len()
            );
        }
        let prompts = class_names.len() * templates.len();
        if prompts > MAX_PROMPTS {
            bail!(
                "{} classes x {} templates = {prompts} prompts to encode: at most {MAX_PROMPTS} (ImageNet's 1000 x 80 is 80000)",
                class_names.len(),
                templates.len()
            );
        }
        let device = model.logit_scale.val().device();
        // A few classes' prompts at a time, so that memory holds one chunk's activations and
        // the class embeddings, never every prompt's.
        let classes_per_chunk = (PROMPTS_PER_CHUNK / templates.len()).max(1);
        let chunks = class_names
            .chunks(classes_per_chunk)
            .map(|classes| -> Result<Tensor<2>> {
                let prompts: Vec<String> = classes
                    .iter()
                    .flat_map(|class| templates.iter().map(move |t| t.replace("{}", class)))
                    .collect();
                let ids = tokenizer.encode_batch(&prompts, context_length)?;
                let ids = token_ids_tensor(&ids, context_length, &device);
                let embed = l2_normalize(model.text_features(ids));
                let [_, dim] = embed.dims();
                Ok(embed
                    .reshape([classes.len(), templates.len(), dim])
                    .mean_dim(1)
                    .reshape([classes.len(), dim]))
            })
            .collect::<Result<Vec<_>>>()?;
        let per_class = Tensor::cat(chunks, 0);
        Ok(Self {
            class_names: class_names.to_vec(),
            class_embeddings: l2_normalize(per_class),
        })
    }

    /// `[n_images, n_classes]` probabilities. A CLIP model's are a softmax over the classes of
    /// the scaled cosine similarities; a sigmoid-loss model (with a logit bias) means each
    /// image-class pair's own match probability, so its are `sigmoid(scale * cos + bias)`.
    pub fn probabilities(&self, model: &ClipModel, pixels: Tensor<4>) -> Tensor<2> {
        let image = model.image_features(pixels);
        match model.scale_and_bias() {
            (scale, None) => {
                let logits = clip_logits(image, self.class_embeddings.clone(), scale);
                softmax(logits.logits_per_image, 1)
            }
            (scale, Some(bias)) => sigmoid(siglip_logits(
                image,
                self.class_embeddings.clone(),
                scale,
                bias,
            )),
        }
    }
}
