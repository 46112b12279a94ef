//! Writes the built-in shapes data as WebDataset shards in img2dataset's layout
//! (`{key}.jpg`, `{key}.txt`, `{key}.json`), e.g. the sample in `assets/shards/`:
//!
//! `cargo run --release -p mm-data --example make_shards -- assets/shards 4 200 96`
//!
//! Arguments: OUT_DIR [SHARDS] [SAMPLES_PER_SHARD] [IMAGE_SIZE] [SEED].

use std::path::PathBuf;

use image::codecs::jpeg::JpegEncoder;
use mm_data::{ShapesDataset, Split};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: make_shards OUT_DIR [SHARDS] [PER_SHARD] [SIZE] [SEED]")?,
    );
    let mut number = |default: u64| -> Result<u64, Box<dyn std::error::Error>> {
        Ok(args
            .next()
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let (shards, per_shard, size, seed) = (number(4)?, number(200)?, number(96)?, number(0)?);
    std::fs::create_dir_all(&out)?;
    let data = ShapesDataset::new(seed, size as u32);
    let names = ShapesDataset::class_names();
    for shard in 0..shards {
        let path = out.join(format!("shapes-{shard:05}.tar"));
        let mut tar = tar::Builder::new(std::fs::File::create(&path)?);
        for i in 0..per_shard {
            let index = shard * per_shard + i;
            let sample = data.sample(Split::Train, index);
            let key = format!("{shard:05}{i:04}");
            let mut jpeg = Vec::new();
            JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&sample.image)?;
            let json = format!(
                "{{\"key\": \"{key}\", \"caption\": {:?}, \"class\": {:?}, \"width\": {size}, \"height\": {size}}}",
                sample.caption, names[sample.class]
            );
            for (ext, bytes) in [
                ("jpg", &jpeg[..]),
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
