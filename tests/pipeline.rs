//! The OCR pipeline around the model, against the reference's outputs in `tests/fixtures/`:
//! preprocessing (every case of `preprocess/preprocess.json`, plus any listed in
//! `DSOCR_EXTRA_PREPROCESS`), prompt ids, decoding, grounding.

use std::path::{Path, PathBuf};

use dsocr::ocr::grounding;
use dsocr::ocr::preprocess::{self, Mode};
use dsocr::ocr::prompt::{PromptTokenizer, SpecialIds};
use image::RgbImage;
use serde_json::Value;

mod common;
use common::{fixtures, make_model, read_json, scratch};

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|x| x.as_u64().expect("integer") as u32)
        .collect()
}

/// Mean and max absolute difference over all channels of two same-sized images.
fn diff_stats(a: &RgbImage, b: &RgbImage) -> (f64, u8) {
    let mut sum = 0u64;
    let mut max = 0u8;
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        sum += u64::from(d);
        max = max.max(d);
    }
    (sum as f64 / a.as_raw().len() as f64, max)
}

/// Compare one produced view with the reference PNG; returns a failure line or None.
fn check_view(name: &str, got: &RgbImage, expected_path: &Path) -> Option<String> {
    let expected = image::open(expected_path)
        .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()))
        .to_rgb8();
    if got.dimensions() != expected.dimensions() {
        return Some(format!(
            "{name}: size {:?} != {:?}",
            got.dimensions(),
            expected.dimensions()
        ));
    }
    let (mean, max) = diff_stats(got, &expected);
    eprintln!("{name}: mean |diff| {mean:.4}, max {max}");
    (mean > 1.0 || max > 24).then(|| format!("{name}: mean |diff| {mean:.4}, max {max}"))
}

/// Run every case of one preprocess.json; returns the failures.
fn run_preprocess_cases(json_path: &Path) -> Vec<String> {
    let root = json_path.parent().expect("json has a folder");
    let spec = read_json(json_path);
    let mut failures = Vec::new();
    let cases = spec["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "{} has no cases", json_path.display());
    for case in cases {
        let source = root.join(case["source"].as_str().expect("source"));
        let mode: Mode = case["mode"]
            .as_str()
            .expect("mode")
            .parse()
            .expect("known mode");
        let name = format!("{} {mode}", source.display());
        let img = preprocess::load_image(&source).unwrap_or_else(|e| panic!("{name}: {e}"));
        let oriented = u32s(&case["oriented_size"]);
        if [img.width(), img.height()] != oriented[..] {
            failures.push(format!(
                "{name}: oriented size {:?} != {oriented:?}",
                img.dimensions()
            ));
            continue;
        }
        let views = preprocess::preprocess(&img, mode, preprocess::DEFAULT_MAX_TILES);
        let crop = u32s(&case["spatial_crop"]);
        if views.spatial_crop[..] != crop[..] {
            failures.push(format!(
                "{name}: spatial_crop {:?} != {crop:?}",
                views.spatial_crop
            ));
        }
        let tokens = case["num_image_tokens"].as_u64().expect("num_image_tokens") as usize;
        if views.num_image_tokens != tokens {
            failures.push(format!(
                "{name}: {} image tokens != {tokens}",
                views.num_image_tokens
            ));
        }
        let global = root.join(case["global"].as_str().expect("global"));
        failures.extend(check_view(
            &format!("{name} global"),
            &views.global,
            &global,
        ));
        let tiles = case["tiles"].as_array().expect("tiles");
        if tiles.len() != views.tiles.len() {
            failures.push(format!(
                "{name}: {} tiles != {}",
                views.tiles.len(),
                tiles.len()
            ));
            continue;
        }
        for (i, (t, want)) in views.tiles.iter().zip(tiles).enumerate() {
            let want = root.join(want.as_str().expect("tile path"));
            failures.extend(check_view(&format!("{name} tile{i}"), t, &want));
        }
    }
    for g in spec["tile_grids"].as_array().map_or(&[][..], |v| v) {
        let size = u32s(&g["size"]);
        let want = u32s(&g["grid"]);
        let max_tiles = g["max_tiles"].as_u64().expect("max_tiles") as u32;
        let got = preprocess::tile_grid(size[0], size[1], 640, max_tiles);
        if got[..] != want[..] {
            failures.push(format!(
                "grid for {size:?} (max {max_tiles}): {got:?} != {want:?}"
            ));
        }
    }
    failures
}

#[test]
fn preprocess_matches_the_reference() {
    let mut jsons = vec![fixtures().join("preprocess/preprocess.json")];
    if let Ok(extra) = std::env::var("DSOCR_EXTRA_PREPROCESS") {
        jsons.extend(
            extra
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
        );
    }
    let failures: Vec<String> = jsons.iter().flat_map(|j| run_preprocess_cases(j)).collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A small image with distinct pixel values.
fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x + y) * 5) as u8])
    })
}

