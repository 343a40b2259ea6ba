//! `gan_eval`'s measures (`examples/gan_eval/eval.rs`) against hand-computable cases, and the
//! labelled-image file format of `dpsgd::data::labelled`.

#[allow(dead_code)]
#[path = "../examples/gan_eval/eval.rs"]
mod eval;

use dpsgd::data::{load_labelled_images, save_labelled_images};
use dpsgd::Error;
use nalgebra::{DMatrix, DVector};

#[test]
fn frechet_distance_hand_computed_cases() {
    // Diagonal covariances: FD = ‖μ₁ − μ₂‖² + Σ (√a_i − √b_i)².
    let mu1 = DVector::from_vec(vec![0.0, 1.0, 2.0]);
    let mu2 = DVector::from_vec(vec![1.0, 1.0, 0.0]);
    let s1 = DMatrix::from_diagonal(&DVector::from_vec(vec![4.0, 1.0, 9.0]));
    let s2 = DMatrix::from_diagonal(&DVector::from_vec(vec![1.0, 1.0, 4.0]));
    let fd = eval::frechet_distance(&mu1, &s1, &mu2, &s2).unwrap();
    // 1 + 0 + 4 = 5;  (2−1)² + 0 + (3−2)² = 2.
    assert!((fd - 7.0).abs() < 1e-10, "{fd}");
    // Σ₁ = I, Σ₂ = R diag(4, 9) Rᵀ (a 30° rotation): tr Σ₂ = 13, tr Σ₂^½ = 2 + 3 = 5,
    // FD = 2 + 13 − 2·5 = 5, whatever the rotation.
    let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
    let r = DMatrix::from_row_slice(2, 2, &[c, -s, s, c]);
    let s2 = &r * DMatrix::from_diagonal(&DVector::from_vec(vec![4.0, 9.0])) * r.transpose();
    let z = DVector::zeros(2);
    let fd = eval::frechet_distance(&z, &DMatrix::identity(2, 2), &z, &s2).unwrap();
    assert!((fd - 5.0).abs() < 1e-10, "{fd}");
    // Non-commuting Σ₁, Σ₂: same value as tr(Σ₁ + Σ₂) − 2·tr((Σ₁Σ₂)^½) by the 2×2 formula
    // tr √M = √(tr M + 2√det M) for M = Σ₁Σ₂ (real positive eigenvalues).
    let a = DMatrix::from_row_slice(2, 2, &[2.0, 0.5, 0.5, 1.0]);
    let m = &a * &s2;
    let tr_sqrt = (m.trace() + 2.0 * m.determinant().sqrt()).sqrt();
    let want = a.trace() + s2.trace() - 2.0 * tr_sqrt;
    let fd = eval::frechet_distance(&z, &a, &z, &s2).unwrap();
    assert!((fd - want).abs() < 1e-9, "{fd} vs {want}");
    // A distribution against itself: 0.
    let fd = eval::frechet_distance(&mu1, &s1, &mu1, &s1).unwrap();
    assert!(fd.abs() < 1e-10);
    // Mismatched sizes: an error, not a panic.
    assert!(eval::frechet_distance(&z, &a, &mu1, &s1).is_err());
}

#[test]
fn mean_cov_and_pairwise_distance() {
    // Rows (0, 0), (2, 0), (0, 2), (2, 2): mean (1, 1), covariance (n−1 divisor) 4/3·I.
    let rows = [0.0, 0.0, 2.0, 0.0, 0.0, 2.0, 2.0, 2.0];
    let (mu, cov) = eval::mean_cov(&rows, 2).unwrap();
    assert_eq!(mu.as_slice(), &[1.0, 1.0]);
    assert!((cov[(0, 0)] - 4.0 / 3.0).abs() < 1e-12 && cov[(0, 1)].abs() < 1e-12);
    assert!(eval::mean_cov(&[1.0, 2.0], 2).is_err());
    // Pairs of the unit square's corners: 4 sides of 1, 2 diagonals of √2.
    let sq: Vec<f32> = rows.iter().map(|&x| x as f32 / 2.0).collect();
    let d = eval::mean_pairwise_distance(&sq, 2);
    assert!((d - (4.0 + 2.0 * 2f64.sqrt()) / 6.0).abs() < 1e-9, "{d}");
    assert_eq!(eval::mean_pairwise_distance(&sq[..2], 2), 0.0);
}

