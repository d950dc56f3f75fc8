"""Figures 4-6 render from a PART model, and the symmetry score means what it says."""
import torch

import numpy as np
import pytest

from benchmarks.figures import (antisymmetry, make_figures, pick_reference, place_patches,
                                reconstruction_centres)
from methods import build_method


def test_antisymmetry_score():
    a = torch.randn(6, 6)
    assert antisymmetry(a - a.T) == 0.0
    assert abs(antisymmetry(a + a.T) - 2.0) < 1e-6


def test_antisymmetry_score_leaves_the_diagonal_out():
    # antisymmetric off the diagonal, large self-pair values on it: score 0
    m = torch.tensor([[5.0, 1.0, -2.0],
                      [-1.0, 7.0, 3.0],
                      [2.0, -3.0, -4.0]])
    assert antisymmetry(m) == 0.0
    # symmetric off the diagonal: ||M + M^T|| = 2 ||M|| there, whatever the diagonal
    s = torch.tensor([[9.0, 1.0], [1.0, 0.0]])
    assert antisymmetry(s) == pytest.approx(2.0)
    # by hand: off-diagonal entries 1, 3 -> sums 4, 4; ||.|| = sqrt(32) / sqrt(10)
    h = torch.tensor([[100.0, 1.0], [3.0, -100.0]])
    assert antisymmetry(h) == pytest.approx((32 / 10) ** 0.5)


def test_reconstruction_fixes_the_reference_at_its_true_centre():
    centres = np.array([[10.0, 10.0], [20.0, 4.0], [3.0, 30.0]])
    sizes = np.array([[4.0, 8.0], [4.0, 4.0], [2.0, 2.0]])
    pred = np.zeros((3, 3, 2))
    pred[1] = [[0.5, 1.5], [9.0, 9.0], [-2.0, 0.25]]   # row 1: reference 1; (1, 1) is junk
    placed = reconstruction_centres(centres, sizes, pred, ref=1)
    np.testing.assert_allclose(placed[1], centres[1])                 # not 20 + 36, 4 + 36
    np.testing.assert_allclose(placed[0], [20.0 + 0.5 * 4, 4.0 + 1.5 * 4])
    np.testing.assert_allclose(placed[2], [20.0 - 2.0 * 4, 4.0 + 0.25 * 4])
    assert placed is not centres and centres[1, 0] == 20.0             # inputs untouched


def test_reference_is_random_by_default_and_central_on_request():
    centres = np.array([[1.0, 1.0], [16.0, 15.0], [30.0, 2.0], [5.0, 28.0]])
    assert pick_reference(centres, (32, 32), "central") == 1
    g = torch.Generator().manual_seed(0)
    picks = {pick_reference(centres, (32, 32), generator=g) for _ in range(40)}
    assert picks == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="reference"):
        pick_reference(centres, (32, 32), "middle")


def test_place_patches_puts_a_patch_at_its_centre():
    patch = torch.ones(1, 2, 2, 3).numpy()
    canvas = place_patches(patch, [(5.0, 3.0)], [(2.0, 2.0)], (8, 8), margin=2)
    assert (canvas[2 + 2:2 + 4, 2 + 4:2 + 6] == 1).all()     # rows y0..y0+2, cols x0..x0+2
    assert canvas.sum() == 0.5 * canvas.size - 0.5 * 12 + 12


def test_make_figures_writes_three_pngs(tmp_path):
    torch.manual_seed(0)
    for name in ("part", "part-grid"):
        model = build_method(name, encoder=dict(arch="vit_micro", img_size=32, patch_size=4),
                             num_pairs=8).eval()
        summary = make_figures(model, torch.randn(2, 3, 32, 32), tmp_path, name)
        for fig in ("fig4_reconstruction", "fig5_uncertainty", "fig6_symmetry"):
            assert (tmp_path / f"{fig}_{name}.png").stat().st_size > 5000
        assert len(summary["uncertainty_spread_px"]) == 3
        assert len(summary["reconstruction_reference"]) == 2
        assert 0 <= summary["antisymmetry_pred_dx"] <= 2
