//! Every source format and every kind of bad input, on fixtures written here in a temp dir.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use mm_data::{
    Batcher, ClipTokenizer, CsvColumns, CsvSource, DataConfig, FolderSource, ImageInput,
    ImageLimits, Paths, SampleErrorKind, ShuffleBuffer, SourceKind, TarSource, TrainTransform,
    decode_input, expand_braces, expand_shards, shards_for_rank,
};

/// Default caps with at most `max` pixels.
fn pixels(max: u64) -> ImageLimits {
    ImageLimits {
        max_pixels: max,
        ..ImageLimits::default()
    }
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

/// A 24x20 picture whose colour encodes `n`, so samples can be told apart after decoding.
fn picture(n: u8) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_pixel(
        24,
        20,
        Rgb([n.wrapping_mul(37), 255 - n, 128]),
    ))
}

fn png(n: u8) -> Vec<u8> {
    encode(&picture(n), ImageFormat::Png)
}

fn jpeg(n: u8) -> Vec<u8> {
    encode(&picture(n), ImageFormat::Jpeg)
}

/// Writes a tar with raw member names (unsafe ones included: `tar::Builder` itself refuses
/// them, so the name bytes go straight into the header).
fn write_tar(path: &Path, members: &[(&str, Vec<u8>)]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in members {
        let mut header = tar::Header::new_gnu();
        let field = &mut header.as_gnu_mut().unwrap().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, &data[..]).unwrap();
    }
    builder.finish().unwrap();
}

fn batcher() -> Batcher {
    Batcher::new(ClipTokenizer::openai(), 16, 12)
}

/// All items of a source: captions of the good ones, kinds of the bad ones.
fn drain(
    source: impl Iterator<Item = Result<mm_data::ImageTextPair, mm_data::SampleError>>,
) -> (Vec<String>, Vec<SampleErrorKind>) {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for item in source {
        match item {
            Ok(pair) => good.push(pair.caption),
            Err(e) => bad.push(e.kind),
        }
    }
    (good, bad)
}

#[test]
fn webdataset_shards_stream_samples_in_order() {
    let dir = tempfile::tempdir().unwrap();
    for shard in 0..3u8 {
        let mut members = Vec::new();
        for i in 0..4u8 {
            let n = shard * 4 + i;
            let key = format!("{:05}", n);
            let (ext, image) = if n % 2 == 0 {
                ("jpg", jpeg(n))
            } else {
                ("png", png(n))
            };
            members.push((format!("{key}.{ext}"), image));
            members.push((format!("{key}.txt"), format!("caption {n}").into_bytes()));
            members.push((format!("{key}.json"), b"{\"width\": 24}".to_vec()));
        }
        let members: Vec<(&str, Vec<u8>)> = members
            .iter()
            .map(|(n, d)| (n.as_str(), d.clone()))
            .collect();
        write_tar(&dir.path().join(format!("{shard:05}.tar")), &members);
    }
    let pattern = format!("{}/{{00000..00002}}.tar", dir.path().display());
    let shards = expand_shards(&[pattern]).unwrap();
    assert_eq!(shards.len(), 3);
    let (good, bad) = drain(TarSource::new(shards.clone(), ImageLimits::default()));
    assert!(bad.is_empty(), "{bad:?}");
    let expected: Vec<String> = (0..12).map(|n| format!("caption {n}")).collect();
    assert_eq!(good, expected);

    // Globs name the same shards; the batcher decodes both formats.
    let glob = expand_shards(&[format!("{}/*.tar", dir.path().display())]).unwrap();
    assert_eq!(glob, shards);
    let batch = batcher()
        .next_batch(
            &mut TarSource::new(glob, ImageLimits::default()),
            &mut 0,
            12,
        )
        .unwrap()
        .unwrap();
    assert_eq!(batch.captions, expected);
    assert!(batch.errors.is_empty());
}

