"""Figures 4-6 render from a PART model, and the symmetry score means what it says."""
import torch

from benchmarks.figures import antisymmetry, make_figures, place_patches
from methods import build_method


def test_antisymmetry_score():
    a = torch.randn(6, 6)
    assert antisymmetry(a - a.T) == 0.0
    assert abs(antisymmetry(a + a.T) - 2.0) < 1e-6


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
        assert 0 <= summary["antisymmetry_pred_dx"] <= 2
