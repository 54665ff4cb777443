"""The Born machine's MPS against brute force on tiny chains, its numerics on long ones, the
feature maps, the data edge (bad input names the field or file) and the config checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainers.bornmachine import contraction
from trainers.bornmachine.config import BornAdversarialConfig, BornClassifyConfig, BornGenerativeConfig
from trainers.bornmachine.data import load_born_data
from trainers.bornmachine.features import embed
from trainers.bornmachine.mps import BornMachine
from trainers.config import ConfigError, build_config

pytestmark = pytest.mark.usefixtures("one_thread")
MAPS = ("fourier", "legendre")


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def random_machine(n_features: int, feature_map: str, classes: int = 3, d: int = 4, bond: int = 3,
                   seed: int = 0) -> BornMachine:
    """Cores far from the identity start, so that the tests see a generic MPS."""
    torch.manual_seed(seed)
    machine = BornMachine(n_features, classes, d, bond, feature_map, init_noise=0.6)
    return machine


def dense_amplitudes(machine: BornMachine, x: torch.Tensor) -> torch.Tensor:
    """psi(x, c) from the full tensor T[s_1..s_n, c] (built by brute force), contracted with phi."""
    tensor = machine.boundary[None, :]            # (product of open legs, D)
    for site in range(machine.n_features):
        if site == machine.label_position:
            tensor = torch.einsum("pl,lcr->pcr", tensor, machine.label_core).reshape(-1, machine.bond_dim)
        tensor = torch.einsum("pl,lsr->psr", tensor, machine.cores[site]).reshape(-1, machine.bond_dim)
    legs = [machine.feature_dim] * machine.n_features
    legs.insert(machine.label_position, machine.n_classes)
    tensor = (tensor @ machine.boundary).reshape(legs).movedim(machine.label_position, -1)
    features = machine.embed(x)
    amplitudes = []
    for row in range(len(x)):
        value = tensor
        for site in range(machine.n_features):
            value = torch.tensordot(features[row, site], value, dims=([0], [0]))
        amplitudes.append(value)
    return torch.stack(amplitudes)


def quadrature(feature_map: str, points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights on [0, 1], exact for the products of two basis functions: the midpoint
    rule for trigonometric polynomials, Gauss-Legendre for polynomials."""
    if feature_map == "fourier":
        return (torch.arange(points) + 0.5) / points, torch.full((points,), 1.0 / points)
    nodes, weights = np.polynomial.legendre.leggauss(points)
    return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)


# ---------------------------------------------------------------- exactness on tiny chains
@pytest.mark.parametrize("feature_map", MAPS)
@pytest.mark.parametrize("n_features", [1, 2, 3])
def test_amplitudes_and_class_probabilities_match_the_dense_tensor(float64, feature_map, n_features):
    machine = random_machine(n_features, feature_map)
    x = torch.rand(7, n_features)
    psi = dense_amplitudes(machine, x)
    psi_hat, log_scale = machine.amplitudes(x)
    assert torch.allclose(psi_hat * log_scale.exp()[:, None], psi, atol=1e-12)
    assert torch.allclose(machine.log_psi_squared(x), psi.square().log(), atol=1e-10)
    assert torch.allclose(machine.class_log_probs(x).exp(), psi.square() / psi.square().sum(1, keepdim=True))


@pytest.mark.parametrize("feature_map", MAPS)
def test_partition_function_matches_numerical_integration(float64, feature_map):
    machine = random_machine(3, feature_map)
    nodes, weights = quadrature(feature_map, 24)
    grid = torch.cartesian_prod(nodes, nodes, nodes)
    grid_weights = torch.einsum("i,j,k->ijk", weights, weights, weights).reshape(-1)
    with torch.no_grad():
        integrals = (machine.log_psi_squared(grid).exp() * grid_weights[:, None]).sum(0)
        exact = machine.log_partition_per_class().exp()
    assert torch.allclose(exact, integrals, rtol=1e-9)
    assert math.isclose(float(machine.log_partition().detach().exp()), float(integrals.sum()), rel_tol=1e-9)


@pytest.mark.parametrize("feature_map", MAPS)
def test_feature_maps_are_orthonormal(float64, feature_map):
    nodes, weights = quadrature(feature_map, 64)
    features = embed(nodes, 9, feature_map)
    gram = features.T @ (features * weights[:, None])
    assert torch.allclose(gram, torch.eye(9), atol=1e-10)