#[test]
fn shard_patterns_expand_like_braceexpand() {
    assert_eq!(
        expand_braces("d/{00..03}.tar").unwrap(),
        ["d/00.tar", "d/01.tar", "d/02.tar", "d/03.tar"]
    );
    assert_eq!(
        expand_braces("{a,b}/{8..10}").unwrap(),
        ["a/8", "a/9", "a/10", "b/8", "b/9", "b/10"]
    );
    assert_eq!(expand_braces("x{a,{b,c}}").unwrap(), ["xa", "xb", "xc"]);
    assert!(
        expand_braces("d/{3..1}.tar")
            .unwrap_err()
            .contains("empty range")
    );
    assert!(
        expand_braces("d/{0..2.tar")
            .unwrap_err()
            .contains("unbalanced")
    );
    // Too many paths is an error found before they are made, one range or several.
    let started = std::time::Instant::now();
    for pattern in ["{0..999999999}.tar", "{0..9999}/{0..9999}.tar"] {
        let err = expand_braces(pattern).unwrap_err();
        assert!(err.contains("more than 1000000 paths"), "{err}");
    }
    assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());

    // A missing shard is a start-up error naming it.
    let dir = tempfile::tempdir().unwrap();
    write_tar(&dir.path().join("0.tar"), &[]);
    let err = expand_shards(&[format!("{}/{{0..1}}.tar", dir.path().display())]).unwrap_err();
    assert!(err.to_string().contains("1.tar: no such file"), "{err}");
    let err = expand_shards(&[format!("{}/*.tgz", dir.path().display())]).unwrap_err();
    assert!(err.to_string().contains("matches no files"), "{err}");
}

#[test]
fn ranks_get_disjoint_shards_covering_all() {
    let shards: Vec<PathBuf> = (0..10).map(|i| PathBuf::from(format!("{i}.tar"))).collect();
    let parts: Vec<Vec<PathBuf>> = (0..3).map(|r| shards_for_rank(&shards, r, 3)).collect();
    let mut all: Vec<PathBuf> = parts.concat();
    all.sort();
    let mut sorted = shards.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [4, 3, 3]);
}

/// The captions a stream hands out first.
fn captions(
    stream: impl Iterator<Item = Result<mm_data::ImageTextPair, mm_data::SampleError>>,
    n: usize,
) -> Vec<String> {
    stream.take(n).map(|item| item.unwrap().caption).collect()
}

#[test]
fn ranks_share_rows_so_that_together_they_read_what_one_process_reads() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("pairs.csv");
    let rows: String = (0..12).map(|i| format!("{i}.png,row {i}\n")).collect();
    std::fs::write(&csv, format!("filepath,title\n{rows}")).unwrap();
    let csv_config = DataConfig {
        source: mm_data::SourceKind::Csv,
        path: Some(mm_data::Paths::One(csv.display().to_string())),
        shuffle_buffer: 0,
        ..DataConfig::default()
    };
    for config in [csv_config, DataConfig::default()] {
        let one = captions(config.open_stream(4, 16).unwrap(), 12);
        for world in [2, 3, 4] {
            for rank in 0..world {
                let mine = captions(
                    config.for_rank(rank, world).open_stream(4, 16).unwrap(),
                    12 / world,
                );
                let want: Vec<String> = one.iter().skip(rank).step_by(world).cloned().collect();
                assert_eq!(mine, want, "rank {rank} of {world}");
                // Resuming a rank skips its own items.
                let mut resumed = config.for_rank(rank, world).open_stream(4, 16).unwrap();
                resumed.fast_forward(2);
                assert_eq!(
                    captions(resumed, 1),
                    want[2..3],
                    "rank {rank} of {world} resumed"
                );
            }
        }
    }
}

