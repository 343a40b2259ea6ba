"""Reference values for tests/gs_wgan.rs: autodp 0.2.3.1's `compose_subsampled_mechanism`
(Wang, Balle, Kasiviswanathan 2019, Theorem 9) of the Gaussian mechanism, as the GS-WGAN
paper's evaluation/privacy_analysis.py calls it. Run: pip install autodp==0.2.3.1; python3 THIS."""
from autodp import rdp_acct, rdp_bank

for (k, s) in [(1000, 1.07), (10, 0.8), (2, 1.0), (1, 1.0)]:
    func = lambda x: rdp_bank.RDP_gaussian({'sigma': s}, x)
    acct = rdp_acct.anaRDPacct()
    acct.compose_subsampled_mechanism(func, 1.0 / k, coeff=1)
    print(k, s, [(a, repr(float(acct.RDPs_int[a - 1]))) for a in [2, 3, 5, 20, 64]])

def paper(k, sigma, b, t, delta=1e-5):
    func = lambda x: rdp_bank.RDP_gaussian({'sigma': sigma}, x)
    acct = rdp_acct.anaRDPacct()
    acct.compose_subsampled_mechanism(func, 1.0 / k, coeff=t * b)
    return acct.get_eps(delta)

print("paper eps (K=1000, sigma=1.07, B=32, T=20000):", paper(1000, 1.07, 32, 20000))
