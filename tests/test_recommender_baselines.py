"""The classic baselines against hand-computed toys, their grids' range checks, and the refit protocol."""
import numpy as np
import pytest
import torch

from trainers.recommender.baselines import (
    GRIDS, PARAMS, EASEParams, check_grid, ease_weights, itemknn_weights, rp3beta_weights)

# 4 users x 5 items
X = torch.tensor([[1, 1, 0, 0, 0],
                  [1, 0, 1, 0, 0],
                  [0, 1, 1, 1, 0],
                  [0, 0, 0, 1, 1]], dtype=torch.float32)


def test_ease_closed_form_equals_per_column_ridge_regressions():
    """EASE's B with diag(B) = 0 is, column by column, the ridge regression of item j on the other
    items: b_-j = (X_-j^T X_-j + lam I)^-1 X_-j^T x_j. Solved here independently, in numpy."""
    lam = 1.0
    b = ease_weights(X, lam).double().numpy()
    x = X.double().numpy()
    for j in range(5):
        others = [i for i in range(5) if i != j]
        xo = x[:, others]
        expected = np.linalg.solve(xo.T @ xo + lam * np.eye(4), xo.T @ x[:, j])
        assert b[others, j] == pytest.approx(expected, abs=1e-6)
        assert b[j, j] == 0.0


def test_ease_two_items_by_hand():
    # x0 = [1, 1, 0], x1 = [1, 0, 1]: x0.x0 = 2, x0.x1 = 1; ridge of x1 on x0 is 1 / (2 + lam)
    x = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    b = ease_weights(x, lam=3.0)
    assert torch.allclose(b, torch.tensor([[0.0, 1 / 5], [1 / 5, 0.0]]))


def test_itemknn_cosine_with_shrink_and_neighbours_by_hand():
    # users per item: i0 {0,1}, i1 {0,2}, i2 {1,2}, i3 {2,3}, i4 {3}
    w = itemknn_weights(X, neighbours=5, shrink=0.0)
    assert w[0, 1] == pytest.approx(1 / 2)             # 1 common user / (sqrt2 sqrt2)
    assert w[3, 4] == pytest.approx(1 / np.sqrt(2))    # 1 / (sqrt2 * 1)
    assert w[0, 3] == 0.0 and w[2, 2] == 0.0
    shrunk = itemknn_weights(X, neighbours=5, shrink=1.0)
    assert shrunk[0, 1] == pytest.approx(1 / 3)         # 1 / (2 + 1)
    assert shrunk[3, 4] == pytest.approx(1 / (np.sqrt(2) + 1))
    # one neighbour per column: item 4's only similar item is 3; item 3's best is 4 (0.707 > 0.5)
    top1 = itemknn_weights(X, neighbours=1, shrink=0.0)
    assert (top1 > 0).sum(0).tolist() == [1, 1, 1, 1, 1]
    assert top1[3, 4] == pytest.approx(1 / np.sqrt(2)) and top1[4, 3] == pytest.approx(1 / np.sqrt(2))
    # user 3 (items 3, 4) scores item 2 through item 3 only: 1/2
    assert (X[3] @ w)[2] == pytest.approx(1 / 2)


def test_rp3beta_transition_products_by_hand():
    # u0 {0, 1}, u1 {1, 2}: P_ui rows [1/2, 1/2, 0], [0, 1/2, 1/2]; P_iu rows [1, 0], [1/2, 1/2], [0, 1]
    x = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    # alpha 1: P_iu P_ui = [[1/2,1/2,0],[1/4,1/2,1/4],[0,1/2,1/2]]; / pop^1 = [1, 2, 1] per column
    w = rp3beta_weights(x, alpha=1.0, beta=1.0)
    assert torch.allclose(w, torch.tensor([[0, 1 / 4, 0], [1 / 4, 0, 1 / 4], [0, 1 / 4, 0]]))
    # alpha 2 squares each probability first; beta 0 leaves popularity alone
    w2 = rp3beta_weights(x, alpha=2.0, beta=0.0)
    assert torch.allclose(w2, torch.tensor([[0, 1 / 4, 0], [1 / 16, 0, 1 / 16], [0, 1 / 4, 0]]))
    assert (x[0] @ w).tolist() == pytest.approx([1 / 4, 1 / 4, 1 / 4])


def test_grids_have_the_same_size_and_are_valid():
    sizes = {name: len(grid) for name, grid in GRIDS.items() if name not in ("popularity", "artist-share")}
    assert set(sizes.values()) == {4}
    for name, grid in GRIDS.items():
        assert len(check_grid(name, grid)) == len(grid)
    assert set(GRIDS) == set(PARAMS)


@pytest.mark.parametrize("model, point, field", [
    ("ease", {"lam": -1.0}, "ease.lam"),
    ("itemknn", {"neighbours": 0}, "itemknn.neighbours"),
    ("rp3beta", {"alpha": 0.5, "beta": 7.0}, "rp3beta.beta"),
    ("ials", {"factors": 64, "colour": 1}, "ials.colour"),
])
def test_grid_value_out_of_range_names_the_field(model, point, field):
    with pytest.raises(ValueError, match=field):
        check_grid(model, [point])
    with pytest.raises(ValueError, match="unknown baseline"):
        check_grid("svd", [{}])


def test_ease_params_range_message_states_the_bound():
    with pytest.raises(ValueError, match="greater than 0"):
        check_grid("ease", [{"lam": 0}])
    assert EASEParams().lam > 0


def test_ease_user_scores_without_the_item_inverse_equal_x_times_b():
    """Fewer users than songs takes the push-through route (a users x users solve); it must give
    exactly X @ B of the closed form, training songs included (B's zero diagonal)."""
    from trainers.recommender.baselines import ease_user_scores

    gen = torch.Generator().manual_seed(0)
    wide = (torch.rand(6, 15, generator=gen) < 0.4).float()
    for x in (wide, X, X.T.contiguous()):  # 6 x 15 and 4 x 5 take the new route, 5 x 4 the old one
        for lam in (0.5, 30.0):
            assert torch.allclose(ease_user_scores(x, lam), x @ ease_weights(x, lam), atol=1e-5)


def test_benchmark_grid_out_of_range_exits_2_naming_the_field():
    """A grid given on the benchmark's command line is checked before any data is built."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "recommender_quality.py"),
                           "--grid", 'rp3beta=[{"alpha": 0.5, "beta": 9}]'], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "rp3beta.beta = 9" in done.stderr and "less than or equal to 2" in done.stderr