#[test]
fn bad_tar_members_are_skipped_and_counted_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("bad.tar");
    let mut truncated_png = png(1);
    truncated_png.truncate(truncated_png.len() / 2);
    let mut corrupt_jpeg = jpeg(2);
    for byte in corrupt_jpeg.iter_mut().skip(200).step_by(3) {
        *byte = 0xFF;
    }
    write_tar(
        &shard,
        &[
            ("good0.png", png(0)),
            ("good0.txt", b"good zero".to_vec()),
            ("trunc.png", truncated_png),
            ("trunc.txt", b"truncated png".to_vec()),
            ("corrupt.jpg", corrupt_jpeg),
            ("corrupt.txt", b"corrupt jpeg".to_vec()),
            ("empty.jpg", Vec::new()),
            ("empty.txt", b"zero-byte image".to_vec()),
            ("nocap.png", png(3)),
            ("noimg.txt", b"caption without image".to_vec()),
            ("blank.png", png(4)),
            ("blank.txt", b"   ".to_vec()),
            ("latin1.png", png(5)),
            ("latin1.txt", b"caf\xe9".to_vec()),
            ("../escape.png", png(6)),
            ("/etc/abs.txt", b"absolute".to_vec()),
            ("good1.png", png(7)),
            ("good1.txt", b"good one".to_vec()),
        ],
    );
    let mut source = TarSource::new(vec![shard], ImageLimits::default());
    let mut position = 0;
    let batch = batcher()
        .next_batch(&mut source, &mut position, 2)
        .unwrap()
        .unwrap();
    assert_eq!(batch.captions, ["good zero", "good one"]);
    let expected = BTreeMap::from([
        (SampleErrorKind::BadImage, 3),
        (SampleErrorKind::MissingCaption, 2),
        (SampleErrorKind::MissingImage, 1),
        (SampleErrorKind::BadCaption, 1),
        (SampleErrorKind::UnsafePath, 2),
    ]);
    assert_eq!(batch.skip_counts().counts(), &expected);
    // Every skipped sample says where it was.
    let locations: Vec<&str> = batch.errors.iter().map(|e| e.location.as_str()).collect();
    for needle in [
        "bad.tar:trunc",
        "bad.tar:corrupt",
        "bad.tar:empty",
        "bad.tar:nocap",
        "bad.tar:noimg",
        "bad.tar:../escape.png",
        "bad.tar:/etc/abs.txt",
        "bad.tar:latin1",
    ] {
        assert!(
            locations.iter().any(|l| l.ends_with(needle)),
            "{needle} not in {locations:?}"
        );
    }
    assert_eq!(position, 2 + 9);
    // Nothing was written next to the shard.
    assert!(
        !dir.path().join("escape.png").exists()
            && !dir.path().parent().unwrap().join("escape.png").exists()
    );
}

#[test]
fn a_truncated_shard_keeps_its_good_samples_and_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
    let members: Vec<(String, Vec<u8>)> = (0..6u8)
        .flat_map(|n| {
            [
                (format!("{n}.png"), png(n)),
                (format!("{n}.txt"), format!("a{n}").into_bytes()),
            ]
        })
        .collect();
    let members: Vec<(&str, Vec<u8>)> = members
        .iter()
        .map(|(n, d)| (n.as_str(), d.clone()))
        .collect();
    write_tar(&first, &members);
    let bytes = std::fs::read(&first).unwrap();
    std::fs::write(&first, &bytes[..bytes.len() / 2 + 100]).unwrap(); // cut mid-member
    write_tar(&second, &[("x.png", png(9)), ("x.txt", b"b0".to_vec())]);

    let (good, bad) = drain(TarSource::new(vec![first, second], ImageLimits::default()));
    assert!(good.len() >= 2 && good.len() < 6, "{good:?}");
    assert!(good.iter().take(good.len() - 1).all(|c| c.starts_with('a')));
    assert_eq!(good.last().unwrap(), "b0");
    assert_eq!(bad, [SampleErrorKind::BadShard]);

    // Not a tar at all.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, vec![7u8; 3000]).unwrap();
    let (good, bad) = drain(TarSource::new(vec![junk], ImageLimits::default()));
    assert!(good.is_empty());
    assert_eq!(bad, [SampleErrorKind::BadShard]);
}

/// PNG's chunk checksum (CRC-32, reflected 0xEDB88320).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn decompression_bombs_are_refused_before_decoding() {
    // A PNG whose header declares 60000 x 60000 pixels: refused from the header alone.
    let mut bomb = png(0);
    bomb[16..20].copy_from_slice(&60000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&60000u32.to_be_bytes());
    let crc = crc32(&bomb[12..29]); // IHDR type + data
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    let err = decode_input(
        &ImageInput::Encoded(bomb),
        "bomb.png",
        ImageLimits::default(),
    )
    .unwrap_err();
    assert_eq!(err.kind, SampleErrorKind::ImageTooLarge);
    assert!(err.message.contains("60000x60000"), "{}", err.message);
    // The cap is a setting.
    let err = decode_input(&ImageInput::Encoded(png(0)), "small.png", pixels(100)).unwrap_err();
    assert_eq!(err.kind, SampleErrorKind::ImageTooLarge);
    assert!(decode_input(&ImageInput::Encoded(png(0)), "small.png", pixels(480)).is_ok());
}

