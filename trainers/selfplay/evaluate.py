"""Evaluate a `ppo-shogi` checkpoint against the opponent ladder.

    python -m trainers.selfplay.evaluate CHECKPOINT [--weights selected|last] [--games 100]
        [--opponents random,capture_first,one_ply,two_ply] [--search none|value1|value2] [--search-width 8]
        [--greedy] [--ply-limit N] [--seed 0] [--out FILE.json]

CHECKPOINT is a checkpoint folder (or its state.pt). A finished run's checkpoint holds the
selected weights (the best ladder score during training; which iteration's they are is printed)
and the last iteration's (`--weights last`); a checkpoint written during training holds the
weights of its iteration only. Games alternate colours (the network is Black in the even ones);
draws and ply-limit games are not wins. Bad input exits with code 2 and a message naming it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def parse(argv: list[str] | None) -> argparse.Namespace:
    from trainers.selfplay.config import LADDER_NAMES

    parser = argparse.ArgumentParser(prog="python -m trainers.selfplay.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--weights", choices=("selected", "last"), default="selected")
    parser.add_argument("--games", type=int, default=100)
    parser.add_argument("--opponents", default=",".join(LADDER_NAMES),
                        help=f"comma-separated ladder rungs, of: {', '.join(LADDER_NAMES)}")
    parser.add_argument("--search", choices=("none", "value1", "value2"), default=None,
                        help="how the network plays (default: the checkpoint config's play_search)")
    parser.add_argument("--search-width", type=int, default=None)
    parser.add_argument("--greedy", action="store_true", help="the most probable move instead of sampling")
    parser.add_argument("--ply-limit", type=int, default=None, help="default: the checkpoint config's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)
    args.opponents = [name.strip() for name in args.opponents.split(",") if name.strip()]
    unknown = [name for name in args.opponents if name not in LADDER_NAMES]
    if unknown or not args.opponents:
        parser.error(f"--opponents: unknown ladder rung(s) {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(LADDER_NAMES)}")
    if args.games < 1:
        parser.error(f"--games must be >= 1, got {args.games}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)   # argparse exits with code 2 on bad input
    import numpy as np
    import torch

    from trainers.checkpoint import CheckpointError, load_checkpoint
    from trainers.selfplay.config import PpoShogiConfig
    from trainers.selfplay.evaluation import Match, match_metrics, play, score_rate

    try:
        payload = load_checkpoint(args.checkpoint, "ppo-shogi")
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    state = payload["trainer"]
    extra = state.get("extra") or {}
    if args.weights == "last":
        if not extra.get("last"):
            print("error: --weights last: this checkpoint was written during training and holds one weight set "
                  "(use --weights selected)", file=sys.stderr)
            return EXIT_BAD_INPUT
        weights, iteration = extra["last"]["weights"], int(extra["last"]["iteration"])
    else:
        weights, iteration = state["model"], int(extra.get("weights_iteration", state["iteration"]))
    overrides = {"ply_limit": args.ply_limit, "play_search": args.search, "search_width": args.search_width,
                 "eval_greedy": True if args.greedy else None}
    try:
        config = PpoShogiConfig(**{**payload["config"], **{k: v for k, v in overrides.items() if v is not None}})
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    torch.set_num_threads(max(1, torch.get_num_threads()))
    report = {"checkpoint": str(Path(args.checkpoint)), "weights": args.weights, "weights_iteration": iteration,
              "games": args.games, "play_search": config.play_search, "greedy": config.eval_greedy,
              "ply_limit": config.ply_limit, "opponents": {}}
    print(f"{args.weights} weights of iteration {iteration}; {args.games} games per opponent, colours alternated, "
          f"search {config.play_search}{' (greedy)' if config.eval_greedy else ''}")
    print(f"{'opponent':<14}{'wins':>6}{'draws':>7}{'losses':>8}{'score':>8}{'plies/game':>12}")
    for number, name in enumerate(args.opponents):
        seed = int(np.random.SeedSequence([args.seed, number]).generate_state(1)[0])
        result = play(Match(iteration, name, args.games, seed, weights), config, args.device)
        row = {"games": result.games, "wins": result.wins, "draws": result.draws, "losses": result.losses,
               "score_rate": score_rate(result), **match_metrics(result, "x")}
        report["opponents"][name] = {key.replace("_x", ""): value for key, value in row.items()}
        print(f"{name:<14}{result.wins:>6}{result.draws:>7}{result.losses:>8}{score_rate(result):>8.3f}"
              f"{result.plies / result.games:>12.1f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
