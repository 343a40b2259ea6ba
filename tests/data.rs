//! The IDX reader, the dataset loaders and helpers, on generated files; the real MNIST and
//! Fashion-MNIST when present (skipped with a notice otherwise).

use std::io::Write;
use std::path::{Path, PathBuf};

use dpsgd::data::idx::{self, IMAGES_MAGIC, LABELS_MAGIC};
use dpsgd::data::{Dataset, DatasetKind, Split, MNIST_MEAN, MNIST_STD};
use dpsgd::Error;

/// A fresh, empty folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("data-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// IDX bytes with an arbitrary magic and dims (the data need not fit them).
fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 37 % 256) as u8).collect()
}

/// Asserts `r` is `Error::Format` naming `path`, whose message contains `needle`.
#[track_caller]
fn assert_format<T: std::fmt::Debug>(r: dpsgd::Result<T>, path: &Path, needle: &str) {
    match r {
        Err(e @ Error::Format { .. }) => {
            let Error::Format { path: p, msg } = &e else {
                unreachable!()
            };
            assert_eq!(p, path, "error names the wrong file: {e}");
            assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
            let shown = e.to_string();
            assert!(
                shown.contains(&path.display().to_string()),
                "Display lacks the path: {shown}"
            );
        }
        other => panic!(
            "expected Error::Format for {}, got {other:?}",
            path.display()
        ),
    }
}

#[test]
fn idx_round_trip_raw_and_gz() {
    let dir = scratch("round_trip");
    let images = pattern(7 * 5 * 3);
    let labels: Vec<u8> = (0..7).map(|i| i % 10).collect();
    for name in ["raw", "gz"] {
        let ext = if name == "gz" { ".gz" } else { "" };
        let ip = dir.join(format!("images{ext}"));
        let lp = dir.join(format!("labels{ext}"));
        idx::write_idx(&ip, &[7, 5, 3], &images).unwrap();
        idx::write_idx(&lp, &[7], &labels).unwrap();
        let head = std::fs::read(&ip).unwrap();
        if name == "gz" {
            assert_eq!(&head[..2], &[0x1f, 0x8b], "a .gz path is gzipped");
        } else {
            assert_eq!(&head[..4], &IMAGES_MAGIC.to_be_bytes());
            assert_eq!(head.len(), 16 + images.len());
        }
        assert_eq!(idx::read_images(&ip).unwrap(), (7, 5, 3, images.clone()));
        assert_eq!(idx::read_labels(&lp).unwrap(), labels);
        let any = idx::read_idx(&ip, None).unwrap();
        assert_eq!(any.dims, vec![7, 5, 3]);
    }
    // Other dimensionalities through the generic reader; gzip is recognised by content.
    let p = dir.join("matrix-no-gz-suffix");
    std::fs::write(&p, gzip(&idx_bytes(0x0000_0802, &[4, 6], &pattern(24)))).unwrap();
    let a = idx::read_idx(&p, None).unwrap();
    assert_eq!((a.dims, a.data), (vec![4, 6], pattern(24)));
    // Zero examples is a valid (empty) file.
    let p = dir.join("empty-labels");
    idx::write_idx(&p, &[0], &[]).unwrap();
    assert_eq!(idx::read_labels(&p).unwrap(), Vec::<u8>::new());
}

