//! Glyph renderer ↔ encoder: exact round trips on host pixels and tensors, robustness to noise.
use imgcot::glyphs::rng::{below, seeded};
use imgcot::glyphs::world::{
    self, encode, patches, render, Codes, Glyph, COLOR_RGB, IMAGE_BYTES, NUM_CODES, WHITE,
};
use imgcot::models::glyph_vq::{
    codes_to_tensor, images_to_tensor, tensor_to_codes, tensor_to_images, GlyphTokenizer,
};
use imgcot::models::ImageTokenizer;
use tch::{Device, Kind, Tensor};

fn random_codes(seed: u64, n: usize) -> Vec<Codes> {
    let mut rng = seeded(seed, 0);
    (0..n)
        .map(|_| {
            let mut c = [0u8; 64];
            for x in c.iter_mut() {
                *x = below(&mut rng, NUM_CODES) as u8;
            }
            c
        })
        .collect()
}

/// Every code in every cell: 37 images, image i holds code (i + k) mod 37 at cell k.
fn all_code_images() -> Vec<Codes> {
    (0..NUM_CODES)
        .map(|i| {
            let mut c = [0u8; 64];
            for (k, x) in c.iter_mut().enumerate() {
                *x = ((i + k) % NUM_CODES) as u8;
            }
            c
        })
        .collect()
}

#[test]
fn host_round_trip_all_codes_and_random_images() {
    for codes in all_code_images().iter().chain(random_codes(1, 200).iter()) {
        assert_eq!(&encode(&render(codes)).unwrap(), codes);
    }
}

#[test]
fn render_paints_exactly_the_predicates() {
    let mut codes = [0u8; 64];
    let g = Glyph { shape: 3, color: 1 };
    codes[8 * 7 + 2] = g.code(); // diamond, green, row 7 col 2
    let img = render(&codes);
    for y in 0..128 {
        for x in 0..128 {
            let px = &img[3 * (128 * y + x)..3 * (128 * y + x) + 3];
            let inside = (112..128).contains(&y)
                && (32..48).contains(&x)
                && world::shape_covers(3, x - 32, y - 112);
            assert_eq!(
                px,
                if inside {
                    &COLOR_RGB[1][..]
                } else {
                    &WHITE[..]
                },
                "({x},{y})"
            );
        }
    }
}

/// Smallest summed squared distance between two distinct code patches.
fn min_patch_distance() -> u64 {
    let p = patches();
    let mut best = u64::MAX;
    for a in 0..NUM_CODES {
        for b in a + 1..NUM_CODES {
            let d = p[a]
                .iter()
                .zip(p[b].iter())
                .map(|(&x, &y)| (x as i64 - y as i64).pow(2) as u64)
                .sum();
            best = best.min(d);
        }
    }
    best
}

fn add_noise(img: &[u8], amp: i64, seed: u64) -> Vec<u8> {
    let mut rng = seeded(seed, 1);
    img.iter()
        .map(|&v| {
            (v as i64 + below(&mut rng, (2 * amp + 1) as usize) as i64 - amp).clamp(0, 255) as u8
        })
        .collect()
}

#[test]
fn encode_is_robust_to_noise() {
    let dmin = min_patch_distance();
    assert!(dmin > 0, "two codes paint the same patch");
    // Guaranteed regime: per-patch noise norm below half the smallest patch distance.
    let amp = ((dmin as f64 / 4.0 / 768.0).sqrt().floor() as i64 - 1).max(1);
    // Practical regime: much stronger uniform noise (±40 per channel) on random scenes.
    for (i, codes) in random_codes(2, 100).iter().enumerate() {
        let img = render(codes);
        assert_eq!(
            &encode(&add_noise(&img, amp, i as u64)).unwrap(),
            codes,
            "amp {amp}"
        );
        assert_eq!(
            &encode(&add_noise(&img, 40, 1000 + i as u64)).unwrap(),
            codes,
            "amp 40"
        );
    }
}