#[test]
fn every_supported_format_decodes_to_rgb() {
    let tmp = scratch("pipeline-formats");
    let dir = tmp.path();
    let img = pattern(23, 17);
    // Lossless formats come back exactly.
    for ext in ["png", "bmp", "tiff", "webp"] {
        let path = dir.join(format!("p.{ext}"));
        img.save(&path).unwrap_or_else(|e| panic!("{ext}: {e}"));
        let back = preprocess::load_image(&path).unwrap_or_else(|e| panic!("{ext}: {e}"));
        assert_eq!(back, img, "{ext}");
    }
    // JPEG is lossy: same size, close values.
    let path = dir.join("p.jpg");
    img.save(&path).expect("jpeg");
    let back = preprocess::load_image(&path).expect("jpeg decodes");
    assert_eq!(back.dimensions(), img.dimensions());
    let (mean, _) = diff_stats(&back, &img);
    assert!(mean < 8.0, "jpeg mean diff {mean}");
    // GIF: an animation's first frame (few colours, so the palette is exact).
    let frame = |c: u8| {
        image::Frame::new(image::RgbaImage::from_pixel(
            9,
            5,
            image::Rgba([c, 255 - c, 40, 255]),
        ))
    };
    let path = dir.join("anim.gif");
    {
        let file = std::fs::File::create(&path).expect("gif file");
        let mut enc = image::codecs::gif::GifEncoder::new(file);
        enc.encode_frames([frame(10), frame(200)])
            .expect("gif frames");
    }
    let back = preprocess::load_image(&path).expect("gif decodes");
    assert_eq!(back.dimensions(), (9, 5));
    assert_eq!(back.get_pixel(4, 2).0, [10, 245, 40]);
    // Grey and RGBA inputs become RGB the way Pillow's convert("RGB") does.
    let grey = image::GrayImage::from_fn(4, 3, |x, _| image::Luma([x as u8 * 60]));
    let path = dir.join("grey.png");
    grey.save(&path).expect("grey png");
    assert_eq!(
        preprocess::load_image(&path)
            .expect("grey")
            .get_pixel(2, 1)
            .0,
        [120; 3]
    );
    let rgba = image::RgbaImage::from_pixel(4, 3, image::Rgba([1, 2, 3, 0]));
    let path = dir.join("rgba.png");
    rgba.save(&path).expect("rgba png");
    assert_eq!(
        preprocess::load_image(&path)
            .expect("rgba")
            .get_pixel(0, 0)
            .0,
        [1, 2, 3]
    );
}

#[test]
fn bad_images_get_clear_errors() {
    use preprocess::ImageError;
    let tmp = scratch("pipeline-bad");
    let dir = tmp.path();
    let missing = dir.join("nope.png");
    let err = preprocess::load_image(&missing).unwrap_err();
    assert!(matches!(err, ImageError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("nope.png"), "{err}");

    let empty = dir.join("empty.png");
    std::fs::write(&empty, b"").expect("write");
    let err = preprocess::load_image(&empty).unwrap_err();
    assert!(matches!(err, ImageError::Empty { .. }), "{err}");

    let text = dir.join("notes.png");
    std::fs::write(&text, b"just some text, not pixels\n").expect("write");
    let err = preprocess::load_image(&text).unwrap_err();
    assert!(matches!(err, ImageError::NotImage { .. }), "{err}");

    // A real PNG cut in half.
    let png = dir.join("whole.png");
    pattern(64, 64).save(&png).expect("png");
    let bytes = std::fs::read(&png).expect("read");
    let cut = dir.join("cut.png");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let err = preprocess::load_image(&cut).unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");

    // A BMP header claiming 60000 x 60000 pixels (3.6 gigapixels) with no pixel data.
    let bomb = dir.join("bomb.bmp");
    std::fs::write(&bomb, bmp_header(60_000, 60_000)).expect("write");
    let err = preprocess::load_image(&bomb).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                width: 60_000,
                height: 60_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("decompression"), "{err}");

    // A folder is not an image either.
    let err = preprocess::load_image(dir).unwrap_err();
    assert!(matches!(err, ImageError::Unreadable { .. }), "{err}");
}

/// File and info headers of a 24-bit BMP of the given size (no pixel data follows).
fn bmp_header(width: i32, height: i32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"BM");
    h.extend_from_slice(&(54u32 + 16).to_le_bytes()); // claimed file size
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&54u32.to_le_bytes()); // pixel data offset
    h.extend_from_slice(&40u32.to_le_bytes()); // BITMAPINFOHEADER
    h.extend_from_slice(&width.to_le_bytes());
    h.extend_from_slice(&height.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes()); // planes
    h.extend_from_slice(&24u16.to_le_bytes()); // bits per pixel
    h.extend_from_slice(&[0; 24]); // no compression, sizes, resolution, palette
    h.extend_from_slice(&[0; 16]);
    h
}

fn tokenizer() -> PromptTokenizer {
    PromptTokenizer::from_file(&fixtures().join("tokenizer/tokenizer.json"))
        .expect("tokenizer loads")
}

/// The reference's special ids (BOS 0, `<image>` 128815).
const REAL_IDS: SpecialIds = SpecialIds {
    bos: 0,
    image: 128_815,
};

