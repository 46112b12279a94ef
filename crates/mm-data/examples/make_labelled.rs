//! Writes held-out pictures of the built-in shapes data as a labelled set: JPEGs and a
//! `labels.csv` of (filepath, label) rows, the layout of an `[[eval.suites]]` zero-shot suite
//! with `source = "csv"`. `assets/labelled/` was made with
//!
//! `cargo run --release -p mm-data --example make_labelled -- assets/labelled 96 96`
//!
//! Arguments: OUT_DIR [IMAGES] [IMAGE_SIZE] [SEED]. The held-out split never overlaps the
//! training split that `make_shards` writes.

use std::path::PathBuf;

use image::codecs::jpeg::JpegEncoder;
use mm_data::{ShapesDataset, Split};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: make_labelled OUT_DIR [IMAGES] [SIZE] [SEED]")?,
    );
    let mut number = |default: u64| -> Result<u64, Box<dyn std::error::Error>> {
        Ok(args
            .next()
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let (images, size, seed) = (number(96)?, number(96)?, number(0)?);
    std::fs::create_dir_all(out.join("images"))?;
    let data = ShapesDataset::new(seed, size as u32);
    let names = ShapesDataset::class_names();
    let mut csv = String::from("filepath,label\n");
    for i in 0..images {
        let sample = data.sample(Split::HeldOut, i);
        let file = format!("images/{i:05}.jpg");
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&sample.image)?;
        std::fs::write(out.join(&file), jpeg)?;
        csv += &format!("{file},{}\n", names[sample.class]);
    }
    std::fs::write(out.join("labels.csv"), csv)?;
    println!("wrote {images} labelled images to {}", out.display());
    Ok(())
}
