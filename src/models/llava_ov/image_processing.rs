//! Image preprocessing of the LLaVA-OneVision judges (spec-judges §2), bit-exact to the seed:
//! Pillow's separable bicubic resize (fixed-point, uint8 between passes), `expand2square` with grey
//! (127,127,127), SigLIP normalisation to [-1, 1], and the `anyres_max_N` crop geometry
//! (select_best_resolution, resize_and_pad on black, divide_to_patches, unpad).
use anyhow::{ensure, Result};
use image::RgbImage;
use tch::{Device, Kind, Tensor};

/// Pillow `Resample.c` fixed-point precision for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow `precompute_coeffs` + `normalize_coeffs_8bpc` for the full box: per output index the first
/// input index and the fixed-point weights.
fn coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C `(int)` truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let mut k: Vec<f64> = (0..n)
                .map(|x| bicubic_filter((x as f64 + xmin as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|v| *v /= ww);
            }
            let one = (1i64 << PRECISION_BITS) as f64;
            let fixed = k
                .iter()
                .map(|&v| {
                    if v < 0.0 {
                        (-0.5 + v * one) as i32
                    } else {
                        (0.5 + v * one) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// `img.resize((w, h), Image.BICUBIC)` of Pillow, bit for bit (horizontal pass first, rounding to
/// uint8 between passes; a pass is skipped when its size is unchanged).
pub fn resize_bicubic(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (out_w as usize, out_h as usize);
    let src = img.as_raw();
    let horizontal = if ow != in_w {
        let cs = coeffs(in_w, ow);
        let mut out = vec![0u8; ow * in_h * 3];
        for y in 0..in_h {
            for (xx, (xmin, k)) in cs.iter().enumerate() {
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (x, &kw) in k.iter().enumerate() {
                        ss += src[(y * in_w + xmin + x) * 3 + c] as i64 * kw as i64;
                    }
                    out[(y * ow + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        out
    } else {
        src.clone()
    };
    let vertical = if oh != in_h {
        let cs = coeffs(in_h, oh);
        let mut out = vec![0u8; ow * oh * 3];
        for (yy, (ymin, k)) in cs.iter().enumerate() {
            for xx in 0..ow {
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (y, &kw) in k.iter().enumerate() {
                        ss += horizontal[((ymin + y) * ow + xx) * 3 + c] as i64 * kw as i64;
                    }
                    out[(yy * ow + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        out
    } else {
        horizontal
    };
    RgbImage::from_raw(out_w, out_h, vertical).expect("buffer size matches")
}

/// Pastes `img` onto a `w`×`h` canvas of colour `bg` at (x, y) (PIL `Image.new` + `paste`).
fn paste_on(img: &RgbImage, w: u32, h: u32, bg: [u8; 3], x: u32, y: u32) -> RgbImage {
    let mut canvas = RgbImage::from_pixel(w, h, image::Rgb(bg));
    image::imageops::replace(&mut canvas, img, x as i64, y as i64);
    canvas
}

/// LLaVA `expand2square` with background `(127,127,127)` (`int(0.5*255)` per channel).
pub fn expand2square(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == h {
        return img.clone();
    }
    let s = w.max(h);
    paste_on(img, s, s, [127, 127, 127], (s - w) / 2, (s - h) / 2)
}

/// SigLIP preprocessing of one crop: bicubic resize to `size`² (skipped when already that size, as
/// PIL returns a copy), `x·(1/255)` (float64 → float32), `(x − 0.5)/0.5` → [3, size, size] in [-1, 1].
pub fn siglip_pixels(img: &RgbImage, size: u32) -> Tensor {
    let r = if img.dimensions() == (size, size) {
        img.clone()
    } else {
        resize_bicubic(img, size, size)
    };
    let data: Vec<f32> = r
        .as_raw()
        .iter()
        .map(|&v| {
            let x = (v as f64 * (1.0 / 255.0)) as f32;
            (x - 0.5f32) / 0.5f32
        })
        .collect();
    Tensor::from_slice(&data)
        .view([size as i64, size as i64, 3])
        .permute([2, 0, 1])
        .contiguous()
}

/// The seed's inference preprocessing ("pad"): expand2square → SigLIP → [3, size, size].
pub fn preprocess_pad(img: &RgbImage, size: u32) -> Tensor {
    siglip_pixels(&expand2square(img), size)
}

/// Show-o's image → PNG conversion: [3, H, W] float in [-1, 1] → `clamp((x+1)/2, 0, 1)·255` truncated
/// to uint8 (spec-showo.md), so judges see exactly the pixels the seed saved and re-read.
pub fn image_from_unit_tensor(t: &Tensor) -> Result<RgbImage> {
    let s = t.size();
    ensure!(
        s.len() == 3 && s[0] == 3,
        "expected an image tensor [3, H, W], got {s:?}"
    );
    let u8s = ((t.to_device(Device::Cpu).to_kind(Kind::Float) + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0;
    let hwc = u8s.to_kind(Kind::Uint8).permute([1, 2, 0]).contiguous();
    let data: Vec<u8> = Vec::<u8>::try_from(hwc.flatten(0, -1))?;
    RgbImage::from_raw(s[2] as u32, s[1] as u32, data)
        .ok_or_else(|| anyhow::anyhow!("image buffer size"))
}

/// `select_best_resolution` (mm_utils.py:119-149): `size` and the candidates are (width, height).
pub fn select_best_resolution(size: (i64, i64), candidates: &[(i64, i64)]) -> (i64, i64) {
    let (ow, oh) = (size.0 as f64, size.1 as f64);
    let mut best = candidates[0];
    let mut max_eff = 0i64;
    let mut min_waste = i64::MAX;
    for &(w, h) in candidates {
        let scale = (w as f64 / ow).min(h as f64 / oh);
        let (dw, dh) = ((ow * scale) as i64, (oh * scale) as i64);
        let eff = (dw * dh).min(size.0 * size.1);
        let waste = w * h - eff;
        if eff > max_eff || (eff == max_eff && waste < min_waste) {
            max_eff = eff;
            min_waste = waste;
            best = (w, h);
        }
    }
    best
}

/// `resize_and_pad_image` (mm_utils.py:152-188): fit inside `target` (w, h) keeping the aspect, PIL
/// bicubic, centred on black.
pub fn resize_and_pad(img: &RgbImage, target: (i64, i64)) -> RgbImage {
    let (ow, oh) = (img.width() as f64, img.height() as f64);
    let (tw, th) = target;
    let (sw, sh) = (tw as f64 / ow, th as f64 / oh);
    let (nw, nh) = if sw < sh {
        (tw, ((oh * sw).ceil() as i64).min(th))
    } else {
        (((ow * sh).ceil() as i64).min(tw), th)
    };
    let r = resize_bicubic(img, nw as u32, nh as u32);
    paste_on(
        &r,
        tw as u32,
        th as u32,
        [0, 0, 0],
        ((tw - nw) / 2) as u32,
        ((th - nh) / 2) as u32,
    )
}

/// The anyres crops of one image: `[base, row-major grid crops...]` as [1 + rows·cols, 3, size, size],
/// plus (cols, rows) of the grid (process_anyres_image, mm_utils.py:243-293).
pub fn preprocess_anyres(
    img: &RgbImage,
    pinpoints: &[(i64, i64)],
    size: u32,
) -> Result<(Tensor, (i64, i64))> {
    ensure!(!pinpoints.is_empty(), "anyres: no image_grid_pinpoints");
    let best = select_best_resolution((img.width() as i64, img.height() as i64), pinpoints);
    ensure!(
        best.0 % size as i64 == 0 && best.1 % size as i64 == 0,
        "anyres: pinpoint {best:?} is not a multiple of the crop size {size}"
    );
    let padded = resize_and_pad(img, best);
    let mut crops = vec![siglip_pixels(&resize_bicubic(img, size, size), size)];
    let s = size as i64;
    for y in (0..best.1).step_by(size as usize) {
        for x in (0..best.0).step_by(size as usize) {
            let c = image::imageops::crop_imm(&padded, x as u32, y as u32, size, size).to_image();
            crops.push(siglip_pixels(&c, size));
        }
    }
    Ok((Tensor::stack(&crops, 0), (best.0 / s, best.1 / s)))
}

/// Python's float floor division `a // b` for positive floats (fmod-based, like CPython).
pub fn py_floordiv(a: f64, b: f64) -> f64 {
    let m = a % b;
    let div = (a - m) / b;
    let mut f = div.floor();
    if div - f > 0.5 {
        f += 1.0;
    }
    f
}

/// Row/column range kept by the original `unpad_image` (llava_arch.py:127-159) for a feature map of
/// `cur` = (h, w) from an image of `orig` = (W, H): returns (top, bottom, left, right), exclusive ends.
pub fn unpad_bounds(cur: (i64, i64), orig: (i64, i64)) -> (i64, i64, i64, i64) {
    let (ch, cw) = cur;
    let (ow, oh) = (orig.0 as f64, orig.1 as f64);
    if ow / oh > cw as f64 / ch as f64 {
        let nh = (oh * (cw as f64 / ow)) as i64;
        let p = (ch - nh) / 2;
        (p, ch - p, 0, cw)
    } else {
        let nw = (ow * (ch as f64 / oh)) as i64;
        let p = (cw - nw) / 2;
        (0, ch, p, cw - p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_resolution_examples_from_the_spec() {
        let pins: Vec<(i64, i64)> = (1..=6)
            .flat_map(|i| (1..=6).map(move |j| (384 * i, 384 * j)))
            .collect();
        assert_eq!(select_best_resolution((256, 256), &pins), (384, 384));
        assert_eq!(select_best_resolution((1000, 500), &pins), (1152, 768));
        assert_eq!(select_best_resolution((500, 1000), &pins), (768, 1152));
    }

    #[test]
    fn unpad_keeps_the_image_area() {
        // 27×54 map (1×2 crops) from a 600×200 image: only rows of the content are kept.
        assert_eq!(unpad_bounds((27, 54), (600, 200)), (4, 23, 0, 54));
        // 300×110 image on a 2×6 grid of 4×4 maps: columns 1..23 kept (tests/llava_parity.py).
        assert_eq!(unpad_bounds((8, 24), (300, 110)), (0, 8, 1, 23));
        assert_eq!(unpad_bounds((27, 27), (256, 256)), (0, 27, 0, 27));
    }

    #[test]
    fn expand2square_pads_grey_centered() {
        let img = RgbImage::from_pixel(4, 2, image::Rgb([255, 0, 0]));
        let sq = expand2square(&img);
        assert_eq!(sq.dimensions(), (4, 4));
        assert_eq!(sq.get_pixel(0, 0).0, [127, 127, 127]);
        assert_eq!(sq.get_pixel(0, 1).0, [255, 0, 0]);
        assert_eq!(sq.get_pixel(3, 2).0, [255, 0, 0]);
        assert_eq!(sq.get_pixel(3, 3).0, [127, 127, 127]);
    }

    #[test]
    fn constant_image_stays_constant_under_resize() {
        let img = RgbImage::from_pixel(7, 5, image::Rgb([10, 200, 77]));
        let r = resize_bicubic(&img, 13, 3);
        assert!(r.pixels().all(|p| p.0 == [10, 200, 77]));
    }

    #[test]
    fn floordiv_matches_python() {
        assert_eq!(py_floordiv(16.0, 1.632993161855452), 9.0);
        assert_eq!(py_floordiv(7.0, 2.0), 3.0);
    }
}
