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