#[test]
fn colour_types_become_rgb() {
    let grey = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(8, 8, image::Luma([90])));
    let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
        8,
        8,
        image::Rgba([10, 200, 30, 255]),
    ));
    let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
        8,
        8,
        Rgb([65535u16, 0, 32896]),
    ));
    let cases = [
        (encode(&grey, ImageFormat::Png), [90, 90, 90]),
        (encode(&rgba, ImageFormat::Png), [10, 200, 30]),
        (encode(&deep, ImageFormat::Png), [255, 0, 128]),
        // PIL: Image.new("CMYK", (20, 16), (0, 255, 255, 0)).save(..., quality=95): pure red.
        (
            std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../fixtures/images/cmyk_red_20x16.jpg"),
            )
            .unwrap(),
            [255, 0, 0],
        ),
    ];
    for (bytes, rgb) in cases {
        let input = ImageInput::Encoded(bytes);
        let image = decode_input(&input, "x", pixels(1 << 20)).unwrap();
        let out = mm_data::resize_center_crop(&image, 8);
        let got = out.get_pixel(4, 4).0;
        assert!(
            got.iter().zip(rgb).all(|(a, b)| (*a as i32 - b).abs() <= 2),
            "{got:?} vs {rgb:?}"
        );
    }
}

fn write_images(dir: &Path, names: &[&str]) {
    for (i, name) in names.iter().enumerate() {
        std::fs::write(dir.join(name), png(i as u8)).unwrap();
    }
}

#[test]
fn csv_rows_resolve_paths_relative_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("img")).unwrap();
    write_images(&dir.path().join("img"), &["a.png", "b.png"]);
    let csv = dir.path().join("pairs.csv");
    std::fs::write(
        &csv,
        b"url,caption,other\nimg/a.png,\"a, with comma\",x\nimg/missing.png,gone,x\nimg/b.png,,x\nimg/b.png,caf\xe9,x\nimg/b.png,the b picture,x\n",
    )
    .unwrap();
    let columns = CsvColumns {
        image: "url".into(),
        caption: "caption".into(),
        label: None,
        separator: b',',
    };
    let mut source = CsvSource::open(&csv, &columns).unwrap();
    let batch = batcher()
        .next_batch(&mut source, &mut 0, 2)
        .unwrap()
        .unwrap();
    assert_eq!(batch.captions, ["a, with comma", "the b picture"]);
    let kinds: Vec<_> = batch
        .errors
        .iter()
        .map(|e| (e.kind, e.location.rsplit(' ').next().unwrap().to_string()))
        .collect();
    // In the order found: row 2 when its file was read (first round), then rows 3 and 4 by the
    // reader while refilling the batch.
    assert_eq!(
        kinds,
        [
            (SampleErrorKind::MissingImage, "2".into()),
            (SampleErrorKind::MissingCaption, "3".into()),
            (SampleErrorKind::BadCaption, "4".into()),
        ]
    );

    // TSV with open_clip's default columns.
    let tsv = dir.path().join("pairs.tsv");
    std::fs::write(&tsv, "filepath\ttitle\nimg/a.png\tfirst\n").unwrap();
    let (good, _) = drain(CsvSource::open(&tsv, &CsvColumns::default()).unwrap());
    assert_eq!(good, ["first"]);

    // Start-up errors name the file and the column.
    let err = CsvSource::open(&csv, &CsvColumns::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("pairs.csv: no column `filepath` (data.csv_img_key)"),
        "{err}"
    );
    assert!(err.contains("wrong csv_separator"), "{err}");
    let err = CsvSource::open(&dir.path().join("nope.csv"), &columns)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nope.csv"), "{err}");
}

#[test]
fn image_folders_pair_images_with_sidecar_captions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    write_images(dir.path(), &["1.png", "2.png"]);
    write_images(&dir.path().join("sub"), &["3.png"]);
    std::fs::write(dir.path().join("1.txt"), "one").unwrap();
    std::fs::write(dir.path().join("sub/3.txt"), "three").unwrap();
    std::fs::write(dir.path().join("4.txt"), "orphan caption").unwrap();
    let (good, bad) = drain(FolderSource::open(dir.path()).unwrap());
    assert_eq!(good, ["one", "three"]);
    assert_eq!(
        bad,
        [
            SampleErrorKind::MissingCaption,
            SampleErrorKind::MissingImage
        ]
    );
    assert!(FolderSource::open(&dir.path().join("none")).is_err());
}

