use image::{DynamicImage, GrayImage, Rgb, RgbImage, RgbaImage};
use mm_data::{CLIP_MEAN, CLIP_STD, normalize_into, resize_center_crop};

#[test]
fn resize_takes_the_shorter_side_and_crops_the_centre() {
    // A 60x30 image: left third red, middle third green, right third blue.
    let image = RgbImage::from_fn(60, 30, |x, _| match x / 20 {
        0 => Rgb([255, 0, 0]),
        1 => Rgb([0, 255, 0]),
        _ => Rgb([0, 0, 255]),
    });
    let out = resize_center_crop(&DynamicImage::ImageRgb8(image), 10);
    assert_eq!(out.dimensions(), (10, 10));
    // Scaled to 20x10, the crop keeps x in 5..15: mostly the green middle.
    assert_eq!(out.get_pixel(5, 5), &Rgb([0, 255, 0]));
    assert!(
        out.get_pixel(0, 5)[0] > 0,
        "left edge reaches into the red third"
    );
}

#[test]
fn other_colour_types_become_rgb() {
    let grey = DynamicImage::ImageLuma8(GrayImage::from_pixel(8, 8, image::Luma([200])));
    assert_eq!(
        resize_center_crop(&grey, 8).get_pixel(3, 3),
        &Rgb([200, 200, 200])
    );
    let rgba = DynamicImage::ImageRgba8(RgbaImage::from_pixel(
        16,
        12,
        image::Rgba([10, 20, 30, 255]),
    ));
    let out = resize_center_crop(&rgba, 6);
    assert_eq!(out.dimensions(), (6, 6));
    assert_eq!(out.get_pixel(2, 2), &Rgb([10, 20, 30]));
}

#[test]
fn normalisation_is_chw_with_clip_mean_and_std() {
    let image = RgbImage::from_fn(2, 1, |x, _| {
        if x == 0 {
            Rgb([255, 0, 128])
        } else {
            Rgb([0, 255, 64])
        }
    });
    let mut out = vec![0.0; 6];
    normalize_into(&image, &mut out);
    let expect = |v: f32, c: usize| (v / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
    let want = [
        expect(255.0, 0),
        expect(0.0, 0),
        expect(0.0, 1),
        expect(255.0, 1),
        expect(128.0, 2),
        expect(64.0, 2),
    ];
    for (got, want) in out.iter().zip(want) {
        assert!((got - want).abs() < 1e-6);
    }
}

/// mm's transform against HF's `pixel_values` (scripts/make_hf_fixtures.py) for odd-sized
/// RGB, RGBA, greyscale and palette images, down- (to 32) and up-scaled (to 80).
///
/// Documented tolerance: identical (to float rounding) to `CLIPImageProcessorPil`, because mm's
/// resize is Pillow's algorithm; within one 8-bit level (1/255/std ≈ 0.0151 after
/// normalisation) of the torchvision `CLIPImageProcessor`, which resizes with its own
/// fixed-point kernel.
#[test]
fn matches_hf_clip_image_processor() {
    use mm_data::{load_image, preprocess_into};
    use safetensors::SafeTensors;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf");
    let bytes = std::fs::read(fixtures.join("preprocess.reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(fixtures.join("images"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 5);
    for (backend, tolerance) in [
        ("pil", 1e-6),
        ("torchvision", 1.0 / 255.0 / CLIP_STD[1] + 1e-6),
    ] {
        let mut worst = 0.0f32;
        for size in [32usize, 80] {
            for name in &names {
                let image = load_image(&fixtures.join(format!("images/{name}.png"))).unwrap();
                let mut ours = vec![0.0; 3 * size * size];
                preprocess_into(&image, size, &mut ours);
                let view = st.tensor(&format!("{backend}/{size}/{name}")).unwrap();
                assert_eq!(view.shape(), [3, size, size]);
                for (a, b) in ours.iter().zip(view.data().chunks_exact(4)) {
                    let d = (a - f32::from_le_bytes(b.try_into().unwrap())).abs();
                    assert!(d <= tolerance, "{backend} {size} {name}: differs by {d}");
                    worst = worst.max(d);
                }
            }
        }
        println!("{backend}: max |mm - HF| {worst:.2e}");
    }
}

#[test]
fn transparency_is_composited_onto_white() {
    let clear = DynamicImage::ImageRgba8(RgbaImage::from_pixel(4, 4, image::Rgba([0, 0, 0, 0])));
    assert_eq!(
        resize_center_crop(&clear, 4).get_pixel(1, 1),
        &Rgb([255, 255, 255])
    );
    let half =
        DynamicImage::ImageRgba8(RgbaImage::from_pixel(4, 4, image::Rgba([0, 100, 200, 128])));
    // c * a/255 + 255 * (1 - a/255), rounded.
    assert_eq!(
        resize_center_crop(&half, 4).get_pixel(1, 1),
        &Rgb([127, 177, 227])
    );
}
