"""Evaluation matches: the learner's weights of one iteration against the ladder and a snapshot.

An evaluation of iteration t is a list of `Match`es, each one opponent, `eval_games` games with
colours alternated, seeded from (seed, t, opponent). `play(match, config)` plays one anywhere (it
needs only the match and the config), so the same function runs in the learner and on Ray
evaluation actors (distributed/selfplay.py). An `Evaluator` takes whole evaluations and hands
back finished ones, each tagged with the iteration whose weights played:

    LocalEvaluator   plays at `submit`, in the learner's process (serial, on its critical path)
    (Ray)            plays on evaluation actors while training goes on; registered under the
                     collector's name with `register_evaluator`

`ladder_score` is the selection metric: the sum over the ladder's rungs of the learner's score
rate (win 1, draw or ply limit 1/2, loss 0). It rises while any rung is still being beaten more
often, so it does not saturate once the weakest rung is won every time, as `win_rate_random` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch

from trainers.selfplay.config import PpoShogiConfig
from trainers.selfplay.runner import MatchResult, play_match

SNAPSHOT = "snapshot"
# metric suffix of each opponent (capture-first keeps its short historical name)
SUFFIX = {"random": "random", "capture_first": "capture", "one_ply": "one_ply", "two_ply": "two_ply",
          SNAPSHOT: SNAPSHOT}


@dataclass
class Match:
    iteration: int                       # whose weights play (the learner's after that many updates)
    opponent: str                        # a ladder name or SNAPSHOT
    games: int
    seed: int
    weights: dict[str, torch.Tensor]
    opponent_weights: dict[str, torch.Tensor] | None = None   # the snapshot's
    opponent_label: str = ""             # the snapshot's pool name (its Elo entry)


@dataclass
class Evaluation:
    iteration: int
    results: dict[str, MatchResult] = field(default_factory=dict)   # opponent -> result
    labels: dict[str, str] = field(default_factory=dict)             # opponent -> Elo name
    seconds: float = 0.0                 # wall time of its matches (summed over evaluation actors)


def network_agent(weights: dict[str, torch.Tensor], config: PpoShogiConfig, device: Any = "cpu"):
    from trainers.selfplay.agents import NetworkAgent
    from trainers.selfplay.network import ActorCritic, make_policy_fn

    network = ActorCritic(config.blocks, config.channels).to(device).eval()
    network.load_state_dict(weights)
    width = config.search_width if config.play_search in ("value1", "value2") else 0
    return NetworkAgent(make_policy_fn(network, torch.device(device), config.mixed_precision), config.eval_greedy,
                        search_width=width, shaping=config.material_shaping,
                        depth=2 if config.play_search == "value2" else 1)


def play(match: Match, config: PpoShogiConfig, device: Any = "cpu") -> MatchResult:
    """One evaluation match; the learner plays Black in games 0, 2, ... (play_match)."""
    from trainers.selfplay.ladder import LADDER

    learner = network_agent(match.weights, config, device)
    if match.opponent == SNAPSHOT:
        opponent = network_agent(match.opponent_weights, config, device)
    else:
        opponent = LADDER[match.opponent]
    return play_match(learner, opponent, match.games, config.ply_limit, match.seed, config.start_sfen)


def score_rate(result: MatchResult) -> float:
    return float(np.mean(result.scores)) if result.scores else float("nan")


def ladder_score(results: dict[str, MatchResult], ladder: list[str]) -> float:
    """Sum over the ladder of the learner's score rate (see the module docstring); a rung that
    was not played (the learner did not beat the one below it) counts 0."""
    return float(sum(score_rate(results[name]) for name in ladder if name in results))


def match_metrics(result: MatchResult | None, suffix: str) -> dict[str, float]:
    if result is None:
        return dict.fromkeys((f"win_rate_{suffix}", f"loss_rate_{suffix}", f"draw_rate_{suffix}",
                              f"mean_plies_{suffix}"), float("nan"))
    return {f"win_rate_{suffix}": result.win_rate, f"loss_rate_{suffix}": result.loss_rate,
            f"draw_rate_{suffix}": result.draws / max(1, result.games),
            f"mean_plies_{suffix}": result.plies / max(1, result.games)}


class Evaluator(Protocol):
    def submit(self, matches: list[Match]) -> None:
        """Start one iteration's evaluation (its matches all share `iteration`)."""

    def poll(self, wait: bool = False) -> list[Evaluation]:
        """Evaluations finished since the last call, oldest iteration first; `wait`: block until
        every submitted one is finished."""

    def pending(self) -> list[int]:
        """Iterations submitted and not finished."""

    def counters(self) -> dict[str, float]: ...
    def close(self) -> None: ...


class LocalEvaluator:
    """Plays the matches at `submit`, in this process, climbing the ladder: a rung is played only
    if the learner scored at least 1/2 against the rung below it in this evaluation (else it
    counts 0 in the ladder score and its rates are NaN). On the learner's critical path that
    spares the costly searching players while they are out of reach; evaluation actors, off
    that path, play every rung."""

    def __init__(self, config: PpoShogiConfig, device: Any = "cpu"):
        self.config, self.device = config, device
        self.done: list[Evaluation] = []

    def submit(self, matches: list[Match]) -> None:
        import time

        started = time.perf_counter()
        evaluation = Evaluation(matches[0].iteration)
        below: MatchResult | None = None
        for match in matches:
            rung = match.opponent != SNAPSHOT
            if rung and below is not None and score_rate(below) < 0.5:
                continue
            result = play(match, self.config, self.device)
            below = result if rung else below
            evaluation.results[match.opponent] = result
            evaluation.labels[match.opponent] = match.opponent_label or match.opponent
        evaluation.seconds = time.perf_counter() - started
        self.done.append(evaluation)

    def poll(self, wait: bool = False) -> list[Evaluation]:
        done, self.done = self.done, []
        return done

    def pending(self) -> list[int]:
        return []

    def counters(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass


EvaluatorFactory = Callable[[PpoShogiConfig, Any], Evaluator]   # (config, context) -> evaluator
EVALUATORS: dict[str, EvaluatorFactory] = {}


def register_evaluator(collector: str, factory: EvaluatorFactory) -> None:
    """With `collector: name` (and eval_actors > 0), evaluations go to `factory(config, context)`."""
    EVALUATORS[collector] = factory


def make_evaluator(config: PpoShogiConfig, context: Any) -> Evaluator:
    if config.eval_actors > 0 and config.collector in EVALUATORS:
        return EVALUATORS[config.collector](config, context)
    return LocalEvaluator(config, context.device)
