//! `train::logging::Logger` writes valid TFRecord event files: every record's length and payload
//! carry correct masked CRC32C checksums, the first event is the file version, and the scalar
//! events decode (minimal protobuf walk) to the tags, steps and values written.

use imgcot::train::logging::{Logger, LoggerOptions, TB_DIR};

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bitwise.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn masked(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xA282_EAD8)
}

fn read_records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        assert!(i + 12 <= bytes.len(), "truncated header at {i}");
        let len_bytes = &bytes[i..i + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let len_crc = u32::from_le_bytes(bytes[i + 8..i + 12].try_into().unwrap());
        assert_eq!(
            len_crc,
            masked(len_bytes),
            "length CRC of record {}",
            out.len()
        );
        let data = &bytes[i + 12..i + 12 + len];
        let crc = u32::from_le_bytes(bytes[i + 12 + len..i + 16 + len].try_into().unwrap());
        assert_eq!(crc, masked(data), "payload CRC of record {}", out.len());
        out.push(data.to_vec());
        i += 16 + len;
    }
    out
}

/// Protobuf field walker: (field number, wire type, payload slice / varint / fixed bits).
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*i];
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

fn fields(b: &[u8]) -> Vec<(u64, Field<'_>)> {
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let key = varint(b, &mut i);
        let f = match key & 7 {
            0 => Field::Varint(varint(b, &mut i)),
            1 => {
                let v = u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
                i += 8;
                Field::Fixed64(v)
            }
            2 => {
                let n = varint(b, &mut i) as usize;
                i += n;
                Field::Bytes(&b[i - n..i])
            }
            5 => {
                let v = u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
                i += 4;
                Field::Fixed32(v)
            }
            w => panic!("unexpected wire type {w}"),
        };
        out.push((key >> 3, f));
    }
    out
}

/// Event{step=2, summary=5{value=1{tag=1, simple_value=2}}} -> (step, tag, value).
fn scalar_of(event: &[u8]) -> Option<(u64, String, f32)> {
    let mut step = 0;
    let mut found = None;
    for (num, f) in fields(event) {
        match (num, f) {
            (2, Field::Varint(s)) => step = s,
            (5, Field::Bytes(summary)) => {
                for (n, v) in fields(summary) {
                    if let (1, Field::Bytes(value)) = (n, v) {
                        let (mut tag, mut val) = (None, None);
                        for (k, x) in fields(value) {
                            match (k, x) {
                                (1, Field::Bytes(t)) => {
                                    tag = Some(String::from_utf8(t.to_vec()).unwrap())
                                }
                                (2, Field::Fixed32(bits)) => val = Some(f32::from_bits(bits)),
                                _ => {}
                            }
                        }
                        if let (Some(t), Some(v)) = (tag, val) {
                            found = Some((t, v));
                        }
                    }
                }
            }
            // wall_time: seconds since the epoch.
            (1, Field::Fixed64(bits)) => assert!(f64::from_bits(bits) > 1.5e9),
            _ => {}
        }
    }
    found.map(|(t, v)| (step, t, v))
}

#[test]
fn event_file_framing_and_scalars() {
    let run = std::env::temp_dir().join(format!("imgcot-tb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    let mut lg = Logger::new(
        &run,
        4,
        LoggerOptions {
            tensorboard: true,
            print_every: 2,
            progress_bar: Some(false),
        },
    )
    .unwrap();
    for s in 1..=4u64 {
        lg.step(
            s,
            &[
                ("train/loss", 1.0 / s as f64),
                ("train/lr", 1e-4 * s as f64),
            ],
        );
    }
    lg.scalar("eval/acc", 0.75, 4);
    let img: Vec<u8> = (0..8 * 8 * 3).map(|i| i as u8).collect();
    lg.image("samples/grid", &img, 8, 4).unwrap();
    lg.finish();

    let files: Vec<_> = std::fs::read_dir(run.join(TB_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let records = read_records(&std::fs::read(&files[0]).unwrap());
    // file_version + 8 step scalars + 1 eval scalar + 1 image.
    assert_eq!(records.len(), 11);
    let first = fields(&records[0]);
    assert!(first
        .iter()
        .any(|(n, f)| *n == 3 && matches!(f, Field::Bytes(b) if *b == b"brain.Event:2")));
    let scalars: Vec<(u64, String, f32)> = records.iter().filter_map(|r| scalar_of(r)).collect();
    assert_eq!(scalars.len(), 9);
    for s in 1..=4u64 {
        assert!(
            scalars.contains(&(s, "train/loss".to_string(), (1.0 / s as f64) as f32)),
            "{scalars:?}"
        );
        assert!(
            scalars.contains(&(s, "train/lr".to_string(), (1e-4 * s as f64) as f32)),
            "{scalars:?}"
        );
    }
    assert!(scalars.contains(&(4, "eval/acc".to_string(), 0.75)));
    // The image record carries the tag and a PNG.
    let img_rec = records
        .iter()
        .find(|r| r.windows(12).any(|w| w == b"samples/grid"))
        .expect("image record");
    assert!(img_rec.windows(8).any(|w| w == b"\x89PNG\r\n\x1a\n"));
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains("step ")).count(),
        2,
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&run);
}

#[test]
fn crc32c_known_answer() {
    // RFC 3720 B.4 test vector: 32 bytes of zeros.
    assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
}

#[test]
fn since_times_lines_from_the_given_start() {
    let run = std::env::temp_dir().join(format!("imgcot-since-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    let start = std::time::Instant::now() - std::time::Duration::from_secs(5);
    let opts = LoggerOptions {
        tensorboard: false,
        print_every: 1,
        progress_bar: Some(false),
    };
    let mut lg = Logger::new(&run, 0, opts).unwrap().since(start);
    lg.info("done");
    lg.finish();
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    let secs: f64 = log
        .trim_start_matches('[')
        .split('s')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((5.0..60.0).contains(&secs), "{log}");
    std::fs::remove_dir_all(&run).unwrap();
}