#[test]
fn encode_ties_go_to_the_lowest_code() {
    // Paint every other pixel of a yellow triangle: the cell is then exactly as far from the
    // empty cell (code 0) as from the yellow triangle. Yellow is the color nearest to white and
    // the triangle the smallest shape, so no other code is as near (checked below).
    let p = patches();
    let yellow_triangle = Glyph { shape: 2, color: 3 }.code() as usize;
    let painted: Vec<usize> = (0..256)
        .filter(|&i| p[yellow_triangle][3 * i..3 * i + 3] != WHITE)
        .collect();
    assert_eq!(painted.len() % 2, 0);
    let mut img = vec![255u8; IMAGE_BYTES];
    for &i in painted.iter().step_by(2) {
        let (dx, dy) = (i % 16, i / 16);
        img[3 * (128 * dy + dx)..3 * (128 * dy + dx) + 3].copy_from_slice(&COLOR_RGB[3]);
    }
    let dist = |code: usize| -> u64 {
        (0..256)
            .map(|i| {
                let (dx, dy) = (i % 16, i / 16);
                (0..3)
                    .map(|ch| {
                        (img[3 * (128 * dy + dx) + ch] as i64 - p[code][3 * i + ch] as i64).pow(2)
                            as u64
                    })
                    .sum::<u64>()
            })
            .sum()
    };
    assert_eq!(dist(0), dist(yellow_triangle));
    let others = (1..NUM_CODES)
        .filter(|&c| c != yellow_triangle)
        .map(dist)
        .min()
        .unwrap();
    assert!(
        others > dist(0),
        "construction is not a two-way tie at the minimum"
    );
    assert_eq!(encode(&img).unwrap()[0], 0);
    let tok = GlyphTokenizer::new();
    let t = images_to_tensor(&[img], Device::Cpu).unwrap();
    assert_eq!(tok.encode(&t).unwrap().int64_value(&[0, 0]), 0);
}

#[test]
fn tensor_decode_equals_host_render() {
    let tok = GlyphTokenizer::new();
    let codes: Vec<Codes> = all_code_images()
        .into_iter()
        .chain(random_codes(3, 27))
        .collect();
    let t = codes_to_tensor(&codes, Device::Cpu);
    let images = tok.decode(&t).unwrap();
    assert_eq!(images.size(), vec![64, 3, 128, 128]);
    assert_eq!(images.kind(), Kind::Float);
    let host: Vec<Vec<u8>> = codes.iter().map(render).collect();
    let expected = images_to_tensor(&host, Device::Cpu).unwrap();
    // Exactly v / 127.5 − 1, element for element.
    assert!(images.equal(&expected));
    assert_eq!(tensor_to_images(&images).unwrap(), host);
    // Round trip through the tensor encoder.
    assert_eq!(
        tensor_to_codes(&tok.encode(&images).unwrap()).unwrap(),
        codes
    );
}

#[test]
fn tensor_encode_matches_host_encode_on_noisy_floats() {
    let tok = GlyphTokenizer::new();
    let codes = random_codes(4, 16);
    let clean = tok.decode(&codes_to_tensor(&codes, Device::Cpu)).unwrap();
    tch::manual_seed(0);
    let noisy = (&clean + Tensor::randn_like(&clean) * 0.15).clamp(-1.2, 1.2);
    let got = tensor_to_codes(&tok.encode(&noisy).unwrap()).unwrap();
    assert_eq!(got, codes);
    // The host encoder on the same 8-bit pixels agrees code for code.
    let host: Vec<Codes> = tensor_to_images(&noisy)
        .unwrap()
        .iter()
        .map(|i| encode(i).unwrap())
        .collect();
    assert_eq!(host, got);
}

#[test]
fn tokenizer_interface_and_errors() {
    let tok = GlyphTokenizer::new();
    assert_eq!(tok.codebook_size(), 37);
    assert_eq!(tok.grid_size(128), 8);
    assert!(tok
        .decode(&Tensor::from_slice(&[37i64; 64]).view([1, 64]))
        .is_err());
    assert!(tok
        .decode(&Tensor::from_slice(&[-1i64; 64]).view([1, 64]))
        .is_err());
    assert!(tok
        .decode(&Tensor::zeros([1, 63], (Kind::Int64, Device::Cpu)))
        .is_err());
    assert!(tok
        .encode(&Tensor::zeros([1, 3, 100, 128], (Kind::Float, Device::Cpu)))
        .is_err());
    assert!(tok
        .encode(&Tensor::zeros([1, 1, 128, 128], (Kind::Float, Device::Cpu)))
        .is_err());
    // An all-white image is all empty cells; an all-black one is the black square everywhere
    // (the black patch nearest to a black cell has the most painted pixels).
    let white = Tensor::ones([2, 3, 128, 128], (Kind::Float, Device::Cpu));
    assert_eq!(
        tok.encode(&white).unwrap(),
        Tensor::zeros([2, 64], (Kind::Int64, Device::Cpu))
    );
    let black = -Tensor::ones([1, 3, 128, 128], (Kind::Float, Device::Cpu));
    let sq = Glyph { shape: 1, color: 5 }.code() as i64;
    assert_eq!(
        tok.encode(&black).unwrap(),
        Tensor::full([1, 64], sq, (Kind::Int64, Device::Cpu))
    );
    assert!(world::codes_from_i64(&[0; 63]).is_err());
    assert!(world::render_i64(&[40; 64]).is_err());
}
