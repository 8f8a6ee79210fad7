"""Interaction samplers against analytic and independently integrated distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctdose.materials import get_medium
from ctdose.physics.interactions import (
    ELECTRON_REST_KEV,
    HC_KEV_ANGSTROM,
    build_scatter_tables,
    incoherent_transfer_fraction,
    klein_nishina_pdf,
    kn_proposal,
    rotate_direction,
    sample_coherent,
    sample_incoherent,
    sample_klein_nishina,
)
from ctdose.physics.xsection import attenuation_table, form_factor_sq, incoherent_sf, momentum_transfer_inv_angstrom

N = 200_000


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _chi2_against(samples: np.ndarray, pdf, bins: int = 40) -> tuple[float, int]:
    """Chi-square of a histogram of cos(theta) samples against a density on [-1, 1]."""
    edges = np.linspace(-1.0, 1.0, bins + 1)
    counts, _ = np.histogram(samples, edges)
    fine = np.linspace(-1.0, 1.0, 40001)
    dens = pdf(fine)
    dens = dens / np.trapezoid(dens, fine)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(fine))])
    expected = np.diff(np.interp(edges, fine, cdf)) * samples.size
    keep = expected > 20
    chi2 = float((((counts - expected) ** 2) / expected)[keep].sum())
    return chi2, int(keep.sum()) - 1


def _chi2_ok(chi2: float, dof: int) -> bool:
    # 5 standard deviations of the chi-square distribution
    return chi2 < dof + 5.0 * math.sqrt(2.0 * dof)


def test_physical_constants_are_codata():
    """h c and m_e c^2 against the published CODATA values (typed in here, not computed): h and
    c are exact since the 2019 SI, h c = 1.239 841 984... x 1e-6 eV m = 12.398 419 843 32 keV
    Angstrom; m_e c^2 = 510.998 950 00(15) keV (CODATA 2018), 510.998 950 69(16) keV (CODATA
    2022), 1.4e-9 apart."""
    assert HC_KEV_ANGSTROM == pytest.approx(12.39841984332, rel=1e-10)
    assert ELECTRON_REST_KEV == pytest.approx(510.99895, rel=1e-8)


@pytest.mark.parametrize("energy_kev", [20.0, 60.0, 150.0])
def test_klein_nishina_matches_analytic_distribution(energy_kev):
    e = torch.full((N,), energy_kev)
    eps, cos = sample_klein_nishina(e, _gen(1))
    chi2, dof = _chi2_against(cos.numpy(), lambda c: klein_nishina_pdf(energy_kev, c))
    assert _chi2_ok(chi2, dof), (chi2, dof)
    # Compton relation E'/E = 1 / (1 + k (1 - cos))
    k = energy_kev / ELECTRON_REST_KEV
    np.testing.assert_allclose(eps.numpy(), 1.0 / (1.0 + k * (1.0 - cos.numpy())), rtol=2e-5)


@pytest.mark.parametrize("energy_kev", [20.0, 60.0, 150.0])
def test_one_number_klein_nishina_proposal_equals_the_two_number_one(energy_kev):
    """kn_proposal(k, r1) takes the energy ratio's number from where r1 falls inside its branch:
    r2 = r1 (a1 + a2) / a1 in branch 1, (r1 (a1 + a2) - a1) / a2 in branch 2 (computed here in
    float64); the two-number proposal with that r2 is the same proposal, and both branches
    occur in proportion a1 : a2."""
    k64 = energy_kev / ELECTRON_REST_KEV
    a1 = math.log1p(2.0 * k64)
    a2 = 0.5 * (1.0 - 1.0 / (1.0 + 2.0 * k64) ** 2)
    r1 = torch.rand(N, generator=_gen(31), dtype=torch.float64)
    t = r1 * (a1 + a2)
    branch1 = t < a1
    r2 = torch.where(branch1, t / a1, (t - a1) / a2)
    k = torch.full((N,), k64, dtype=torch.float64)
    for one, two in zip(kn_proposal(k, r1), kn_proposal(k, r1, r2)):
        np.testing.assert_allclose(one.numpy(), two.numpy(), rtol=1e-9, atol=1e-12)
    p1 = a1 / (a1 + a2)
    assert abs(float(branch1.double().mean()) - p1) < 5 * math.sqrt(p1 * (1 - p1) / N)
    eps = kn_proposal(k, r1)[0].numpy()
    assert eps.min() >= 1.0 / (1.0 + 2.0 * k64) - 1e-12 and eps.max() <= 1.0


def test_klein_nishina_mean_energy_transfer_analytic():
    # mean fraction transferred, from the closed-form KN cross sections (Evans 1955):
    # sigma_tr/sigma with sigma and sigma_tr integrated numerically in cos(theta) in float64
    energy = 100.0
    k = energy / ELECTRON_REST_KEV
    c = np.linspace(-1, 1, 200001)
    r = 1 / (1 + k * (1 - c))
    kn = r * r * (r + 1 / r - (1 - c * c))
    expected = np.trapezoid(kn * (1 - r), c) / np.trapezoid(kn, c)
    eps, _ = sample_klein_nishina(torch.full((N,), energy), _gen(2))
    mean = float((1 - eps).mean())
    sem = float((1 - eps).std()) / math.sqrt(N)
    assert abs(mean - expected) < 5 * sem


def test_incoherent_with_scattering_function_matches_integrated_density():
    water = get_medium("water")
    energy = 30.0  # low energy: S(x) matters most
    tables = build_scatter_tables([water], 150.0)
    e = torch.full((N,), energy)
    m = torch.zeros(N, dtype=torch.int64)
    eps, cos = sample_incoherent(e, m, tables, _gen(3))
    k = energy / ELECTRON_REST_KEV

    def pdf(c):
        x = energy / HC_KEV_ANGSTROM * np.sqrt((1 - c) / 2)
        return klein_nishina_pdf(energy, c) * incoherent_sf(water, x)

    chi2, dof = _chi2_against(cos.numpy(), pdf)
    assert _chi2_ok(chi2, dof), (chi2, dof)
    np.testing.assert_allclose(eps.numpy(), 1.0 / (1.0 + k * (1.0 - cos.numpy())), rtol=2e-5)
    # forward scattering is suppressed relative to free-electron KN
    _, cos_free = sample_klein_nishina(e, _gen(3))
    assert float((cos > 0.95).float().mean()) < 0.7 * float((cos_free > 0.95).float().mean())


@pytest.mark.parametrize("energy_kev", [20.0, 80.0])
def test_coherent_matches_form_factor_density(energy_kev):
    medium = get_medium("muscle")
    tables = build_scatter_tables([get_medium("water"), medium], 150.0)
    e = torch.full((N,), energy_kev)
    m = torch.ones(N, dtype=torch.int64)  # second medium
    cos = sample_coherent(e, m, tables, _gen(4)).numpy()

    def pdf(c):
        return (1 + c * c) * form_factor_sq(medium, momentum_transfer_inv_angstrom(energy_kev, c))

    chi2, dof = _chi2_against(cos, pdf, bins=60)
    assert _chi2_ok(chi2, dof), (chi2, dof)


def test_coherent_total_angle_distribution_is_forward_peaked():
    tables = build_scatter_tables([get_medium("water")], 150.0)
    cos = sample_coherent(torch.full((50_000,), 60.0), torch.zeros(50_000, dtype=torch.int64), tables, _gen(5))
    assert float(cos.median()) > 0.9  # most coherent scattering within ~25 degrees at 60 keV


def test_rotation_keeps_unit_length_and_polar_angle():
    g = _gen(6)
    n = 10_000
    v = torch.randn(n, 3, generator=g)
    v = v / v.norm(dim=1, keepdim=True)
    v[:10] = torch.tensor([0.0, 0.0, 1.0])  # polar special case
    v[10:20] = torch.tensor([0.0, 0.0, -1.0])
    c = torch.rand(n, generator=g) * 2 - 1
    phi = torch.rand(n, generator=g) * 2 * math.pi
    u2, v2, w2 = rotate_direction(v[:, 0], v[:, 1], v[:, 2], c, phi)
    norm = torch.sqrt(u2**2 + v2**2 + w2**2)
    np.testing.assert_allclose(norm.numpy(), 1.0, atol=1e-5)
    dot = u2 * v[:, 0] + v2 * v[:, 1] + w2 * v[:, 2]
    np.testing.assert_allclose(dot.numpy(), c.numpy(), atol=2e-4)


def test_rotation_azimuth_is_uniform():
    n = 100_000
    g = _gen(7)
    ones = torch.ones(n)
    d = torch.tensor([0.3, -0.5, 0.8])
    d = d / d.norm()
    phi = torch.rand(n, generator=g) * 2 * math.pi
    u, v, w = rotate_direction(ones * d[0], ones * d[1], ones * d[2], torch.zeros(n), phi)
    # theta = 90 deg: the new directions are uniform on the circle perpendicular to d
    assert abs(float(u.mean())) < 0.01 and abs(float(v.mean())) < 0.01 and abs(float(w.mean())) < 0.01


def test_energy_transfer_fraction_equals_sampled_mean_and_b1_mu_en():
    water = get_medium("water")
    energies = np.array([30.0, 60.0, 100.0])
    frac = incoherent_transfer_fraction(water, energies)
    tables = build_scatter_tables([water], 150.0)
    for e_kev, f in zip(energies, frac):
        eps, _ = sample_incoherent(torch.full((N,), e_kev), torch.zeros(N, dtype=torch.int64), tables, _gen(8))
        x = (1 - eps).double()
        assert abs(float(x.mean()) - f) < 5 * float(x.std()) / math.sqrt(N)
    # independent: B1's mu_en (fluorescence escape negligible for water) equals our mu_tr
    tab = attenuation_table([water], energies)
    mu_tr = tab.photo_cm2_g[0] + tab.incoh_cm2_g[0] * frac
    np.testing.assert_allclose(mu_tr, tab.en_cm2_g[0], rtol=0.01)


def test_transfer_fractions_of_many_media_equal_each_medium_integrated_alone():
    """Mixing per-element integrals equals integrating each medium's mixed S(x) (independent path)."""
    from ctdose.physics.interactions import ELECTRON_REST_KEV, HC_KEV_ANGSTROM, incoherent_transfer_fractions
    from ctdose.physics.xsection import incoherent_sf

    media = [get_medium(n) for n in ("water", "spine_bone", "lung", "air")]
    e = np.array([5.0, 20.0, 60.0, 140.0])
    got = incoherent_transfer_fractions(media, e)
    c = np.linspace(-1.0, 1.0, 2001)
    r = 1.0 / (1.0 + (e / ELECTRON_REST_KEV)[:, None] * (1.0 - c))
    kn = r * r * (r + 1.0 / r - (1.0 - c**2))
    x = (e[:, None] / HC_KEV_ANGSTROM) * np.sqrt((1.0 - c) / 2.0)
    for i, m in enumerate(media):
        dens = kn * incoherent_sf(m, x)
        expect = np.trapezoid(dens * (1.0 - r), c, axis=1) / np.trapezoid(dens, c, axis=1)
        np.testing.assert_allclose(got[i], expect, rtol=2e-4)