fn shard_dir(samples: u8) -> (tempfile::TempDir, DataConfig) {
    let dir = tempfile::tempdir().unwrap();
    for shard in 0..2u8 {
        let members: Vec<(String, Vec<u8>)> = (0..samples / 2)
            .flat_map(|i| {
                let n = shard * (samples / 2) + i;
                [
                    (format!("{n:03}.png"), png(n)),
                    (format!("{n:03}.txt"), format!("c{n}").into_bytes()),
                ]
            })
            .collect();
        let members: Vec<(&str, Vec<u8>)> = members
            .iter()
            .map(|(n, d)| (n.as_str(), d.clone()))
            .collect();
        write_tar(&dir.path().join(format!("{shard}.tar")), &members);
    }
    let config = DataConfig {
        source: SourceKind::Webdataset,
        path: Some(Paths::One(format!("{}/{{0..1}}.tar", dir.path().display()))),
        shuffle_buffer: 8,
        ..DataConfig::default()
    };
    (dir, config)
}

#[test]
fn shuffling_is_a_seeded_permutation() {
    let (_dir, config) = shard_dir(20);
    let order = |seed| drain(config.open_stream(seed, 16).unwrap().take(20)).0;
    let (a, b, c) = (order(1), order(1), order(2));
    assert_eq!(a, b);
    assert_ne!(a, c);
    let mut sorted = a.clone();
    sorted.sort();
    let mut all: Vec<String> = (0..20).map(|n| format!("c{n}")).collect();
    all.sort();
    assert_eq!(sorted, all, "an epoch is a permutation of the data");
    assert_ne!(a, (0..20).map(|n| format!("c{n}")).collect::<Vec<_>>());

    // A shuffle buffer alone, over any source.
    let (_dir2, plain) = shard_dir(20);
    let shards = expand_shards(&plain.path.unwrap().to_vec()).unwrap();
    let shuffled = drain(ShuffleBuffer::new(
        Box::new(TarSource::new(shards, ImageLimits::default())),
        5,
        3,
    ))
    .0;
    assert_eq!(shuffled.len(), 20);
}

#[test]
fn a_stream_resumed_at_a_batch_boundary_continues_exactly() {
    let (_dir, config) = shard_dir(20);
    let batcher = batcher().with_transform(TrainTransform::RandomResizedCrop, 5);
    // Three batches of 8 cross the epoch boundary (20 samples per epoch).
    let mut stream = config.open_stream(9, 16).unwrap();
    let mut position = stream.position();
    let batches: Vec<_> = (0..3)
        .map(|_| {
            batcher
                .next_batch(&mut stream, &mut position, 8)
                .unwrap()
                .unwrap()
        })
        .collect();
    assert!(stream.epoch() >= 1);

    let mut resumed = config.open_stream(9, 16).unwrap();
    resumed.fast_forward(batches[0].stream_position);
    let mut position = resumed.position();
    for expected in &batches[1..] {
        let batch = batcher
            .next_batch(&mut resumed, &mut position, 8)
            .unwrap()
            .unwrap();
        assert_eq!(batch.captions, expected.captions);
        assert_eq!(
            batch.pixels, expected.pixels,
            "augmentation depends on the stream index only"
        );
        assert_eq!(batch.stream_position, expected.stream_position);
    }
}