def test_ancestral_samples_follow_the_exact_density(float64):
    """20k samples of a 2-feature chain against the exact bin probabilities of p(x | c)."""
    machine = random_machine(2, "fourier", classes=2, d=5, seed=1)
    machine.grid_size = 400
    samples = 20_000
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        drawn = machine.sample(torch.ones(samples, dtype=torch.long), torch.rand(samples, 2, generator=generator))
        fine = 160  # midpoint grid, exact for these trigonometric polynomials within a bin sum
        nodes = (torch.arange(fine) + 0.5) / fine
        density = machine.log_psi_squared(torch.cartesian_prod(nodes, nodes))[:, 1].exp().reshape(fine, fine)
    bins = 8
    exact = density.reshape(bins, fine // bins, bins, fine // bins).sum(dim=(1, 3))
    exact = exact / exact.sum()
    index = (drawn * bins).long().clamp(0, bins - 1)
    histogram = torch.zeros(bins, bins).index_put_((index[:, 0], index[:, 1]), torch.ones(samples), accumulate=True)
    total_variation = 0.5 * (histogram / samples - exact).abs().sum()
    assert total_variation < 0.03  # sampling noise alone: about 0.012 (measured)
    # the conditional density of the second feature given the first is normalised
    points = (torch.arange(1000) + 0.5) / 1000
    conditional = machine.conditional_density(torch.tensor([0, 1]), torch.tensor([[0.2], [0.7]]), points)
    assert torch.allclose(conditional.mean(dim=1), torch.ones(2), atol=1e-9)


def test_samples_are_differentiable_in_the_cores():
    machine = random_machine(3, "legendre")
    samples = machine(task="sample", labels=torch.tensor([0, 1, 2, 1]), uniforms=torch.rand(4, 3))
    samples.square().sum().backward()
    assert machine.cores.grad.abs().sum() > 0 and machine.label_core.grad.abs().sum() > 0
    assert samples.min() >= 0 and samples.max() <= 1


@pytest.mark.parametrize("n_features, d, bond", [(2, 3, 3), (5, 3, 3), (19, 2, 2)])
def test_hand_written_backward_matches_autograd(float64, monkeypatch, n_features, d, bond):
    """The hand-written backward against gradcheck of log psi^2 (x, cores, label core), and of
    log Z; rescaling every 3 steps so that 19 features (halves of 10 steps) cross it 3 times."""
    monkeypatch.setattr(contraction, "RESCALE_EVERY", 3)
    machine = random_machine(n_features, "legendre", d=d, bond=bond)
    x = torch.rand(3, n_features, requires_grad=True)
    cores = machine.cores.detach().clone().requires_grad_(True)
    label = machine.label_core.detach().clone().requires_grad_(True)

    def log_psi(x, cores, label):
        params = {"cores": cores, "label_core": label}
        return torch.func.functional_call(machine, params, (x,), {"task": "joint"})[0]

    assert torch.autograd.gradcheck(log_psi, (x, cores, label))
    assert torch.autograd.gradcheck(
        lambda c, l: torch.func.functional_call(machine, {"cores": c, "label_core": l}, (x,), {"task": "joint"})[1],
        (cores, label))


# ---------------------------------------------------------------- numerics of long chains
def test_a_64_site_chain_stays_finite_at_init_and_while_training():
    torch.manual_seed(0)
    machine = BornMachine(64, 10, feature_dim=3, bond_dim=8, feature_map="legendre")
    x, y = torch.rand(32, 64), torch.randint(0, 10, (32,))
    optimizer = torch.optim.Adam(machine.parameters(), lr=1e-2)
    for step in range(6):
        log_probs = machine(x)
        log_psi, log_partition = machine(x, task="joint")
        assert torch.isfinite(log_probs).all() and torch.isfinite(log_psi).all()
        assert torch.isfinite(log_partition).all()
        assert torch.allclose(log_probs.exp().sum(1), torch.ones(32), atol=1e-5)
        joint = -(log_psi.gather(1, y[:, None]) - torch.logsumexp(log_partition, 0)).mean()
        loss = torch.nn.functional.nll_loss(log_probs, y) + joint
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(machine.cores.grad).all()
        optimizer.step()


def test_amplitudes_far_below_float32_stay_exact_in_log_space():
    """Cores scaled by 0.05 on 300 sites: psi ~ 1e-390, far below float32; log psi^2 and log Z
    move by exactly the known amount and p(c|x) does not move at all."""
    torch.manual_seed(0)
    machine = BornMachine(300, 3, feature_dim=3, bond_dim=4, feature_map="fourier")
    x = torch.rand(4, 300)
    with torch.no_grad():
        before_psi, before_z, before_p = machine.log_psi_squared(x), machine.log_partition(), machine(x)
        machine.cores.mul_(0.05)
        after_psi, after_z, after_p = machine.log_psi_squared(x), machine.log_partition(), machine(x)
    shift = 2 * 300 * math.log(0.05)
    assert torch.allclose(after_psi - before_psi, torch.full_like(after_psi, shift), rtol=1e-4)
    assert math.isclose(float(after_z - before_z), shift, rel_tol=1e-4)
    assert torch.allclose(after_p, before_p, atol=1e-5)


def test_all_zero_amplitudes_give_the_uniform_distribution():
    machine = BornMachine(4, 5, feature_dim=3, bond_dim=3)
    with torch.no_grad():
        machine.label_core.zero_()
        log_probs = machine(torch.rand(3, 4))
    assert torch.allclose(log_probs, torch.full_like(log_probs, -math.log(5)))


# ---------------------------------------------------------------- data and config at the edge
def test_splits_are_stratified_and_scaled_on_the_training_split():
    data = load_born_data("digits", data_seed=3)
    assert data.n_features == 64 and data.n_classes == 10
    sizes = [len(split.y) for split in (data.train, data.val, data.test)]
    assert sum(sizes) == 1797
    for split in (data.val, data.test):
        share = np.bincount(split.y, minlength=10) / len(split.y)
        assert np.abs(share - np.bincount(data.train.y) / len(data.train.y)).max() < 0.02
        assert split.x.min() >= 0 and split.x.max() <= 1
    active = data.train.raw.max(0) > data.train.raw.min(0)
    assert np.allclose(data.train.x[:, active].min(0), 0) and np.allclose(data.train.x[:, active].max(0), 1)
    assert np.allclose(data.to_raw(data.test.x.astype(np.float64))[:, active].clip(
        data.minimum[active], data.minimum[active] + data.span[active]),
        data.test.raw[:, active].clip(data.minimum[active], data.minimum[active] + data.span[active]), atol=1e-4)
    again = load_born_data("spirals", data_seed=3)
    assert np.array_equal(again.train.raw, load_born_data("spirals", data_seed=3).train.raw)


def test_bad_files_are_rejected_naming_the_file_or_field(tmp_path):
    def check(**values):
        config = build_config(BornClassifyConfig, values)
        config.check_files()

    with pytest.raises(ConfigError, match="none.csv.*does not exist"):
        check(dataset=str(tmp_path / "none.csv"))
    table = tmp_path / "table.csv"
    table.write_text("a,b,kind\n1,2,x\n3,4,y\n5,6,x\n")
    with pytest.raises(ConfigError, match="label_column = 'label'.*table.csv.*a, b, kind"):
        check(dataset=str(table))
    words = tmp_path / "words.csv"
    words.write_text("a,colour,label\n1,red,0\n2,blue,1\n")
    with pytest.raises(ConfigError, match="non-numeric feature column.*colour"):
        check(dataset=str(words))
    single = tmp_path / "single.parquet"
    import pandas as pd

    pd.DataFrame({"a": [1.0, 2.0, 3.0], "label": ["x", "x", "x"]}).to_parquet(single)
    with pytest.raises(ConfigError, match="single class"):
        check(dataset=str(single))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(ConfigError, match="garbage.parquet"):
        check(dataset=str(garbage))
    holes = tmp_path / "holes.csv"  # an empty cell and a literal NaN
    holes.write_text("a,b,label\n1,,0\n2,3,1\nnan,4,0\n5,6,1\n")
    with pytest.raises(ConfigError, match="holes.csv.*missing or infinite feature values"):
        check(dataset=str(holes))
    infinite = tmp_path / "infinite.parquet"
    pd.DataFrame({"a": [1.0, np.inf, 3.0, 4.0], "label": [0, 1, 0, 1]}).to_parquet(infinite)
    with pytest.raises(ConfigError, match="infinite.parquet.*missing or infinite"):
        check(dataset=str(infinite))
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("a,label\n1,x\n2,\n3,y\n")
    with pytest.raises(ConfigError, match="label_column = 'label'.*rows without a label"):
        check(dataset=str(unlabelled))
    good = tmp_path / "good.csv"
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"u": rng.normal(size=60), "v": rng.normal(size=60), "kind": ["p", "q"] * 30})
    table.to_csv(good, index=False)
    check(dataset=str(good), label_column="kind")
    data = load_born_data(str(good), label_column="kind")
    assert data.class_names == ["p", "q"] and data.feature_names == ["u", "v"]


