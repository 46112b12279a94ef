//! Writes the built-in shapes data as files, the sample data in `assets/`:
//!
//! - WebDataset shards in img2dataset's layout (`{key}.jpg`, `{key}.txt`, `{key}.json`) from
//!   the training split: `cargo run --release -p mm-data --example make_shards -- assets/shards 4 100 96`
//!   (arguments: OUT_DIR [SHARDS] [SAMPLES_PER_SHARD] [IMAGE_SIZE] [SEED]);
//! - with `--labelled`, a labelled set from the held-out split, JPEGs and a `labels.csv` of
//!   (filepath, label) rows, the layout of a `kind = "zero_shot"`, `source = "csv"` eval suite:
//!   `cargo run --release -p mm-data --example make_shards -- --labelled assets/labelled 96 96`
//!   (arguments: OUT_DIR [IMAGES] [IMAGE_SIZE] [SEED]).

use std::path::{Path, PathBuf};

use image::RgbImage;
use image::codecs::jpeg::JpegEncoder;
use mm_data::{ShapesDataset, Split};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let labelled = args.first().is_some_and(|a| a == "--labelled");
    if labelled {
        args.remove(0);
    }
    let mut args = args.into_iter();
    let out = PathBuf::from(args.next().ok_or(
        "usage: make_shards OUT_DIR [SHARDS] [PER_SHARD] [SIZE] [SEED] | make_shards --labelled OUT_DIR [IMAGES] [SIZE] [SEED]",
    )?);
    let mut numbers = args.map(|s| s.parse::<u64>());
    let mut number = |default: u64| numbers.next().transpose().map(|n| n.unwrap_or(default));
    std::fs::create_dir_all(&out)?;
    if labelled {
        let (images, size, seed) = (number(96)?, number(96)?, number(0)?);
        write_labelled(&out, images, &ShapesDataset::new(seed, size as u32))
    } else {
        let (shards, per_shard, size, seed) = (number(4)?, number(200)?, number(96)?, number(0)?);
        write_shards(
            &out,
            shards,
            per_shard,
            size,
            &ShapesDataset::new(seed, size as u32),
        )
    }
}

fn jpeg(image: &RgbImage) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(image)?;
    Ok(bytes)
}

fn write_shards(
    out: &Path,
    shards: u64,
    per_shard: u64,
    size: u64,
    data: &ShapesDataset,
) -> Result<(), Error> {
    let names = ShapesDataset::class_names();
    for shard in 0..shards {
        let path = out.join(format!("shapes-{shard:05}.tar"));
        let mut tar = tar::Builder::new(std::fs::File::create(&path)?);
        for i in 0..per_shard {
            let sample = data.sample(Split::Train, shard * per_shard + i);
            let key = format!("{shard:05}{i:04}");
            let json = format!(
                "{{\"key\": \"{key}\", \"caption\": {:?}, \"class\": {:?}, \"width\": {size}, \"height\": {size}}}",
                sample.caption, names[sample.class]
            );
            for (ext, bytes) in [
                ("jpg", &jpeg(&sample.image)?[..]),
                ("txt", sample.caption.as_bytes()),
                ("json", json.as_bytes()),
            ] {
                let mut header = tar::Header::new_gnu();
                header.set_size(bytes.len() as u64);
                header.set_mode(0o644);
                header.set_mtime(0);
                header.set_cksum();
                tar.append_data(&mut header, format!("{key}.{ext}"), bytes)?;
            }
        }
        tar.finish()?;
        println!("wrote {} ({per_shard} samples)", path.display());
    }
    Ok(())
}

/// Held-out pictures, which never overlap the training split the shards hold.
fn write_labelled(out: &Path, images: u64, data: &ShapesDataset) -> Result<(), Error> {
    std::fs::create_dir_all(out.join("images"))?;
    let names = ShapesDataset::class_names();
    let mut csv = String::from("filepath,label\n");
    for i in 0..images {
        let sample = data.sample(Split::HeldOut, i);
        let file = format!("images/{i:05}.jpg");
        std::fs::write(out.join(&file), jpeg(&sample.image)?)?;
        csv += &format!("{file},{}\n", names[sample.class]);
    }
    std::fs::write(out.join("labels.csv"), csv)?;
    println!("wrote {images} labelled images to {}", out.display());
    Ok(())
}
