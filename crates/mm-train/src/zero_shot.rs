//! Zero-shot classification: class names become text embeddings through prompt templates,
//! images are assigned to the class whose embedding is most similar.

use anyhow::{Result, bail};
use burn::tensor::Tensor;
use burn::tensor::activation::{sigmoid, softmax};
use mm_contrastive::{clip_logits, l2_normalize, siglip_logits};
use mm_data::{ClipTokenizer, token_ids_tensor};
use mm_encoders::ClipModel;

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
        if templates.is_empty() || templates.iter().any(|t| !t.contains("{}")) {
            bail!("every prompt template needs a `{{}}` for the class name: {templates:?}");
        }
        let device = model.logit_scale.val().device();
        let prompts: Vec<String> = class_names
            .iter()
            .flat_map(|class| templates.iter().map(move |t| t.replace("{}", class)))
            .collect();
        let ids = tokenizer.encode_batch(&prompts, context_length)?;
        let ids = token_ids_tensor(&ids, context_length, &device);
        let embed = l2_normalize(model.text_features(ids));
        let [_, dim] = embed.dims();
        let per_class = embed
            .reshape([class_names.len(), templates.len(), dim])
            .mean_dim(1)
            .reshape([class_names.len(), dim]);
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
        match &model.logit_bias {
            None => {
                let logits = clip_logits(
                    image,
                    self.class_embeddings.clone(),
                    model.logit_scale.val(),
                );
                softmax(logits.logits_per_image, 1)
            }
            Some(bias) => sigmoid(siglip_logits(
                image,
                self.class_embeddings.clone(),
                model.logit_scale.val(),
                bias.val(),
            )),
        }
    }
}
