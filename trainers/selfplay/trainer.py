"""`ppo-shogi`: PPO self-play for shogi. One iteration = collect at least `rollout_plies` learner
moves of finished self-play games from the experience source, then one PPO update.

    step()      weights -> source.collect(...) -> ExperienceBatch (per-player GAE done there)
                -> this rank's shard -> ppo_update -> every `snapshot_every`: a pool snapshot
    evaluate()  every `eval_every` iterations (and the first and the last): this iteration's
                weights are submitted to the evaluator (evaluation.py): matches against the
                ladder (ladder.py) and the latest snapshot, in this process or on evaluation
                actors; finished evaluations update the Elo table (elo.json, written
                atomically) and are reported tagged with `eval_iteration`; `ladder_score` is
                the selection metric (between evaluations the last value is repeated)
    selection   the best state is the weights that played the best evaluation (kept from the
                moment they were submitted), not the weights of the iteration that received it
    final       on the selected state: `final_eval_games` games against every rung; the
                checkpoint keeps the last iteration's weights too (`extra.last`)

The learner's model goes through `context.prepare_model` (DDP with several workers); with
`compile` the update's forward goes through `torch.compile` of that (`train_model`), while
`model`/`network` stay the plain modules, so checkpoints keep the plain keys. With
`mixed_precision` on CUDA the update's, self-play's and evaluation's forwards run under bf16
autocast (ppo.py, network.py). With the
in-process source every rank receives the same experience (seeded per iteration) and trains on
its shard; with Ray actors (`source.per_rank`) each rank's actors play that rank's share of the
rollout and the rank trains on all of it. Either way the ranks' gradients average over the whole
batch. Seeds come from (seed, iteration, purpose), never from a generator carried along, so a
resumed run replays the same iterations; the checkpoint holds model, optimiser, schedule,
counters, the games in progress (moves and the learner's decisions so far), the opponent pool,
the Elo table and the RNG state (the base's).
The pool starts with the initial weights, so early snapshot games face a near-random player.

Default budget, 2 CPU cores: 150 iterations of >= 4,096 learner moves with a 3 x 32 network, about
6-12 s an iteration (2 threads), so at most about 30 minutes. Measured (benchmarks/
selfplay_learning.py, 150 iterations in 21 min on 2 shared cores): the best state won 98 of 100
games against uniform random and 85 of 100 against capture-first (1 lost), with the default
material shaping (runner.py); benchmarks/results/selfplay_learning.json (before the ladder, with
selection by win_rate_random).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from trainers.base import Trainer, make_scheduler
from trainers.selfplay.agents import EloTable, OpponentPool, draw_elo_history
from trainers.selfplay.evaluation import (SNAPSHOT, SUFFIX, Evaluation, Match, ladder_score, make_evaluator,
                                          match_metrics, play)
from trainers.selfplay.config import PpoShogiConfig
from trainers.selfplay.network import ActorCritic
from trainers.selfplay.ppo import ppo_update
from trainers.selfplay.runner import ExperienceBatch
from trainers.selfplay.sources import make_source

# what a seed is for: seeds are (config.seed, iteration, purpose)
COLLECT, MINIBATCHES, OPPONENT, EVALUATION, FINAL = range(5)
LEARNER = "learner"


class PpoShogiTrainer(Trainer):
    algorithm = "ppo-shogi"
    config_class = PpoShogiConfig
    config: PpoShogiConfig

    def setup(self) -> None:
        config = self.config
        self.network = ActorCritic(config.blocks, config.channels)
        self.model = self.context.prepare_model(self.network)
        self.network = getattr(self.model, "module", self.model)
        # the update's forward; `model` and `network` keep the plain state-dict keys (no `_orig_mod.`)
        self.train_model = torch.compile(self.model) if config.compile else self.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, eps=1e-5)
        self.scheduler = make_scheduler(self.optimizer, config.schedule, config.max_iterations,
                                        **config.schedule_kwargs)
        self.source = make_source(config, self.context)
        self.elo = EloTable(config.elo_k)
        self.elo.add(LEARNER, 0.0)
        for name in config.ladder:   # the ladder, rated by the games against the learner (random = 0)
            self.elo.add(name, 0.0)
        # the pool starts with the initial policy: early snapshot games are against a near-random player
        self.pool = OpponentPool(config.pool_size, self.network.state_dict())
        self.add_snapshot(0)
        self.evaluation: dict[str, float] = {}    # the last evaluation's metrics
        self.evaluator = make_evaluator(config, self.context)
        self.played: dict[int, dict[str, torch.Tensor]] = {}   # iteration -> weights under evaluation
        self.selected: dict[str, Any] | None = None   # the best evaluation so far: iteration, score, weights
        self.last_weights: dict[str, Any] | None = None   # after training: the last iteration's weights
        self.deferred = False   # an evaluation was due while the previous one was still being played
        self.totals = {"plies": 0, "learner_plies": 0, "games": 0, "batches": 0}

    def seed_for(self, purpose: int, iteration: int | None = None) -> int:
        iteration = self.iteration if iteration is None else iteration
        return int(np.random.SeedSequence([self.config.seed, iteration, purpose]).generate_state(1)[0])

    def weights(self) -> dict[str, torch.Tensor]:
        """The learner's weights on the CPU (on a CPU learner they share storage with it)."""
        return {key: value.detach().cpu() for key, value in self.network.state_dict().items()}

    def frozen_weights(self) -> dict[str, torch.Tensor]:
        """A copy that later updates leave alone."""
        return {key: value.detach().to("cpu", copy=True) for key, value in self.network.state_dict().items()}

    def add_snapshot(self, iteration: int) -> None:
        name = f"iteration_{iteration}"
        self.pool.add(name, self.weights())
        self.elo.add(name, self.elo.ratings[LEARNER])

    def teardown(self) -> None:
        """Close the source and the evaluator after the loop (a Ray source stops its actors)."""
        self.source.close()
        self.evaluator.close()

    # ----- one iteration: collect, update
    def step(self) -> dict[str, float]:
        config, context = self.config, self.context
        opponent = self.pool.sample(np.random.default_rng(self.seed_for(OPPONENT)))
        # a per-rank source (Ray actors owned by this rank) plays this rank's share of the rollout;
        # otherwise every rank receives the same experience and trains on its shard of it
        own_share = self.source.per_rank and context.world_size > 1
        plies = -(-config.rollout_plies // context.world_size) if own_share else config.rollout_plies
        started = time.perf_counter()
        batches = self.source.collect(self.weights(), plies, seed=self.seed_for(COLLECT),
                                      opponent=None if opponent is None else opponent[1])
        collect_seconds = time.perf_counter() - started
        batch = ExperienceBatch.concat(batches)
        shard = batch.shard(context.rank, context.world_size) if context.world_size > 1 and not own_share else batch
        generator = torch.Generator().manual_seed(self.seed_for(MINIBATCHES))
        started = time.perf_counter()
        metrics = ppo_update(self.train_model, self.optimizer, shard, config, generator, self.device, context.average)
        # the learner's part, the one split over ranks (ppo_update ends in a host sync: complete)
        metrics["update_seconds"] = time.perf_counter() - started
        if (self.iteration + 1) % config.snapshot_every == 0:
            self.add_snapshot(self.iteration + 1)
        stats = batch.stats
        self.totals["plies"] += int(stats["plies"])
        self.totals["learner_plies"] += len(batch)
        self.totals["games"] += int(stats["games"])
        self.totals["batches"] += len(batches)
        games = stats["games"]
        return {
            **metrics,
            # in-process: the learner playing; with Ray actors: the learner waiting for their batches
            "collect_seconds": collect_seconds,
            "plies": stats["plies"],
            "learner_plies": float(len(batch)),
            "games": games,
            "mean_game_plies": stats["game_plies"] / games if games else float("nan"),
            "decisive_rate": stats["decisive"] / games if games else float("nan"),
            "truncation_rate": stats["truncated"] / games if games else float("nan"),
            "snapshot_win_rate": (stats["snapshot_wins"] / stats["snapshot_games"]
                                  if stats["snapshot_games"] else float("nan")),
            "collect_plies_per_second": stats["plies"] / max(stats["seconds"], 1e-9),
            "network_fraction": stats["network_seconds"] / max(stats["seconds"], 1e-9),
            "total_plies": float(self.totals["plies"]),
            "pool_size": float(len(self.pool)),
            # received / duplicate / lost / restarts for a remote source: nothing counted twice or dropped silently
            **{f"source_{name}": float(value) for name, value in self.source.counters().items()},
            **{name: float(value) for name, value in self.evaluator.counters().items()},
        }

    # ----- evaluation
    def evaluate(self) -> dict[str, float]:
        """Every `eval_every` iterations (and the first and the last) this iteration's weights are
        submitted for evaluation; finished evaluations are taken in, at once in-process, later
        with evaluation actors. The metrics are the latest finished evaluation's, tagged with
        `eval_iteration` (the iteration whose weights played); between evaluations they repeat.
        With evaluation actors at most one evaluation is in flight besides the last one's, so
        `eval_every` is the shortest gap between evaluations, not a promise."""
        done, config = self.iteration + 1, self.config
        last = done == config.max_iterations
        due = not self.evaluation or done % config.eval_every == 0 or self.deferred
        finished = self.evaluator.poll()
        # evaluation actors that fall behind do not pile up a queue: a due evaluation waits until the
        # previous one is in (it is then submitted with the weights of that later iteration)
        if last or (due and not self.evaluator.pending()):
            self.submit_evaluation(done)
            self.deferred = False
        elif due:
            self.deferred = True
        # the first evaluation and the last are waited for: selection needs a value from the
        # start, and every evaluation submitted must be counted before the run ends
        finished += self.evaluator.poll(wait=last or not (self.evaluation or finished))
        for evaluation in finished:
            self.take_in(evaluation)
        metrics = dict(self.evaluation)
        metrics["eval_pending"] = float(len(self.evaluator.pending()))
        return metrics

    def matches(self, iteration: int, weights: dict[str, torch.Tensor], games: int, purpose: int) -> list[Match]:
        """One match per ladder rung (and against the pool's latest snapshot for evaluations)."""
        config = self.config
        matches = [Match(iteration, name, games, self.seed_for(purpose * 100 + number, iteration), weights)
                   for number, name in enumerate(config.ladder)]
        latest = self.pool.latest()
        if purpose == EVALUATION and latest is not None:
            matches.append(Match(iteration, SNAPSHOT, games, self.seed_for(purpose * 100 + 99, iteration), weights,
                                 latest[1], latest[0]))
        return matches

    def submit_evaluation(self, iteration: int) -> None:
        weights = self.frozen_weights()
        self.played[iteration] = weights   # kept until its result is in (and while it is the selected one)
        self.evaluator.submit(self.matches(iteration, weights, self.config.eval_games, EVALUATION))

    def take_in(self, evaluation: Evaluation) -> None:
        """An evaluation's results: the Elo table, the metrics, and selection by ladder score."""
        config, iteration = self.config, evaluation.iteration
        metrics = match_metrics(None, SUFFIX[SNAPSHOT])  # NaN until the pool holds a snapshot
        for name, result in evaluation.results.items():
            for score in result.scores:
                self.elo.update(LEARNER, evaluation.labels[name], score)
            metrics.update(match_metrics(result, SUFFIX[name]))
        self.elo.record(iteration)
        metrics["ladder_score"] = ladder_score(evaluation.results, config.ladder)
        metrics["elo"] = self.elo.ratings[LEARNER]
        for name in config.ladder:
            metrics[f"elo_{name}"] = self.elo.ratings[name]
        metrics["eval_iteration"] = float(iteration)
        metrics["eval_seconds"] = evaluation.seconds
        weights = self.played.pop(iteration, None)
        score = metrics[config.metric] if config.metric in metrics else None
        if score is not None and weights is not None and self.improves_on_selected(score):
            self.selected = {"iteration": iteration, "score": float(score), "weights": weights,
                             "metrics": dict(metrics)}
        self.evaluation = metrics
        if self.context.rank == 0 and self.context.output_dir is not None:
            self.elo.write(self.context.output_dir / "elo.json")

    def improves_on_selected(self, score: float) -> bool:
        if self.selected is None:
            return True
        best = self.selected["score"]
        return score < best if self.config.mode == "min" else score > best

    def run_iteration(self) -> tuple[dict[str, float], bool]:
        """The base iteration; the best state it keeps is the weights that played the selected
        evaluation (with evaluation actors that is an earlier iteration's than the current)."""
        before = None if self.selected is None else self.selected["iteration"]
        metrics, stop = super().run_iteration()
        if self.selected is not None:
            if self.selected["iteration"] != before or self.early_stopping.best_iteration != self.selected["iteration"] - 1:
                self.best_state = {key: value.clone() for key, value in self.selected["weights"].items()}
                self.best_metrics = dict(self.selected.get("metrics", self.best_metrics))
            if self.selected["iteration"] != before:
                self.early_stopping.bad_iterations = 0
            stopping = self.early_stopping
            stopping.best, stopping.best_iteration = self.selected["score"], self.selected["iteration"] - 1
        return metrics, stop

    def _finish(self, metrics, stopped_early, seconds):
        """Keep the last iteration's weights beside the selected ones (the checkpoint holds both)."""
        self.last_weights = {"iteration": self.iteration, "weights": self.frozen_weights()}
        return super()._finish(metrics, stopped_early, seconds)

    def final_metrics(self) -> dict[str, float]:
        """The selected state against every ladder rung, `final_eval_games` games each (in the
        learner, after training: nothing else is running then)."""
        games = self.config.final_eval_games
        held = self.early_stopping.best_iteration + 1 if self.best_state else self.iteration
        metrics: dict[str, float] = {"final_weights_iteration": float(held)}
        if games == 0:
            return metrics
        results = {match.opponent: play(match, self.config, self.device)
                   for match in self.matches(held, self.weights(), games, FINAL)}
        for name, result in results.items():
            metrics.update({f"final_{key}": value for key, value in match_metrics(result, SUFFIX[name]).items()})
        metrics["final_ladder_score"] = ladder_score(results, self.config.ladder)
        return metrics

    # ----- state
    def extra_state(self) -> dict[str, Any]:
        """Besides the sources' games, pool, Elo and counters: which iteration's weights the
        model holds (`weights_iteration`: the selected one after training), the last iteration's
        weights once training is over, and evaluations still being played (replayed on resume)."""
        held = self.early_stopping.best_iteration + 1 if self.finished and self.best_state else self.iteration
        selected = None if self.selected is None else {key: self.selected[key] for key in ("iteration", "score")}
        return {"source": self.source.state_dict(), "pool": self.pool.state_dict(), "elo": self.elo.state_dict(),
                "evaluation": dict(self.evaluation), "totals": dict(self.totals),
                "weights_iteration": held, "selected": selected, "last": self.last_weights, "deferred": self.deferred,
                "pending_evaluations": {it: self.played[it] for it in self.evaluator.pending() if it in self.played}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.source.load_state_dict(state["source"])
        self.pool.load_state_dict(state["pool"])
        self.elo.load_state_dict(state["elo"])
        self.evaluation = dict(state["evaluation"])
        self.totals = {key: int(value) for key, value in state["totals"].items()}
        self.last_weights = state.get("last")
        self.deferred = bool(state.get("deferred", False))
        if state.get("selected") and self.best_state:
            self.selected = {**state["selected"], "weights": self.best_state, "metrics": dict(self.best_metrics)}
        for iteration, weights in sorted(state.get("pending_evaluations", {}).items()):
            self.played[int(iteration)] = weights
            self.evaluator.submit(self.matches(int(iteration), weights, self.config.eval_games, EVALUATION))

    def save_figures(self) -> None:
        super().save_figures()
        if self.context.output_dir is None or not self.elo.history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 4))
        draw_elo_history(axis, self.elo.history)
        self.context.log_figure("elo", figure, self.iteration)