@pytest.mark.parametrize("values, field", [
    ({"feature_dim": 1}, "feature_dim = 1: .*allowed: feature_dim >= 2"),
    ({"bond_dim": 0}, "bond_dim = 0: .*allowed: bond_dim >= 1"), ({"dataset": "cifar10"}, "dataset"),
    ({"dataset": "mnist", "image_size": 20}, "image_size = 20"), ({"bond_dim": 1000}, "bond_dim = 1000"),
    ({"metric": "val_speed"}, "metric"), ({"val_frac": 0.7}, "val_frac"), ({"lr": -1}, "lr"),
])
def test_bad_values_are_rejected_naming_the_field(values, field):
    with pytest.raises(ConfigError, match=field):
        build_config(BornClassifyConfig, values)


def test_mode_follows_the_metric():
    assert build_config(BornClassifyConfig, {"metric": "val_acc"}).mode == "max"
    assert BornGenerativeConfig().mode == "min" and BornAdversarialConfig().mode == "max"
    with pytest.raises(ConfigError, match="contradicts metric 'val_rob'"):
        build_config(BornAdversarialConfig, {"mode": "min"})
    for name in ("beta", "mix", "critic_steps"):
        with pytest.raises(ConfigError, match=f"unknown config key '{name}'|{name}"):
            build_config(BornClassifyConfig, {name: 1})