#[test]
fn prompt_ids_match_the_reference() {
    let tok = tokenizer();
    let spec = read_json(&fixtures().join("preprocess/prompts.json"));
    let cases = spec["prompts"].as_array().expect("prompts");
    assert!(cases.len() >= 15);
    for case in cases {
        let prompt = case["prompt"].as_str().expect("prompt");
        let mode: Mode = case["mode"].as_str().expect("mode").parse().expect("mode");
        // The run length comes from the preprocessing side, not from the fixture's ids.
        let runs: Vec<usize> = match &case["spatial_crop"] {
            Value::Null => vec![],
            crop => {
                let c = u32s(crop);
                let grid = (c != [1, 1]).then(|| [c[0], c[1]]);
                vec![preprocess::image_token_count(mode, grid)]
            }
        };
        let ids = tok
            .build(prompt, &runs, REAL_IDS)
            .unwrap_or_else(|e| panic!("{prompt:?}: {e}"));
        let want: Vec<i64> = case["input_ids"]
            .as_array()
            .expect("input_ids")
            .iter()
            .map(|v| v.as_i64().expect("id"))
            .collect();
        let mask: Vec<bool> = case["images_seq_mask"]
            .as_array()
            .expect("mask")
            .iter()
            .map(|v| v.as_bool().expect("bool"))
            .collect();
        assert_eq!(ids.input_ids, want, "{prompt:?} {mode}");
        assert_eq!(ids.images_seq_mask, mask, "{prompt:?} {mode}");
    }
    // A prompt whose tags do not match the images is refused with a hint.
    let err = tok.build("Free OCR.", &[273], REAL_IDS).unwrap_err();
    assert!(err.to_string().contains("<image>"), "{err}");
}

#[test]
fn decoding_and_streaming_match_the_reference() {
    let tok = tokenizer();
    let spec = read_json(&fixtures().join("preprocess/prompts.json"));
    let cases = spec["decode"].as_array().expect("decode");
    assert!(!cases.is_empty());
    for case in cases {
        let ids: Vec<u32> = u32s(&case["ids"]);
        for (skip, key) in [(false, "text_with_special"), (true, "text_without_special")] {
            let want = case[key].as_str().expect("text");
            assert_eq!(tok.decode(&ids, skip).expect("decode"), want, "{key}");
            let mut stream = tok.stream(skip);
            let mut pieces = Vec::new();
            for &id in &ids {
                pieces.extend(stream.push(id).expect("push"));
            }
            pieces.extend(stream.finish().expect("finish"));
            assert_eq!(pieces.concat(), want, "{key}: streamed {pieces:?}");
            for p in &pieces {
                assert!(
                    !p.contains(char::REPLACEMENT_CHARACTER),
                    "split character in {p:?}"
                );
            }
        }
    }
}

#[test]
fn streaming_never_splits_multibyte_characters() {
    let tok = tokenizer();
    let text = "數學公式 🙂🎉 café – naïve 模型 ✓ end";
    let ids = tok.encode(text).expect("encode");
    let mut stream = tok.stream(false);
    let mut pieces = Vec::new();
    let mut held_back = 0;
    for &id in &ids {
        match stream.push(id).expect("push") {
            Some(p) => pieces.push(p),
            None => held_back += 1,
        }
    }
    pieces.extend(stream.finish().expect("finish"));
    assert_eq!(pieces.concat(), text);
    assert!(
        pieces
            .iter()
            .all(|p| !p.contains(char::REPLACEMENT_CHARACTER))
    );
    // Byte-level BPE does split some of these characters, so something was held back.
    assert!(
        held_back > 0,
        "no token was held back; the test text is too easy"
    );
    // An incomplete character at the very end decodes like the one-shot decode.
    let emoji = tok.encode("🙂").expect("encode");
    assert!(emoji.len() > 1, "the emoji is one token: {emoji:?}");
    let mut stream = tok.stream(false);
    let mut pieces: Vec<String> = Vec::new();
    pieces.extend(stream.push(emoji[0]).expect("push"));
    pieces.extend(stream.finish().expect("finish"));
    assert_eq!(
        pieces.concat(),
        tok.decode(&emoji[..1], false).expect("decode")
    );
}

#[test]
fn grounding_matches_the_reference() {
    let spec = read_json(&fixtures().join("preprocess/grounding.json"));
    let raw = spec["raw"].as_str().expect("raw");
    let size = u32s(&spec["image_size"]);
    let spans = grounding::find_spans(raw);
    let got = grounding::boxes(&spans, size[0], size[1]);
    let want = spec["boxes"].as_array().expect("boxes");
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.label, w["label"].as_str().expect("label"));
        let norm: Vec<f64> = u32s(&w["norm"]).into_iter().map(f64::from).collect();
        assert_eq!(g.norm[..], norm[..]);
        let pixels: Vec<i64> = u32s(&w["pixels"]).into_iter().map(i64::from).collect();
        assert_eq!(g.pixels[..], pixels[..], "{}", g.label);
    }
    assert_eq!(
        grounding::markdown(raw, &spans),
        spec["markdown"].as_str().expect("markdown")
    );

    // Crops: one per image box, the size of its pixel box.
    let page = RgbImage::from_fn(size[0], size[1], |x, y| image::Rgb([x as u8, y as u8, 9]));
    let crops = grounding::image_crops(&page, &got);
    assert_eq!(crops.len(), 2);
    let (idx, first) = &crops[0];
    let first = first.as_ref().expect("crop");
    assert_eq!((*idx, first.dimensions()), (0, (1212 - 765, 1156 - 693)));
    assert_eq!(first.get_pixel(0, 0), page.get_pixel(765, 693));
    let annotated = grounding::annotate(&page, &got);
    assert_eq!(annotated.dimensions(), page.dimensions());
    assert_ne!(annotated, page);
}

