//! Built-in classification tasks that need both modalities, drawn like the shapes data but
//! with several figures per picture:
//!
//! - [`ShapesTask::Matching`]: does this caption describe this picture? Two figures; the
//!   caption names both (`yes`) or is a hard negative (`no`) that changes one attribute of one
//!   figure (its colour or its shape) to one the picture does not have. Positive and negative
//!   captions are alike in distribution, and every picture comes with either: a caption or a
//!   picture alone says nothing about the label (best possible: 50%).
//! - [`ShapesTask::Question`]: question answering as classification. Three figures, all
//!   colours and shapes different; `what colour is the star?` (answer: a colour) or `what
//!   shape is the red one?` (answer: a shape). The question alone tells which kind of answer
//!   (best possible: 1/6 or 1/8, 14.6% overall); the picture alone holds three colours and
//!   three shapes, one of them the answer (best possible: 1/6, 16.7%); both: 100%.
//!
//! Each sample is a pure function of `(seed, split, index)` as in [`ShapesDataset`].

use image::RgbImage;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::shapes::{
    BACKGROUNDS, COLORS, Figure, SHAPES, ShapesDataset, Split, color_distance, fix_articles,
    render, sample_seed,
};
use crate::source::{ImageInput, ImageTextPair, PairSource, SampleError};

/// Which built-in data `source = "shapes"` streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShapesTask {
    /// One figure and a caption naming it (contrastive pretraining; label: the figure's class).
    #[default]
    Pairs,
    /// Does the caption describe the picture (`yes` / `no`)?
    Matching,
    /// A question about one of three figures; the answer is a colour or a shape.
    Question,
}

const MATCHING_TEMPLATES: [&str; 4] = [
    "a {c1} {s1} and a {c2} {s2}",
    "a picture with a {c1} {s1} and a {c2} {s2}",
    "{c1} {s1}, {c2} {s2}",
    "a drawing of a {c1} {s1} next to a {c2} {s2}",
];

const COLOR_QUESTIONS: [&str; 3] = [
    "what colour is the {shape}?",
    "which colour does the {shape} have?",
    "the {shape} is what colour?",
];

const SHAPE_QUESTIONS: [&str; 3] = [
    "what shape is the {color} one?",
    "what is the {color} shape?",
    "which shape is {color}?",
];

/// One labelled sample of a task.
#[derive(Clone, Debug)]
pub struct TaskSample {
    pub image: RgbImage,
    pub text: String,
    /// Index into [`ShapesTask::class_names`].
    pub label: usize,
}

impl ShapesTask {
    /// The task's classes, in label order.
    pub fn class_names(self) -> Vec<String> {
        match self {
            ShapesTask::Pairs => ShapesDataset::class_names(),
            ShapesTask::Matching => vec!["no".into(), "yes".into()],
            ShapesTask::Question => COLORS
                .iter()
                .map(|(c, _)| c.to_string())
                .chain(SHAPES.iter().map(|s| s.to_string()))
                .collect(),
        }
    }

    /// The `index`-th sample of `split` for `dataset`'s seed and picture size.
    pub fn sample(self, dataset: &ShapesDataset, split: Split, index: u64) -> TaskSample {
        match self {
            ShapesTask::Pairs => {
                let sample = dataset.sample(split, index);
                TaskSample {
                    image: sample.image,
                    text: sample.caption,
                    label: sample.class,
                }
            }
            ShapesTask::Matching | ShapesTask::Question => {
                // Its own seed stream: a task's pictures are not the pairs' pictures.
                let tag = match self {
                    ShapesTask::Matching => 0x4d41_5443_4800_0000,
                    _ => 0x5155_4553_5400_0000,
                };
                let mut rng = StdRng::seed_from_u64(sample_seed(dataset.seed ^ tag, split, index));
                match self {
                    ShapesTask::Matching => matching(dataset.image_size, &mut rng),
                    _ => question(dataset.image_size, &mut rng),
                }
            }
        }
    }