#[test]
fn random_resized_crop_is_seeded_and_keeps_most_of_the_image() {
    use rand::SeedableRng;
    let mut image = RgbImage::new(40, 30);
    for (x, y, p) in image.enumerate_pixels_mut() {
        *p = Rgb([(x * 6) as u8, (y * 8) as u8, 100]);
    }
    let image = DynamicImage::ImageRgb8(image);
    let run = |seed| {
        let mut out = vec![0.0; 3 * 16 * 16];
        TrainTransform::RandomResizedCrop.apply_into(
            &image,
            16,
            &mut rand::rngs::StdRng::seed_from_u64(seed),
            &mut out,
        );
        out
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
    // 90-100% of the area: the output spans nearly the whole gradient in both directions.
    for seed in 0..20 {
        let out = run(seed);
        let red = &out[..256];
        let (min, max) = red
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let full = (234.0 / 255.0) / mm_data::CLIP_STD[0];
        assert!(
            max - min > 0.75 * full,
            "seed {seed}: crop spans {} of {full}",
            max - min
        );
    }
}

/// Where captions are optional (embedding images), an image without one has the empty
/// caption in every source, and the CSV needs no caption column; other faults stay faults.
#[test]
fn optional_captions_keep_images_without_them() {
    use mm_data::{Captions, TarSource};
    let dir = tempfile::tempdir().unwrap();
    write_images(dir.path(), &["1.png", "2.png"]);
    std::fs::write(dir.path().join("1.txt"), "one").unwrap();
    let folder = FolderSource::open_with(dir.path(), Captions::Optional).unwrap();
    assert_eq!(drain(folder), (vec!["one".into(), String::new()], vec![]));

    let csv = dir.path().join("images.csv");
    std::fs::write(&csv, "filepath\n1.png\n\n2.png\n").unwrap();
    let columns = CsvColumns {
        separator: b',',
        ..CsvColumns::default()
    };
    let err = CsvSource::open(&csv, &columns).err().unwrap().to_string();
    assert!(err.contains("no column `title`"), "{err}");
    let rows = CsvSource::open_with(&csv, &columns, Captions::Optional).unwrap();
    let (good, bad) = drain(rows);
    assert_eq!(good, ["", ""]);
    assert!(
        bad.is_empty() || bad == [SampleErrorKind::MissingImage],
        "{bad:?}"
    );

    let shard = dir.path().join("s.tar");
    write_tar(
        &shard,
        &[
            ("a.png", png(1)),
            ("b.png", png(2)),
            ("b.txt", b"bee".to_vec()),
            ("c.txt", b"no image".to_vec()),
            ("d.txt", vec![0xff, 0xfe]),
            ("d.png", png(3)),
        ],
    );
    let tar = |captions| {
        drain(TarSource::with_captions(
            vec![shard.clone()],
            ImageLimits::default(),
            captions,
        ))
    };
    assert_eq!(
        tar(Captions::Optional),
        (
            vec![String::new(), "bee".into()],
            vec![SampleErrorKind::MissingImage, SampleErrorKind::BadCaption]
        )
    );
    assert_eq!(
        tar(Captions::Required).1,
        [
            SampleErrorKind::MissingCaption,
            SampleErrorKind::MissingImage,
            SampleErrorKind::BadCaption
        ]
    );
}

/// Every item's label (good samples) or kind (skipped ones).
fn labels_of(
    source: impl Iterator<Item = Result<mm_data::ImageTextPair, mm_data::SampleError>>,
) -> Vec<Result<Option<String>, SampleErrorKind>> {
    source
        .map(|item| item.map(|p| p.label).map_err(|e| e.kind))
        .collect()
}

#[test]
fn labels_come_from_the_label_column_cls_members_and_class_folders() {
    use mm_data::Labels;
    let dir = tempfile::tempdir().unwrap();
    write_images(dir.path(), &["a.png", "b.png"]);

    // CSV: the label column; an empty label is a skipped, counted sample; no column is an
    // error naming the key.
    let csv = dir.path().join("rows.csv");
    std::fs::write(
        &csv,
        "filepath,title,label\na.png,one,cat\nb.png,two,\nb.png,three, dog \n",
    )
    .unwrap();
    let columns = CsvColumns {
        label: Some("label".into()),
        separator: b',',
        ..CsvColumns::default()
    };
    let got = labels_of(CsvSource::open(&csv, &columns).unwrap());
    assert_eq!(
        got,
        vec![
            Ok(Some("cat".into())),
            Err(SampleErrorKind::MissingLabel),
            Ok(Some("dog".into()))
        ]
    );
    let no_labels = CsvColumns {
        label: None,
        separator: b',',
        ..CsvColumns::default()
    };
    assert!(
        labels_of(CsvSource::open(&csv, &no_labels).unwrap())
            .iter()
            .all(|l| l == &Ok(None))
    );
    let wrong = CsvColumns {
        label: Some("class".into()),
        separator: b',',
        ..CsvColumns::default()
    };
    let err = CsvSource::open(&csv, &wrong).err().unwrap().to_string();
    assert!(
        err.contains("no column `class` (data.csv_label_key)"),
        "{err}"
    );

    // Shards: the `.cls` member, read only when labels are needed.
    let shard = dir.path().join("s.tar");
    let long = "x".repeat(mm_data::MAX_LABEL_BYTES + 1);
    write_tar(
        &shard,
        &[
            ("0.png", png(0)),
            ("0.txt", b"zero".to_vec()),
            ("0.cls", b"3\n".to_vec()),
            ("1.png", png(1)),
            ("1.txt", b"one".to_vec()),
            ("2.png", png(2)),
            ("2.txt", b"two".to_vec()),
            ("2.cls", long.into_bytes()),
            ("3.png", png(3)),
            ("3.txt", b"three".to_vec()),
            ("3.cls", vec![0xff, 0xfe]),
        ],
    );
    let read = |labels| {
        labels_of(TarSource::reading(
            vec![shard.clone()],
            ImageLimits::default(),
            (mm_data::Captions::Required, labels),
        ))
    };
    assert_eq!(
        read(Labels::Required),
        vec![
            Ok(Some("3".into())),
            Err(SampleErrorKind::MissingLabel),
            Err(SampleErrorKind::MissingLabel),
            Err(SampleErrorKind::MissingLabel),
        ]
    );
    assert_eq!(read(Labels::Ignored), vec![Ok(None); 4]);

    // Folders: the top-level folder names the class; an image at the root has none.
    let root = dir.path().join("tree");
    for class in ["cat", "dog/puppies"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
    }
    for (path, caption) in [
        ("cat/1.png", "c"),
        ("dog/puppies/2.png", "p"),
        ("3.png", "r"),
    ] {
        std::fs::write(root.join(path), png(1)).unwrap();
        std::fs::write(root.join(path).with_extension("txt"), caption).unwrap();
    }
    let folder = FolderSource::open(&root)
        .unwrap()
        .with_labels(Labels::Required);
    let mut got = labels_of(folder);
    got.sort_by_key(|l| format!("{l:?}"));
    assert_eq!(
        got,
        vec![
            Err(SampleErrorKind::MissingLabel),
            Ok(Some("cat".into())),
            Ok(Some("dog".into())),
        ]
    );
}

#[test]
fn the_built_in_tasks_stream_labelled_pairs() {
    for (task, classes) in [
        ("matching", ["no", "yes"].as_slice()),
        ("question", &["red", "star"]),
    ] {
        let config: DataConfig = toml::from_str(&format!("shapes_task = \"{task}\"")).unwrap();
        let source = config.open_epoch(3, 0, 32).unwrap();
        assert!(source.describe().contains(task), "{}", source.describe());
        let labels: Vec<String> = source
            .take(200)
            .map(|p| p.unwrap().label.unwrap())
            .collect();
        for class in classes {
            assert!(
                labels.iter().any(|l| l == class),
                "{task}: no {class} in {labels:?}"
            );
        }
    }
}

#[test]
fn k_fold_parts_are_disjoint_and_cover_the_data() {
    use mm_data::Fold;
    let locations: Vec<String> = (0..3000).map(|i| format!("rows.csv row {i}")).collect();
    let folds = 5;
    let mut sizes = vec![0usize; folds];
    for location in &locations {
        let held_out: Vec<usize> = (0..folds)
            .filter(|&index| {
                Fold {
                    index,
                    of: folds,
                    held_out: true,
                }
                .keeps(location)
            })
            .collect();
        assert_eq!(held_out.len(), 1, "{location} is held out by {held_out:?}");
        sizes[held_out[0]] += 1;
        for index in 0..folds {
            let trains = Fold {
                index,
                of: folds,
                held_out: false,
            }
            .keeps(location);
            assert_eq!(trains, index != held_out[0], "{location}, fold {index}");
        }
    }
    // Balanced to within a few percent.
    assert!(sizes.iter().all(|&n| (540..660).contains(&n)), "{sizes:?}");

    // Through a source: the held-out parts of a CSV partition its rows.
    let dir = tempfile::tempdir().unwrap();
    write_images(dir.path(), &["a.png"]);
    let csv = dir.path().join("rows.csv");
    let mut rows = String::from("filepath,title\n");
    for i in 0..60 {
        rows += &format!("a.png,caption {i}\n");
    }
    std::fs::write(&csv, rows).unwrap();
    let config = |fold| DataConfig {
        source: SourceKind::Csv,
        path: Some(Paths::One(csv.display().to_string())),
        fold,
        ..DataConfig::default()
    };
    let mut seen: Vec<String> = Vec::new();
    for index in 0..3 {
        let part = Some(Fold {
            index,
            of: 3,
            held_out: true,
        });
        let (good, _) = drain(config(part).open_epoch(0, 0, 16).unwrap());
        let (rest, _) = drain(
            config(Some(Fold {
                index,
                of: 3,
                held_out: false,
            }))
            .open_epoch(0, 0, 16)
            .unwrap(),
        );
        assert_eq!(good.len() + rest.len(), 60);
        assert!(good.iter().all(|c| !rest.contains(c)));
        seen.extend(good);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 60);
    let bad = config(Some(Fold {
        index: 3,
        of: 3,
        held_out: true,
    }));
    assert_eq!(bad.check().unwrap_err().0, "data.fold");
}

#[test]
fn question_answer_rows_become_prompted_texts_and_rows_without_answers_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("vqa.csv");
    std::fs::write(
        &csv,
        "filepath,question,answer\na.png,what colour is the star?,red\nb.png,what shape is it?,\nc.png,how many?,two\n",
    )
    .unwrap();
    let config = DataConfig {
        source: mm_data::SourceKind::Csv,
        path: Some(mm_data::Paths::One(csv.display().to_string())),
        csv_caption_key: "question".into(),
        csv_label_key: "answer".into(),
        text_format: mm_data::TextFormat::QuestionAnswer,
        shuffle_buffer: 0,
        ..DataConfig::default()
    };
    config.check().unwrap();
    let items: Vec<_> = config.open_epoch(0, 0, 16).unwrap().collect();
    assert_eq!(items.len(), 3);
    assert_eq!(
        items[0].as_ref().unwrap().caption,
        "question: what colour is the star? answer: red"
    );
    let missing = items[1].as_ref().unwrap_err();
    assert_eq!(
        missing.kind,
        mm_data::SampleErrorKind::MissingLabel,
        "{missing}"
    );
    assert_eq!(
        items[2].as_ref().unwrap().caption,
        mm_data::TextFormat::question_answer("how many?", "two")
    );
    // Skipping past rows is the inner source's: the third row, still formatted.
    let third = config
        .open_epoch(0, 0, 16)
        .unwrap()
        .nth(2)
        .unwrap()
        .unwrap();
    assert_eq!(third.caption, "question: how many? answer: two");
    // A question-answer text the context cannot hold is skipped, not cut before its answer.
    let long_csv = dir.path().join("long.csv");
    let image = dir.path().join("a.png");
    image::RgbImage::new(16, 16).save(&image).unwrap();
    let image = image.display();
    let words = "is it ".repeat(8);
    std::fs::write(
        &long_csv,
        format!("filepath,question,answer\n{image},{words}?,yes\n{image},short?,no\n"),
    )
    .unwrap();
    let long = DataConfig {
        path: Some(mm_data::Paths::One(long_csv.display().to_string())),
        ..config.clone()
    };
    let whole = batcher().with_question_answers(true);
    let mut source = long.open_epoch(0, 0, 16).unwrap();
    let batch = whole
        .next_batch_or_rest(source.as_mut(), &mut 0, 2)
        .unwrap()
        .unwrap();
    assert_eq!(batch.captions, ["question: short? answer: no"]);
    // Its prompt is given, its answer (and end token) predicted: the start token and
    // question / : / short / ? / answer / :.
    assert_eq!(batch.prompt_lengths, [7]);
    assert_eq!(batch.errors.len(), 1);
    assert!(
        batch.errors[0]
            .message
            .contains("more than the context's 12"),
        "{}",
        batch.errors[0]
    );
    // As captions, the long text is cut to the context instead.
    let mut source = long.open_epoch(0, 0, 16).unwrap();
    let cut = batcher()
        .next_batch_or_rest(source.as_mut(), &mut 0, 2)
        .unwrap()
        .unwrap();
    assert_eq!(cut.batch_size, 2);
    assert_eq!(cut.prompt_lengths, [1, 1]);
    // The built-in pairs have no questions.
    let builtin = DataConfig {
        text_format: mm_data::TextFormat::QuestionAnswer,
        ..DataConfig::default()
    };
    assert_eq!(builtin.check().unwrap_err().0, "data.text_format");
    let questions = DataConfig {
        shapes_task: mm_data::ShapesTask::Question,
        ..builtin
    };
    let pair = questions
        .open_epoch(1, 0, 16)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let (question, answer) = pair.caption.split_once(" answer: ").unwrap();
    assert!(
        question.starts_with("question: ") && question.ends_with('?'),
        "{question}"
    );
    assert_eq!(Some(answer), pair.label.as_deref());
}