// ---------------------------------------------------------------------------------------------
// End to end: the built `dsocr ocr` binary on a model folder made here.

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn dsocr(args: &[&str]) -> Run {
    dsocr_env(args, &[])
}

fn dsocr_env(args: &[&str], env: &[(&str, &Path)]) -> Run {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dsocr"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
        .output()
        .expect("run dsocr");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "dsocr panicked:\n{}",
        run.stderr
    );
    run
}

/// Every output file of one image, checked against the JSON report and the library.
fn check_outputs(report: &Value, original: (u32, u32)) {
    let dir = PathBuf::from(report["output_dir"].as_str().expect("output_dir"));
    let raw = std::fs::read_to_string(dir.join("result_raw.txt")).expect("result_raw.txt");
    assert!(!raw.is_empty());
    let text = raw
        .strip_suffix(dsocr::ocr::prompt::EOS_TEXT)
        .unwrap_or(&raw)
        .trim();
    let spans = grounding::find_spans(text);
    let mmd = std::fs::read_to_string(dir.join("result.mmd")).expect("result.mmd");
    assert_eq!(mmd, grounding::markdown(text, &spans));
    assert_eq!(report["markdown"].as_str(), Some(mmd.as_str()));
    let boxes: Value = read_json(&dir.join("boxes.json"));
    assert_eq!(&boxes, report, "boxes.json holds the same report");
    let n_boxes = grounding::boxes(&spans, original.0, original.1).len();
    assert_eq!(boxes["boxes"].as_array().map(Vec::len), Some(n_boxes));
    let annotated = image::open(dir.join("result_with_boxes.jpg")).expect("annotated jpg");
    assert_eq!((annotated.width(), annotated.height()), original);
    assert!(dir.join("images").is_dir());
    let crops = std::fs::read_dir(dir.join("images"))
        .expect("images")
        .count();
    let image_boxes = boxes["boxes"]
        .as_array()
        .map_or(0, |b| b.iter().filter(|b| b["crop"].is_string()).count());
    assert_eq!(crops, image_boxes);
}