    /// An endless stream of `split`'s labelled pairs from sample `start`.
    pub fn source(self, dataset: ShapesDataset, split: Split, start: u64) -> TaskSource {
        TaskSource {
            task: self,
            names: self.class_names(),
            dataset,
            split,
            next_index: start,
        }
    }
}

/// `count` figures with distinct shapes and colours, in distinct quadrants, on a background
/// far from every colour: the picture and the figures' (colour, shape) indices.
fn picture(size: u32, count: usize, rng: &mut StdRng) -> (RgbImage, Vec<(usize, usize)>) {
    let mut colors: Vec<usize> = (0..COLORS.len()).collect();
    let mut shapes: Vec<usize> = (0..SHAPES.len()).collect();
    let mut cells: Vec<usize> = (0..4).collect();
    colors.shuffle(rng);
    shapes.shuffle(rng);
    cells.shuffle(rng);
    let objects: Vec<(usize, usize)> = (0..count).map(|i| (colors[i], shapes[i])).collect();
    let candidates: Vec<_> = BACKGROUNDS
        .iter()
        .filter(|(_, bg)| {
            objects
                .iter()
                .all(|&(c, _)| color_distance(*bg, COLORS[c].1) > 120.0)
        })
        .collect();
    // Black and white figures together leave only mid-tone backgrounds; grey always works
    // for every pair but black-and-white, which beige and pale blue cover.
    let bg = candidates
        .get(rng.random_range(0..candidates.len().max(1)))
        .map_or([128, 128, 128], |(_, bg)| *bg);
    let s = size as f32;
    let figures: Vec<(Figure, [u8; 3])> = objects
        .iter()
        .zip(&cells)
        .map(|(&(color, shape), &cell)| {
            let jitter = |rng: &mut StdRng| rng.random_range(-0.03..0.03f32) * s;
            let centre = (
                s * (0.25 + 0.5 * (cell % 2) as f32) + jitter(rng),
                s * (0.25 + 0.5 * (cell / 2) as f32) + jitter(rng),
            );
            (Figure::drawn(shape, centre, s * 0.19, rng), COLORS[color].1)
        })
        .collect();
    let noise = rng.random_range(0.0..16.0f32);
    (render(size, &figures, bg, noise, rng), objects)
}

fn matching(size: u32, rng: &mut StdRng) -> TaskSample {
    let (image, mut objects) = picture(size, 2, rng);
    let matches = rng.random_bool(0.5);
    if !matches {
        // Change one attribute of one figure to a value neither figure has.
        let which = rng.random_range(0..2);
        let (color, shape) = objects[which];
        if rng.random_bool(0.5) {
            let others: Vec<usize> = (0..COLORS.len())
                .filter(|&c| objects.iter().all(|o| o.0 != c))
                .collect();
            objects[which] = (others[rng.random_range(0..others.len())], shape);
        } else {
            let others: Vec<usize> = (0..SHAPES.len())
                .filter(|&s| objects.iter().all(|o| o.1 != s))
                .collect();
            objects[which] = (color, others[rng.random_range(0..others.len())]);
        }
    }
    objects.shuffle(rng);
    let template = MATCHING_TEMPLATES[rng.random_range(0..MATCHING_TEMPLATES.len())];
    let text = template
        .replace("{c1}", COLORS[objects[0].0].0)
        .replace("{s1}", SHAPES[objects[0].1])
        .replace("{c2}", COLORS[objects[1].0].0)
        .replace("{s2}", SHAPES[objects[1].1]);
    TaskSample {
        image,
        text: fix_articles(&text),
        label: matches as usize,
    }
}

fn question(size: u32, rng: &mut StdRng) -> TaskSample {
    let (image, objects) = picture(size, 3, rng);
    let (color, shape) = objects[rng.random_range(0..objects.len())];
    let (text, label) = if rng.random_bool(0.5) {
        let template = COLOR_QUESTIONS[rng.random_range(0..COLOR_QUESTIONS.len())];
        (template.replace("{shape}", SHAPES[shape]), color)
    } else {
        let template = SHAPE_QUESTIONS[rng.random_range(0..SHAPE_QUESTIONS.len())];
        (
            template.replace("{color}", COLORS[color].0),
            COLORS.len() + shape,
        )
    };
    TaskSample { image, text, label }
}