#[test]
fn write_idx_rejects_mismatched_data() {
    let dir = scratch("write_bad");
    assert!(matches!(
        idx::write_idx(dir.join("x"), &[3, 2], &[0; 5]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        idx::write_idx(dir.join("x"), &[], &[]),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(!dir.join("x").exists());
}

#[test]
fn idx_corruption_gives_typed_errors_naming_the_file() {
    let dir = scratch("corrupt");
    let good_images = idx_bytes(IMAGES_MAGIC, &[5, 4, 4], &pattern(80));
    let cases: Vec<(&str, Vec<u8>, &str)> =
        vec![
        ("empty", vec![], "empty file"),
        ("short-magic", vec![0, 0, 8], "shorter than the 4-byte IDX magic"),
        (
            "bad-magic",
            idx_bytes(0x1234_5678, &[5, 4, 4], &pattern(80)),
            "bad magic number 0x12345678, expected 0x00000803",
        ),
        (
            "labels-as-images",
            idx_bytes(LABELS_MAGIC, &[80], &pattern(80)),
            "labels were expected, or the reverse",
        ),
        (
            "two-dims",
            idx_bytes(0x0000_0802, &[5, 16], &pattern(80)),
            "bad magic number 0x00000802",
        ),
        ("truncated-header", good_images[..10].to_vec(), "truncated header"),
        (
            "truncated-data",
            good_images[..good_images.len() - 1].to_vec(),
            "truncated: header says 5 × 4 × 4 = 80 data bytes, file has 79",
        ),
        (
            "dims-too-large",
            idx_bytes(IMAGES_MAGIC, &[6, 4, 4], &pattern(80)),
            "truncated: header says 6 × 4 × 4 = 96 data bytes, file has 80",
        ),
        (
            "dims-too-small",
            idx_bytes(IMAGES_MAGIC, &[4, 4, 4], &pattern(80)),
            "wrong dimensions or trailing data: header says 4 × 4 × 4 = 64 data bytes, file has 80",
        ),
        (
            "absurd-dims",
            idx_bytes(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[]),
            "corrupt header",
        ),
        ("gz-garbage", [&[0x1f, 0x8b][..], &pattern(200)].concat(), "gzip"),
        (
            "gz-truncated",
            {
                let g = gzip(&good_images);
                g[..g.len() / 2].to_vec()
            },
            "gzip",
        ),
        (
            "gz-bad-crc",
            {
                let mut g = gzip(&good_images);
                let n = g.len();
                g[n - 8] ^= 0xFF; // the CRC-32 in the gzip trailer
                g
            },
            "gzip",
        ),
        (
            "gz-of-truncated",
            gzip(&good_images[..50]),
            "decompressed data has 34",
        ),
    ];
    for (name, bytes, needle) in cases {
        let p = dir.join(name);
        std::fs::write(&p, &bytes).unwrap();
        assert_format(idx::read_images(&p), &p, needle);
    }
    // Element types other than unsigned byte.
    let p = dir.join("f32");
    std::fs::write(&p, idx_bytes(0x0000_0D01, &[2], &[0; 8])).unwrap();
    assert_format(idx::read_idx(&p, None), &p, "0x0D (f32) is not supported");
    let p = dir.join("zero-dims");
    std::fs::write(&p, idx_bytes(0x0000_0800, &[], &[1])).unwrap();
    assert_format(idx::read_idx(&p, None), &p, "0 dimensions");
    let p = dir.join("nonzero-lead");
    std::fs::write(&p, idx_bytes(0x0100_0801, &[1], &[1])).unwrap();
    assert_format(idx::read_idx(&p, None), &p, "two zero bytes");
    // A missing file is an I/O error naming it.
    let p = dir.join("missing");
    match idx::read_labels(&p) {
        Err(Error::Io { path, source }) => {
            assert_eq!(path, p);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
}

/// Writes a small MNIST-like split (`n` images of 28 × 28) under the standard names.
fn write_split(dir: &Path, split: Split, n: usize, gz: bool) -> (Vec<u8>, Vec<u8>) {
    let ext = if gz { ".gz" } else { "" };
    let pixels = pattern(n * 784);
    let labels: Vec<u8> = (0..n).map(|i| (i * 3 % 10) as u8).collect();
    let pre = split.prefix();
    idx::write_idx(
        dir.join(format!("{pre}-images-idx3-ubyte{ext}")),
        &[n, 28, 28],
        &pixels,
    )
    .unwrap();
    idx::write_idx(
        dir.join(format!("{pre}-labels-idx1-ubyte{ext}")),
        &[n],
        &labels,
    )
    .unwrap();
    (pixels, labels)
}

#[test]
fn loaders_read_raw_and_gz_names_and_normalise() {
    let dir = scratch("loaders");
    let (pixels, labels) = write_split(&dir, Split::Train, 12, false);
    write_split(&dir, Split::Test, 5, true);
    let train = Dataset::mnist(&dir, Split::Train).unwrap();
    let test = Dataset::mnist(&dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (12, 5));
    assert_eq!(
        (
            train.channels(),
            train.height(),
            train.width(),
            train.classes()
        ),
        (1, 28, 28, 10)
    );
    assert_eq!(train.images().len(), 12 * 784);
    let want: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    assert_eq!(train.labels(), &want[..]);
    for (&p, &x) in pixels.iter().zip(train.images()) {
        let expect = (p as f32 / 255.0 - MNIST_MEAN) / MNIST_STD;
        assert!(
            (x - expect).abs() < 1e-6,
            "pixel {p} -> {x}, expected {expect}"
        );
    }
    // Fashion-MNIST uses its own statistics on the same files.
    let f = Dataset::fashion_mnist(&dir, Split::Test).unwrap();
    let (m, s) = DatasetKind::FashionMnist.normalization();
    assert!((f.images()[0] - (pixels[0] as f32 / 255.0 - m) / s).abs() < 1e-6);
    assert_eq!(
        "fashion-mnist".parse::<DatasetKind>().unwrap(),
        DatasetKind::FashionMnist
    );
    assert!(matches!(
        "cifar".parse::<DatasetKind>(),
        Err(Error::InvalidParameter { .. })
    ));
}

#[test]
fn missing_files_say_how_to_fetch_them() {
    let dir = scratch("missing");
    for (r, hint) in [
        (Dataset::mnist(&dir, Split::Train), "scripts/fetch-mnist"),
        (
            Dataset::mnist(dir.join("nope"), Split::Test),
            "does not exist",
        ),
        (
            Dataset::fashion_mnist(&dir, Split::Train),
            "scripts/fetch-fashion-mnist",
        ),
    ] {
        match r {
            Err(e @ Error::Io { .. }) => {
                let s = e.to_string();
                assert!(s.contains(hint), "{s:?} lacks {hint:?}");
                assert!(s.contains("idx3-ubyte"), "{s:?} does not name the file");
            }
            other => panic!("expected Error::Io, got {other:?}"),
        }
    }
}

#[test]
fn inconsistent_image_and_label_files_are_format_errors() {
    let dir = scratch("inconsistent");
    write_split(&dir, Split::Train, 4, false);
    let lp = dir.join("train-labels-idx1-ubyte");
    idx::write_idx(&lp, &[3], &[1, 2, 3]).unwrap();
    assert_format(
        Dataset::mnist(&dir, Split::Train),
        &lp,
        "3 labels, but the images file",
    );
    idx::write_idx(&lp, &[4], &[1, 2, 10, 3]).unwrap();
    assert_format(
        Dataset::mnist(&dir, Split::Train),
        &lp,
        "label 10 at example 2",
    );
    // A corrupt images file is reported as such through the loader.
    let ip = dir.join("train-images-idx3-ubyte");
    std::fs::write(&ip, b"").unwrap();
    assert_format(Dataset::mnist(&dir, Split::Train), &ip, "empty file");
}

#[test]
fn dataset_new_checks_invariants() {
    assert!(matches!(
        Dataset::new(vec![0.0; 5], vec![0, 1], 1, 2, 2, 2),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        Dataset::new(vec![0.0; 8], vec![0, 2], 1, 2, 2, 2),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        Dataset::new(vec![0.0, f32::NAN, 0.0, 0.0], vec![0], 1, 2, 2, 2),
        Err(Error::NonFinite { .. })
    ));
    assert!(matches!(
        Dataset::new(vec![], vec![], 0, 2, 2, 2),
        Err(Error::InvalidParameter { .. })
    ));
    let d = Dataset::new(vec![0.0; 8], vec![0, 1], 1, 2, 2, 2).unwrap();
    assert_eq!(d.class_counts(), vec![1, 1]);
    assert!(d.get(2).is_none());
}

#[test]
fn gather_copies_examples_without_allocating_and_checks_inputs() {
    let d = Dataset::synthetic_shaped(20, 3, 2, 3, 4, 7).unwrap();
    let per = d.example_len();
    assert_eq!(per, 24);
    let idx = [19, 0, 5, 5];
    let mut imgs = vec![0f32; idx.len() * per];
    let mut labs = vec![0u32; idx.len()];
    d.gather(&idx, &mut imgs, &mut labs).unwrap();
    for (k, &i) in idx.iter().enumerate() {
        let (img, lab) = d.get(i).unwrap();
        assert_eq!(&imgs[k * per..(k + 1) * per], img);
        assert_eq!(labs[k], lab);
    }
    // Bad inputs leave the buffers untouched.
    let (before_i, before_l) = (imgs.clone(), labs.clone());
    assert!(matches!(
        d.gather(&[1, 20, 2, 3], &mut imgs, &mut labs),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        d.gather(&[1, 2, 3], &mut imgs, &mut labs),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        d.gather(&idx, &mut imgs, &mut labs[..3]),
        Err(Error::Shape { .. })
    ));
    assert_eq!((imgs, labs), (before_i, before_l));
    d.gather(&[], &mut [], &mut []).unwrap();
}

#[test]
fn split_validation_is_deterministic_disjoint_and_complete() {
    let n = 500;
    // Tag each example by its index so the split can be traced back.
    let images: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let labels: Vec<u32> = (0..n).map(|i| (i % 10) as u32).collect();
    let d = Dataset::new(images, labels, 1, 1, 1, 10).unwrap();
    let (tr, va) = d.split_validation(100, 42).unwrap();
    assert_eq!((tr.len(), va.len()), (400, 100));
    let ids = |x: &Dataset| x.images().iter().map(|&v| v as usize).collect::<Vec<_>>();
    let (ti, vi) = (ids(&tr), ids(&va));
    assert!(ti.windows(2).all(|w| w[0] < w[1]), "train keeps the order");
    assert!(
        vi.windows(2).all(|w| w[0] < w[1]),
        "validation keeps the order"
    );
    let mut all = [ti.clone(), vi.clone()].concat();
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>(), "disjoint and complete");
    for (k, &i) in vi.iter().enumerate() {
        assert_eq!(va.labels()[k], (i % 10) as u32, "labels travel with images");
    }
    let (tr2, va2) = d.split_validation(100, 42).unwrap();
    assert_eq!((tr2, va2), (tr, va.clone()), "same seed, same split");
    let (_, va3) = d.split_validation(100, 43).unwrap();
    assert_ne!(ids(&va3), vi, "another seed, another split");
    assert!(vi.iter().any(|&i| i >= 250), "not just a prefix");
    for bad in [0, n, n + 1] {
        assert!(matches!(
            d.split_validation(bad, 1),
            Err(Error::InvalidParameter { .. })
        ));
    }
}

#[test]
fn synthetic_data_is_deterministic_and_learnable() {
    let train = Dataset::synthetic(600, 1).unwrap();
    assert_eq!(
        (
            train.len(),
            train.channels(),
            train.height(),
            train.width(),
            train.classes()
        ),
        (600, 1, 28, 28, 10)
    );
    assert_eq!(train, Dataset::synthetic(600, 1).unwrap());
    let test = Dataset::synthetic(300, 2).unwrap();
    assert_ne!(test.images()[..784], train.images()[..784]);
    assert!(
        train.class_counts().iter().all(|&c| c > 30),
        "every class appears"
    );
    // A nearest-centroid classifier fitted on `train` separates `test`: the data is learnable,
    // and the class patterns are shared across seeds.
    let per = train.example_len();
    let mut centroids = vec![0f64; 10 * per];
    let counts = train.class_counts();
    for i in 0..train.len() {
        let (img, l) = train.get(i).unwrap();
        for (c, &x) in centroids[l as usize * per..].iter_mut().zip(img) {
            *c += x as f64 / counts[l as usize] as f64;
        }
    }
    let correct = (0..test.len())
        .filter(|&i| {
            let (img, l) = test.get(i).unwrap();
            let best = (0..10)
                .min_by(|&a, &b| {
                    let dist = |k: usize| -> f64 {
                        img.iter()
                            .zip(&centroids[k * per..(k + 1) * per])
                            .map(|(&x, &c)| (x as f64 - c).powi(2))
                            .sum()
                    };
                    dist(a).total_cmp(&dist(b))
                })
                .unwrap();
            best == l as usize
        })
        .count();
    assert!(correct >= 290, "nearest centroid got {correct}/300");
    assert!(matches!(
        Dataset::synthetic_shaped(4, 0, 1, 2, 2, 0),
        Err(Error::InvalidParameter { .. })
    ));
}

fn mean_std(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let v = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n;
    (m, v.sqrt())
}

#[test]
fn real_mnist_when_present() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    if !dir.is_dir() {
        eprintln!(
            "NOTICE: skipping real_mnist_when_present: {} not found (run scripts/fetch-mnist)",
            dir.display()
        );
        return;
    }
    let train = Dataset::mnist(&dir, Split::Train).unwrap();
    let test = Dataset::mnist(&dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(&train.labels()[..5], &[5, 0, 4, 1, 9]);
    assert_eq!(&test.labels()[..5], &[7, 2, 1, 0, 4]);
    let (m, s) = mean_std(train.images());
    assert!(
        m.abs() < 1e-3 && (s - 1.0).abs() < 1e-3,
        "mean {m}, std {s}"
    );
    assert_eq!(
        train.class_counts(),
        vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
}

#[test]
fn real_fashion_mnist_when_present() {
    let dir = DatasetKind::FashionMnist.default_dir();
    if !dir.is_dir() {
        eprintln!(
            "NOTICE: skipping real_fashion_mnist_when_present: {} not found (run scripts/fetch-fashion-mnist)",
            dir.display()
        );
        return;
    }
    let train = Dataset::fashion_mnist(dir, Split::Train).unwrap();
    let test = Dataset::fashion_mnist(dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(&train.labels()[..5], &[9, 0, 0, 3, 0]);
    assert_eq!(&test.labels()[..5], &[9, 2, 1, 1, 6]);
    let (m, s) = mean_std(train.images());
    assert!(
        m.abs() < 1e-3 && (s - 1.0).abs() < 1e-3,
        "mean {m}, std {s}"
    );
    assert!(train.class_counts().iter().all(|&c| c == 6000));
}