#[test]
fn labelled_images_round_trip_and_refusals() {
    let dir = std::env::temp_dir().join(format!("dpsgd-labelled-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("gen.safetensors");
    let images: Vec<f32> = (0..3 * 4).map(|i| i as f32 / 6.0 - 1.0).collect();
    save_labelled_images(&p, &images, &[0, 9, 4], [1, 2, 2], 10).unwrap();
    let ds = load_labelled_images(&p).unwrap();
    assert_eq!(ds.images(), &images[..]);
    assert_eq!(ds.labels(), &[0, 9, 4]);
    assert_eq!(
        (ds.channels(), ds.height(), ds.width(), ds.classes()),
        (1, 2, 2, 10)
    );
    // Refused before writing: out-of-range values, a label ≥ classes, a mis-sized buffer, NaN.
    let q = dir.join("bad.safetensors");
    let mut bad = images.clone();
    bad[3] = 1.5;
    assert!(matches!(
        save_labelled_images(&q, &bad, &[0, 1, 2], [1, 2, 2], 10),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(save_labelled_images(&q, &images, &[0, 10, 2], [1, 2, 2], 10).is_err());
    assert!(save_labelled_images(&q, &images[1..], &[0, 1, 2], [1, 2, 2], 10).is_err());
    bad[3] = f32::NAN;
    assert!(matches!(
        save_labelled_images(&q, &bad, &[0, 1, 2], [1, 2, 2], 10),
        Err(Error::NonFinite { .. })
    ));
    assert!(!q.exists());
    // A missing file is Io; a file of another kind is Format naming it.
    assert!(matches!(load_labelled_images(&q), Err(Error::Io { .. })));
    std::fs::write(&q, b"not safetensors").unwrap();
    assert!(matches!(
        load_labelled_images(&q),
        Err(Error::Format { .. })
    ));
    // A model checkpoint (other tensors) is refused too.
    let m = dpsgd::nn::models::sample_conv_net(&dpsgd::Device::Cpu, 1).unwrap();
    m.save_safetensors(&q).unwrap();
    let e = load_labelled_images(&q).unwrap_err();
    assert!(e.to_string().contains("images"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn several_sample_files_are_one_set() {
    let dir = std::env::temp_dir().join(format!("dpsgd-gan-eval-multi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b, c) = (
        dir.join("c3.safetensors"),
        dir.join("c7.safetensors"),
        dir.join("small.safetensors"),
    );
    let ia: Vec<f32> = (0..4 * 4).map(|i| i as f32 / 16.0 - 0.5).collect();
    let ib: Vec<f32> = (0..2 * 4).map(|i| -(i as f32) / 8.0).collect();
    save_labelled_images(&a, &ia, &[3; 4], [1, 2, 2], 10).unwrap();
    save_labelled_images(&b, &ib, &[7; 2], [1, 2, 2], 10).unwrap();
    let ds = eval::load_samples(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(ds.len(), 6);
    assert_eq!(ds.labels(), &[3, 3, 3, 3, 7, 7]);
    assert_eq!(&ds.images()[..16], &ia[..]);
    assert_eq!(&ds.images()[16..], &ib[..]);
    // Another image shape is refused, naming the file; so is an empty list.
    save_labelled_images(&c, &[0.0; 9], &[1], [1, 3, 3], 10).unwrap();
    let e = eval::load_samples(&[a.clone(), c.clone()]).unwrap_err();
    assert!(e.to_string().contains("small.safetensors"), "{e}");
    assert!(eval::load_samples(&[]).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
