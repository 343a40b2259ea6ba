//! Data: an IDX reader and writer ([`idx`]), image grids for sample pictures ([`grid`]), and in-memory datasets ([`Dataset`]) — MNIST,
//! Fashion-MNIST and small synthetic data for tests — with a deterministic validation split and
//! an allocation-free batch gather; ScatterNet features of a dataset, cached on disk ([`scatter`]).
//!
//! `scripts/fetch-mnist` writes MNIST's four IDX files to `data/mnist/`;
//! `scripts/fetch-fashion-mnist` installs Fashion-MNIST's in `/usr/share/datasets/fashion-mnist/`.

pub mod dataset;
pub mod grid;
pub mod idx;
pub mod labelled;
pub mod scatter;

pub use dataset::{
    Dataset, DatasetKind, Split, DEFAULT_FASHION_MNIST_DIR, DEFAULT_MNIST_DIR, FASHION_MNIST_MEAN,
    FASHION_MNIST_STD, MNIST_MEAN, MNIST_STD,
};
pub use labelled::{load_labelled_images, save_labelled_images, LABELLED_IMAGES_FORMAT};
