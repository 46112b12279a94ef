//! Writes samples of the built-in shapes data as PNG files, with their captions.
//!
//! `cargo run --release -p mm-data --example render_shapes -- OUT_DIR [COUNT] [SIZE] [train|held-out]`

use std::path::PathBuf;

use mm_data::{ShapesDataset, Split};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: render_shapes OUT_DIR [COUNT] [SIZE] [train|held-out]")?,
    );
    let count: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8);
    let size: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(128);
    let split = match args.next().as_deref() {
        Some("train") => Split::Train,
        _ => Split::HeldOut,
    };
    std::fs::create_dir_all(&out)?;
    let names = ShapesDataset::class_names();
    let data = ShapesDataset::new(0, size);
    for i in 0..count {
        let sample = data.sample(split, i);
        let path = out.join(format!(
            "{i:03}_{}.png",
            names[sample.class].replace(' ', "_")
        ));
        sample.image.save(&path)?;
        println!("{}\t{}", path.display(), sample.caption);
    }
    Ok(())
}
