//! GS-WGAN's accountant against autodp (the library the paper's script uses) and by hand.

use dpsgd::accounting::gs_wgan::{
    noise_std, paper_epsilon, rdp_row, DiscriminatorSampling, GsWganAccountant,
};

/// autodp 0.2.3.1, `compose_subsampled_mechanism(RDP_gaussian(σ), 1/K, coeff=1)`, `RDPs_int`
/// at orders 2, 3, 5, 20, 64 (`tests/reference/gs_wgan_autodp.py`).
const AUTODP: [(u64, f64, [f64; 5]); 4] = [
    (
        1000,
        1.07,
        [
            4.790254366706655e-06,
            7.199087000193906e-06,
            1.2044549869466959e-05,
            1.4996127338982983,
            20.9436394527698,
        ],
    ),
    (
        10,
        0.8,
        [
            0.09113297983927963,
            0.2038668545761117,
            1.2319261888518809,
            13.237707648458136,
            47.671868273475255,
        ],
    ),
    (
        2,
        1.0,
        [
            0.8582975333721059,
            1.1562086477166234,
            1.858653278260106,
            9.306852831235418,
            31.306852819440056,
        ],
    ),
    (1, 1.0, [1.0, 1.5, 2.5, 10.0, 32.0]),
];

#[test]
fn per_row_rdp_matches_autodp() {
    for (k, s, want) in AUTODP {
        for (a, w) in [2u64, 3, 5, 20, 64].into_iter().zip(want) {
            let got = rdp_row(k, s, a).unwrap();
            assert!(
                (got - w).abs() <= 1e-9 * w.abs().max(1e-6),
                "K={k} σ={s} α={a}: {got} vs autodp {w}"
            );
        }
    }
}

#[test]
fn composes_over_rows_and_converts() {
    let acc = GsWganAccountant::new(10, 0.8, 3, DiscriminatorSampling::IndependentPerRow).unwrap();
    let rdp = acc.rdp(7, &[2, 5]).unwrap();
    assert!((rdp[0] - 21.0 * rdp_row(10, 0.8, 2).unwrap()).abs() < 1e-12);
    assert!((rdp[1] - 21.0 * rdp_row(10, 0.8, 5).unwrap()).abs() < 1e-12);
    // ε grows with iterations and is 0 for none.
    assert_eq!(acc.epsilon(0, 1e-5).unwrap().epsilon, 0.0);
    let e1 = acc.epsilon(10, 1e-5).unwrap().epsilon;
    let e2 = acc.epsilon(20, 1e-5).unwrap().epsilon;
    assert!(e1 > 0.0 && e2 > e1);
}

#[test]
fn paper_setting() {
    // autodp prints 9.9926 for the paper's setting (it also interpolates fractional orders);
    // the paper reports ε = 10. Over integer orders with the same conversion we are within 0.05.
    let p = paper_epsilon(1000, 1.07, 32, 20_000, 1e-5).unwrap();
    assert!((p - 9.9926).abs() < 0.05, "{p}");
    // The valid figure for the independent-per-row mechanism uses the tighter conversion.
    let acc =
        GsWganAccountant::new(1000, 1.07, 32, DiscriminatorSampling::IndependentPerRow).unwrap();
    let v = acc.epsilon(20_000, 1e-5).unwrap().epsilon;
    assert!(v < p && v > 0.8 * p, "{v} vs {p}");
}

#[test]
fn shared_discriminator_is_refused() {
    let e = GsWganAccountant::new(1000, 1.07, 32, DiscriminatorSampling::SharedPerIteration)
        .unwrap_err();
    assert!(e.to_string().contains("independent-per-row"), "{e}");
    assert_eq!(noise_std(1.0 / 32.0, 1.07), 2.0 / 32.0 * 1.07);
}

#[test]
fn truncation_charge() {
    use dpsgd::rng::Generator;
    let acc =
        GsWganAccountant::new(1000, 1.07, 32, DiscriminatorSampling::IndependentPerRow).unwrap();
    let plain = acc.epsilon(20_000, 1e-5).unwrap().epsilon;
    let charged = acc
        .epsilon_charged(20_000, 1e-5, 784, Generator::Philox)
        .unwrap()
        .epsilon;
    assert!(
        charged >= plain && charged < plain + 1e-4,
        "{charged} vs {plain}"
    );
    // Hopeless settings: no finite claim.
    let tiny = GsWganAccountant::new(1, 0.1, 32, DiscriminatorSampling::IndependentPerRow).unwrap();
    let e = tiny
        .epsilon_charged(1_000_000, 1e-5, 784, Generator::Philox)
        .unwrap();
    assert!(e.epsilon.is_infinite());
}