#[test]
fn ocr_command_end_to_end() {
    let tmp = scratch("pipeline-e2e");
    let root = tmp.path();
    let model = root.join("model");
    make_model(&model);
    let model_arg = model.to_str().expect("utf-8 path");
    let page = fixtures().join("preprocess/sources/letter-1275x1650.png");
    let page_arg = page.to_str().expect("utf-8 path");
    let common = [
        "--model",
        model_arg,
        "--device",
        "cpu",
        "--max-new-tokens",
        "12",
    ];

    // One page, base mode, JSON on stdout.
    let out1 = root.join("out-base");
    let mut args = vec!["ocr", page_arg, "--mode", "base", "--format", "json"];
    args.extend(common);
    args.extend(["--out", out1.to_str().expect("path")]);
    let run = dsocr(&args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let reports: Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    let report = &reports.as_array().expect("array")[0];
    assert_eq!(report["mode"], "base");
    assert_eq!(report["image_tokens"], 273);
    assert_eq!(report["generated_tokens"], 12);
    assert_eq!(report["stop"], "max_tokens");
    assert_eq!(report["hit_token_limit"], true);
    assert_eq!(
        report["output_dir"].as_str(),
        out1.join("letter-1275x1650").to_str()
    );
    check_outputs(report, (1275, 1650));
    for phase in [
        "loading",
        "preprocess",
        "vision",
        "prefill",
        "tokens/s",
        "token limit",
    ] {
        assert!(
            run.stderr.contains(phase),
            "no {phase:?} on stderr:\n{}",
            run.stderr
        );
    }

    // The same in md format streams exactly the raw output to stdout.
    let out2 = root.join("out-stream");
    let mut args = vec!["ocr", page_arg, "--mode", "base"];
    args.extend(common);
    args.extend(["--out", out2.to_str().expect("path")]);
    let run = dsocr(&args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let raw = std::fs::read_to_string(out2.join("letter-1275x1650/result_raw.txt")).expect("raw");
    assert_eq!(
        run.stdout,
        format!("{raw}\n"),
        "streamed text != result_raw.txt"
    );

    // A folder of three images, one corrupt, in gundam mode: two results, one failure, exit 1.
    let folder = root.join("batch");
    std::fs::create_dir_all(&folder).expect("batch dir");
    std::fs::copy(&page, folder.join("a-page.png")).expect("copy");
    pattern(300, 200)
        .save(folder.join("b-small.png"))
        .expect("small png");
    std::fs::write(folder.join("c-broken.png"), b"\x89PNG\r\n\x1a\nnot really").expect("corrupt");
    let out3 = root.join("out-gundam");
    let mut args = vec![
        "ocr",
        folder.to_str().expect("path"),
        "--mode",
        "gundam",
        "--format",
        "json",
    ];
    args.extend(common);
    args.extend(["--out", out3.to_str().expect("path")]);
    let run = dsocr(&args);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let reports: Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    let reports = reports.as_array().expect("array");
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["spatial_crop"], serde_json::json!([2, 3]));
    assert_eq!(reports[0]["image_tokens"], 903);
    assert_eq!(reports[1]["spatial_crop"], serde_json::json!([1, 1]));
    assert_eq!(reports[1]["image_tokens"], 273);
    check_outputs(&reports[0], (1275, 1650));
    check_outputs(&reports[1], (300, 200));
    assert!(!out3.join("c-broken").exists());
    assert!(run.stderr.contains("2 ok"), "{}", run.stderr);
    assert!(run.stderr.contains("1 failed"), "{}", run.stderr);
    let failure = run
        .stderr
        .lines()
        .rfind(|l| l.contains("failed: "))
        .expect("failure line");
    assert!(
        failure.contains("c-broken.png") && failure.contains("corrupt"),
        "{failure}"
    );
    assert_eq!(
        run.stderr.matches("loading ").count(),
        1,
        "one model load for the batch"
    );

    // Bad inputs: clear one-line errors, non-zero exit, no panic.
    let no_tok = root.join("model-no-tokenizer");
    std::fs::create_dir_all(&no_tok).expect("dir");
    std::fs::copy(model.join("config.json"), no_tok.join("config.json")).expect("copy");
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec!["ocr", page_arg, "--model", no_tok.to_str().expect("path")],
            "tokenizer.json",
        ),
        (
            vec!["ocr", "/no/such/image.png", "--model", model_arg],
            "does not exist",
        ),
        (
            vec!["ocr", page_arg, "--model", model_arg, "--mode", "huge"],
            "unknown mode",
        ),
        (
            vec!["ocr", page_arg, "--model", "nobody/no-such-model"],
            "Hugging Face cache",
        ),
    ];
    for (args, expect) in cases {
        let run = dsocr(&args);
        assert_ne!(run.code, 0, "{args:?}");
        assert!(run.stderr.contains(expect), "{args:?}: {}", run.stderr);
    }
}