/// An endless stream of one split of a [`ShapesTask`], each pair labelled with its class name.
pub struct TaskSource {
    task: ShapesTask,
    /// The task's class names, once (labels are cloned from them).
    names: Vec<String>,
    dataset: ShapesDataset,
    split: Split,
    next_index: u64,
}

impl Iterator for TaskSource {
    type Item = Result<ImageTextPair, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.next_index;
        self.next_index += 1;
        let sample = self.task.sample(&self.dataset, self.split, index);
        Some(Ok(ImageTextPair {
            image: ImageInput::Decoded(image::DynamicImage::ImageRgb8(sample.image)),
            caption: sample.text,
            label: Some(self.names[sample.label].clone()),
            location: format!("shapes {:?} {:?} #{index}", self.task, self.split),
        }))
    }

    /// Skipping is index arithmetic: no image is drawn.
    fn nth(&mut self, n: usize) -> Option<Self::Item> {
        self.next_index += n as u64;
        self.next()
    }
}

impl PairSource for TaskSource {
    fn describe(&self) -> String {
        format!(
            "built-in shapes {:?} task ({:?} split, seed {})",
            self.task, self.split, self.dataset.seed
        )
        .to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn matching_captions_say_nothing_about_the_label_alone() {
        let data = ShapesDataset::new(3, 48);
        let mut by_text: HashMap<String, [usize; 2]> = HashMap::new();
        let mut labels = [0usize; 2];
        for i in 0..4000 {
            let s = ShapesTask::Matching.sample(&data, Split::Train, i);
            labels[s.label] += 1;
            // The caption's content words, order-free: what a text model could key on.
            let mut words: Vec<&str> = s
                .text
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| COLORS.iter().any(|(c, _)| c == w) || SHAPES.contains(w))
                .collect();
            words.sort();
            by_text.entry(words.join(" ")).or_default()[s.label] += 1;
        }
        assert!(
            labels.iter().all(|&n| (1800..2200).contains(&n)),
            "{labels:?}"
        );
        // Over caption contents seen often, yes and no stay balanced.
        let (mut agree, mut total) = (0, 0);
        for counts in by_text.values().filter(|c| c[0] + c[1] >= 8) {
            agree += counts[0].max(counts[1]);
            total += counts[0] + counts[1];
        }
        let best_text_only = agree as f64 / total as f64;
        assert!(best_text_only < 0.75, "{best_text_only}");
    }

    #[test]
    fn questions_are_about_a_figure_in_the_picture() {
        let data = ShapesDataset::new(5, 48);
        let names = ShapesTask::Question.class_names();
        assert_eq!(names.len(), COLORS.len() + SHAPES.len());
        let mut seen = vec![0; names.len()];
        for i in 0..500 {
            let s = ShapesTask::Question.sample(&data, Split::HeldOut, i);
            seen[s.label] += 1;
            let answer = &names[s.label];
            // A colour answer's figure is drawn: pixels of that colour exist.
            if s.label < COLORS.len() {
                let rgb = COLORS[s.label].1;
                let close = s
                    .image
                    .pixels()
                    .filter(|p| color_distance(p.0, rgb) < 40.0)
                    .count();
                assert!(close > 20, "{}: {answer} drawn by {close} pixels", s.text);
                assert!(s.text.contains("colour"), "{}", s.text);
            } else {
                assert!(s.text.contains("shape"), "{}", s.text);
            }
        }
        assert!(seen.iter().all(|&n| n > 5), "{seen:?}");
    }

    #[test]
    fn task_samples_are_deterministic() {
        let data = ShapesDataset::new(9, 32);
        for task in [ShapesTask::Matching, ShapesTask::Question] {
            let a = task.sample(&data, Split::Train, 11);
            let b = task.sample(&data, Split::Train, 11);
            assert_eq!((a.image, a.text, a.label), (b.image, b.text, b.label));
        }
    }
}