/// Pages decoded together give the files and the text they give one at a time (f32, so that
/// batched and single-row products agree to the last bit that matters), and stdout keeps the
/// input order.
#[test]
fn ocr_batch_matches_batch_1() {
    let tmp = scratch("pipeline-batch");
    let root = tmp.path();
    let model = root.join("model");
    make_model(&model);
    let pages = root.join("pages");
    std::fs::create_dir_all(&pages).expect("pages dir");
    std::fs::copy(
        fixtures().join("preprocess/sources/letter-1275x1650.png"),
        pages.join("a.png"),
    )
    .expect("copy");
    pattern(300, 200).save(pages.join("b.png")).expect("b");
    pattern(640, 480).save(pages.join("c.png")).expect("c");
    let run = |batch: &str| {
        let out = root.join(format!("out-{batch}"));
        let run = dsocr(&[
            "ocr",
            pages.to_str().expect("path"),
            "--model",
            model.to_str().expect("path"),
            "--device",
            "cpu",
            "--dtype",
            "f32",
            "--mode",
            "tiny",
            "--max-new-tokens",
            "10",
            "--batch",
            batch,
            "--out",
            out.to_str().expect("path"),
        ]);
        assert_eq!(run.code, 0, "--batch {batch}: {}", run.stderr);
        (out, run)
    };
    let (one, single) = run("1");
    let (three, batched) = run("3");
    for name in ["a", "b", "c"] {
        let raw = |dir: &Path| {
            std::fs::read_to_string(dir.join(name).join("result_raw.txt"))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        assert!(!raw(&one).is_empty());
        assert_eq!(
            raw(&one),
            raw(&three),
            "{name}: --batch 3 differs from --batch 1"
        );
    }
    assert_eq!(single.stdout, batched.stdout, "stdout in input order");
    assert!(
        batched.stderr.contains("[3/3]"),
        "progress names each page:\n{}",
        batched.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// The library session the CLI and the dashboard share.

#[test]
fn session_streams_phases_and_text_and_cancels_between_tokens() {
    use dsocr::ocr::OcrError;
    use dsocr::ocr::session::{Event, JobPhase, RunOptions, Session};
    use std::sync::atomic::{AtomicBool, Ordering};

    let tmp = scratch("pipeline-session");
    let root = tmp.path();
    let model = root.join("model");
    make_model(&model);
    let session = Session::load(&model, tch::Device::Cpu, tch::Kind::Float).expect("session loads");
    let page = fixtures().join("preprocess/sources/letter-1275x1650.png");
    let opts = RunOptions {
        mode: Mode::Base,
        max_new_tokens: 10,
        ..RunOptions::default()
    };

    // A whole run: phases in order, one text event per token, pieces adding up to the output.
    let cancel = AtomicBool::new(false);
    let mut events = Vec::new();
    let out = session
        .run(&page, &opts, &cancel, |e| events.push(e))
        .expect("run");
    let phases: Vec<JobPhase> = events
        .iter()
        .filter_map(|e| match e {
            Event::Phase(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(
        phases,
        [
            JobPhase::Preprocess,
            JobPhase::Vision,
            JobPhase::Prefill,
            JobPhase::Decode
        ]
    );
    let prepared = events.iter().find_map(|e| match e {
        Event::Prepared(p) => Some(*p),
        _ => None,
    });
    let prepared = prepared.expect("a Prepared event");
    assert_eq!((prepared.width, prepared.height), (1275, 1650));
    assert_eq!(prepared.image_tokens, 273);
    let texts: Vec<(String, usize)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Text { piece, tokens, .. } => Some((piece.clone(), *tokens)),
            _ => None,
        })
        .collect();
    let counts: Vec<usize> = texts.iter().map(|t| t.1).collect();
    assert_eq!(&counts[..10], &(1..=10).collect::<Vec<_>>()[..]);
    assert_eq!(out.generation.tokens.len(), 10);
    assert!(out.hit_token_limit());
    let streamed: String = texts.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(streamed, out.raw, "streamed pieces != the one-shot decode");
    let written = out.write(&root.join("out")).expect("write");
    assert_eq!(written.generated_tokens, 10);
    assert_eq!(
        std::fs::read_to_string(root.join("out/result_raw.txt")).expect("raw"),
        out.raw
    );

    // Cancelled after the third token: no fourth token, a typed Cancelled.
    let cancel = AtomicBool::new(false);
    let mut tokens = 0;
    let result = session.run(&page, &opts, &cancel, |e| {
        if let Event::Text { tokens: n, .. } = e {
            tokens = n;
            if n == 3 {
                cancel.store(true, Ordering::Relaxed);
            }
        }
    });
    assert!(matches!(result, Err(OcrError::Cancelled)), "{result:?}");
    assert_eq!(tokens, 3);

    // Cancelled before it starts: nothing runs.
    let mut events = 0;
    let result = session.run(&page, &opts, &cancel, |_| events += 1);
    assert!(matches!(result, Err(OcrError::Cancelled)));
    assert_eq!(events, 0);
}

// ---------------------------------------------------------------------------------------------
// PDF documents: the library module and `dsocr ocr` on PDFs (fixtures: tests/fixtures/pdf/,
// made by scripts/make-pdf-fixtures.sh).

fn pdf_fixture(name: &str) -> PathBuf {
    fixtures().join("pdf").join(name)
}

#[test]
fn pdf_documents_render_and_bad_ones_get_typed_errors() {
    use dsocr::document::{Document, DocumentError};
    let good = pdf_fixture("three-pages.pdf");
    let doc = Document::open(&good, None).expect("opens");
    assert_eq!(doc.page_count(), 3);
    assert_eq!(doc.page_pixels(1, 144).expect("size"), (1224, 1584));

    // Page 1 at 72 dpi against poppler's rendering of it.
    let page = doc.render(1, 72).expect("renders");
    let poppler = image::open(pdf_fixture("three-pages-p1-72dpi-pdftoppm.png"))
        .expect("reference png")
        .to_rgb8();
    assert_eq!(page.dimensions(), poppler.dimensions());
    let (mean, _) = diff_stats(&page, &poppler);
    eprintln!("page 1 vs pdftoppm at 72 dpi: mean |diff| {mean:.3}");
    assert!(mean < 2.0, "mean |diff| {mean} against poppler");
    // Not blank: the title and the blue box are there.
    let dark = page
        .pixels()
        .filter(|p| p.0.iter().all(|&c| c < 100))
        .count();
    let blue = page
        .pixels()
        .filter(|p| p.0[2] > 150 && p.0[0] < 60)
        .count();
    assert!(dark > 1000 && blue > 5000, "dark {dark}, blue {blue}");
    // Each page is its own: page 2's box sits lower than page 1's.
    let page2 = doc.render(2, 72).expect("page 2");
    assert_ne!(page.as_raw(), page2.as_raw());
    assert_eq!(
        doc.render(1, 144).expect("144 dpi").dimensions(),
        (1224, 1584)
    );

    // A page past the end.
    let e = doc.render(4, 144).unwrap_err();
    assert!(
        matches!(
            e,
            DocumentError::PageOutside {
                page: 4,
                pages: 3,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("three-pages.pdf, which has 3 pages"),
        "{e}"
    );

    // Encrypted: no password, a wrong one, the right one (same pixels as the plain file).
    let enc = pdf_fixture("encrypted.pdf");
    let e = Document::open(&enc, None).unwrap_err();
    assert!(
        matches!(
            e,
            DocumentError::Encrypted {
                wrong_password: false,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("encrypted.pdf is encrypted"), "{e}");
    let e = Document::open(&enc, Some("wrong")).unwrap_err();
    assert!(
        matches!(
            e,
            DocumentError::Encrypted {
                wrong_password: true,
                ..
            }
        ),
        "{e:?}"
    );
    let opened = Document::open(&enc, Some("secret")).expect("the password opens it");
    assert_eq!(opened.page_count(), 3);
    assert_eq!(
        opened.render(1, 72).expect("renders").as_raw(),
        page.as_raw()
    );

    // Truncated, not a PDF at all, corrupt inside, no pages.
    let e = Document::open(&pdf_fixture("truncated.pdf"), None).unwrap_err();
    assert!(matches!(e, DocumentError::Truncated { .. }), "{e:?}");
    assert!(e.to_string().contains("truncated.pdf is truncated"), "{e}");
    let tmp = scratch("pipeline-pdf-errors");
    let root = tmp.path();
    let text = root.join("notes.pdf");
    std::fs::write(&text, "just some text, not a PDF\n").expect("write");
    let e = Document::open(&text, None).unwrap_err();
    assert!(
        matches!(e, DocumentError::Corrupt { not_pdf: true, .. }),
        "{e:?}"
    );
    let mangled = root.join("mangled.pdf");
    std::fs::write(
        &mangled,
        b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 9 0 R >>\nendobj\nxref\ngarbage\n%%EOF\n",
    )
    .expect("write");
    let e = Document::open(&mangled, None).unwrap_err();
    assert!(
        matches!(
            e,
            DocumentError::Corrupt { not_pdf: false, .. } | DocumentError::NoPages { .. }
        ),
        "{e:?}"
    );
    let e = Document::open(&pdf_fixture("zero-pages.pdf"), None).unwrap_err();
    assert!(matches!(e, DocumentError::NoPages { .. }), "{e:?}");
    assert!(e.to_string().contains("zero-pages.pdf has no pages"), "{e}");
    let e = Document::open(&root.join("missing.pdf"), None).unwrap_err();
    assert!(matches!(e, DocumentError::Io { .. }), "{e:?}");

    // Over the pixel limit at 144 dpi: refused before drawing; fine at a lower resolution.
    let huge = Document::open(&pdf_fixture("huge-page.pdf"), None).expect("opens");
    let e = huge.render(1, 144).unwrap_err();
    assert!(
        matches!(
            e,
            DocumentError::TooManyPixels {
                width: 28800,
                height: 28800,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("lower --dpi"), "{e}");
    let small = huge.render(1, 18).expect("renders at 18 dpi");
    assert_eq!(small.dimensions(), (3600, 3600));
}

#[test]
fn ocr_command_on_pdfs() {
    use dsocr::document::PAGE_SPLIT;
    let tmp = scratch("pipeline-pdf-e2e");
    let root = tmp.path();
    let model = root.join("model");
    make_model(&model);
    let model_arg = model.to_str().expect("utf-8 path");
    let good = pdf_fixture("three-pages.pdf");
    let good_arg = good.to_str().expect("path");
    let common = [
        "--model",
        model_arg,
        "--device",
        "cpu",
        "--dtype",
        "f32",
        "--max-new-tokens",
        "8",
        "--mode",
        "tiny",
        "--format",
        "json",
    ];
    let run_with = |extra: &[&str], out: &Path| {
        let mut args = vec!["ocr"];
        args.extend(extra);
        args.extend(common);
        args.extend(["--out", out.to_str().expect("path")]);
        dsocr(&args)
    };

    // Pages 1-2: both page folders, the joined markdown with one split, report.json.
    let out = root.join("out-pages");
    let run = run_with(&[good_arg, "--pages", "1-2"], &out);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc_dir = out.join("three-pages");
    let reports: Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    let doc_report = &reports.as_array().expect("array")[0];
    let report = read_json(&doc_dir.join("report.json"));
    assert_eq!(&report, doc_report, "report.json is what stdout printed");
    assert_eq!(report["page_count"], 3);
    assert_eq!(report["dpi"], 144);
    let pages = report["pages"].as_array().expect("pages");
    assert_eq!(pages.len(), 2);
    let mut page_mmds = Vec::new();
    for (i, entry) in pages.iter().enumerate() {
        let n = i + 1;
        assert_eq!(entry["page"], n);
        assert_eq!(entry["generated_tokens"], 8);
        assert_eq!(entry["hit_token_limit"], true, "flagged and kept");
        assert_eq!(entry["skipped_in_mmd"], false);
        assert_eq!(
            entry["output_dir"].as_str(),
            doc_dir.join(format!("page-{n}")).to_str()
        );
        assert!(
            entry["image"]
                .as_str()
                .is_some_and(|s| s.ends_with(&format!("three-pages.pdf#page={n}"))),
            "{entry}"
        );
        let mut page_report = entry.clone();
        for key in ["page", "render_s", "skipped_in_mmd"] {
            page_report.as_object_mut().expect("object").remove(key);
        }
        check_outputs(&page_report, (1224, 1584));
        page_mmds.push(
            std::fs::read_to_string(doc_dir.join(format!("page-{n}/result.mmd"))).expect("mmd"),
        );
    }
    assert!(!doc_dir.join("page-3").exists());
    let mmd = std::fs::read_to_string(doc_dir.join("three-pages.mmd")).expect("joined mmd");
    assert_eq!(mmd, page_mmds.join(PAGE_SPLIT));
    assert_eq!(mmd.matches("<--- Page Split --->").count(), 1);
    let totals = &report["totals"];
    assert_eq!(totals["pages_ok"], 2);
    assert_eq!(totals["pages_failed"], 0);
    assert_eq!(totals["pages_hit_token_limit"], 2);
    assert_eq!(totals["generated_tokens"], 16);
    assert!(
        run.stderr.contains("3 pages; running 2 at 144 dpi"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("#page=2"),
        "token limit named per page: {}",
        run.stderr
    );
    let mut names: Vec<String> = std::fs::read_dir(&doc_dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["page-1", "page-2", "report.json", "three-pages.mmd"]
    );

    // --skip-repeat: pages that hit the limit stay in page-N/ but leave the joined markdown.
    let out = root.join("out-skip");
    let run = run_with(&[good_arg, "--pages", "3", "--skip-repeat"], &out);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let dir = out.join("three-pages");
    assert_eq!(
        std::fs::read_to_string(dir.join("three-pages.mmd")).expect("mmd"),
        ""
    );
    assert!(dir.join("page-3/result.mmd").is_file());
    let report = read_json(&dir.join("report.json"));
    assert_eq!(report["pages"][0]["skipped_in_mmd"], true);
    assert_eq!(report["totals"]["pages_skipped_in_mmd"], 1);

    // Bad documents among good inputs: each failure named with its cause, the rest complete,
    // exit code 1, nothing written for the documents that did not open.
    let png = fixtures().join("preprocess/sources/letter-1275x1650.png");
    let out = root.join("out-mixed");
    let run = run_with(
        &[
            pdf_fixture("encrypted.pdf").to_str().expect("path"),
            pdf_fixture("truncated.pdf").to_str().expect("path"),
            pdf_fixture("zero-pages.pdf").to_str().expect("path"),
            png.to_str().expect("path"),
            good_arg,
            "--pages",
            "3-4",
        ],
        &out,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let failed: Vec<&str> = run
        .stderr
        .lines()
        .skip_while(|l| !l.starts_with("done:"))
        .filter(|l| l.contains("failed: "))
        .collect();
    assert_eq!(failed.len(), 4, "{}", run.stderr);
    for (file, cause) in [
        (
            "encrypted.pdf",
            "is encrypted and needs a password (--password)",
        ),
        ("truncated.pdf", "is truncated"),
        ("zero-pages.pdf", "has no pages"),
        ("three-pages.pdf", "page 4 is outside"),
    ] {
        assert!(
            failed.iter().any(|l| l.contains(file) && l.contains(cause)),
            "no failure line for {file} ({cause}):\n{}",
            run.stderr
        );
    }
    assert!(run.stderr.contains("2 ok"), "{}", run.stderr);
    for gone in ["encrypted", "truncated", "zero-pages"] {
        assert!(!out.join(gone).exists(), "{gone} has outputs");
    }
    assert!(out.join("letter-1275x1650/result.mmd").is_file());
    assert!(out.join("three-pages/page-3/result.mmd").is_file());
    let report = read_json(&out.join("three-pages/report.json"));
    assert_eq!(report["totals"]["pages_ok"], 1);
    assert_eq!(report["totals"]["pages_failed"], 1);
    assert!(
        report["pages"][1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("outside"))
    );

    // A page over the pixel limit: named, the document's report says so, no page folder.
    let run = run_with(
        &[pdf_fixture("huge-page.pdf").to_str().expect("path")],
        &out,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("huge-page.pdf: page 1: page 1 of")
            && run.stderr.contains("over the limit")
            && run.stderr.contains("lower --dpi"),
        "{}",
        run.stderr
    );
    let huge = read_json(&out.join("huge-page/report.json"));
    assert_eq!(huge["totals"]["pages_failed"], 1);
    assert!(!out.join("huge-page/page-1").exists());
    assert_eq!(
        std::fs::read_to_string(out.join("huge-page/huge-page.mmd")).expect("mmd"),
        ""
    );

    // The password opens it; a folder picks up its PDFs beside its images.
    let folder = root.join("folder");
    std::fs::create_dir_all(&folder).expect("dir");
    std::fs::copy(pdf_fixture("encrypted.pdf"), folder.join("a-secret.pdf")).expect("copy");
    pattern(300, 200)
        .save(folder.join("b-small.png"))
        .expect("png");
    let out = root.join("out-folder");
    let run = run_with(
        &[
            folder.to_str().expect("path"),
            "--password",
            "secret",
            "--pages",
            "2",
        ],
        &out,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(out.join("a-secret/page-2/result.mmd").is_file());
    assert!(out.join("a-secret/a-secret.mmd").is_file());
    assert!(out.join("b-small/result.mmd").is_file());
}
