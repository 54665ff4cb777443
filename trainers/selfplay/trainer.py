"""`ppo-shogi`: PPO self-play for shogi. One iteration = collect at least `rollout_plies` learner
moves of finished self-play games from the experience source, then one PPO update.

    step()      weights -> source.collect(...) -> ExperienceBatch (per-player GAE done there)
                -> this rank's shard -> ppo_update -> every `snapshot_every`: a pool snapshot
    evaluate()  every `eval_every` iterations (and the first and the last): games against
                uniform random, capture-first and the latest snapshot; Elo table updated and
                written (elo.json, atomically); `win_rate_random` is the early-stopping metric
                (between evaluations the last measured value is repeated)
    final       on the best state: `final_eval_games` games against random and capture-first

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
material shaping (runner.py); benchmarks/results/selfplay_learning.json.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from trainers.base import Trainer, make_scheduler
from trainers.selfplay.agents import EloTable, NetworkAgent, OpponentPool, capture_first_agent, random_agent
from trainers.selfplay.config import PpoShogiConfig
from trainers.selfplay.network import ActorCritic, make_policy_fn
from trainers.selfplay.ppo import ppo_update
from trainers.selfplay.runner import ExperienceBatch, MatchResult, play_match
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
        self.elo.add("capture_first", 0.0)
        # the pool starts with the initial policy: early snapshot games are against a near-random player
        self.pool = OpponentPool(config.pool_size, self.network.state_dict())
        self.add_snapshot(0)
        self.evaluation: dict[str, float] = {}    # the last evaluation's metrics
        self.totals = {"plies": 0, "learner_plies": 0, "games": 0, "batches": 0}

    def seed_for(self, purpose: int, iteration: int | None = None) -> int:
        iteration = self.iteration if iteration is None else iteration
        return int(np.random.SeedSequence([self.config.seed, iteration, purpose]).generate_state(1)[0])

    def weights(self) -> dict[str, torch.Tensor]:
        return {key: value.detach().cpu() for key, value in self.network.state_dict().items()}

    def add_snapshot(self, iteration: int) -> None:
        name = f"iteration_{iteration}"
        self.pool.add(name, self.weights())
        self.elo.add(name, self.elo.ratings[LEARNER])

    def teardown(self) -> None:
        """Close the source after the loop (a Ray source stops its actors)."""
        self.source.close()

    # ----- one iteration: collect, update
    def step(self) -> dict[str, float]:
        config, context = self.config, self.context
        opponent = self.pool.sample(np.random.default_rng(self.seed_for(OPPONENT)))
        # a per-rank source (Ray actors owned by this rank) plays this rank's share of the rollout;
        # otherwise every rank receives the same experience and trains on its shard of it
        own_share = self.source.per_rank and context.world_size > 1
        plies = -(-config.rollout_plies // context.world_size) if own_share else config.rollout_plies
        batches = self.source.collect(self.weights(), plies, seed=self.seed_for(COLLECT),
                                      opponent=None if opponent is None else opponent[1])
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
        }

    # ----- evaluation
    def evaluate(self) -> dict[str, float]:
        done = self.iteration + 1
        if not self.evaluation or done % self.config.eval_every == 0 or done == self.config.max_iterations:
            self.evaluation = self.run_evaluation(done)
        return dict(self.evaluation)

    def agent(self, network: torch.nn.Module) -> NetworkAgent:
        return NetworkAgent(make_policy_fn(network, self.device, self.config.mixed_precision), self.config.eval_greedy)

    def run_evaluation(self, iteration: int) -> dict[str, float]:
        config = self.config
        started = time.perf_counter()
        learner = self.agent(self.network)
        # (metric suffix, Elo name, agent)
        opponents: list[tuple[str, str, Any]] = [("random", "random", random_agent),
                                                 ("capture", "capture_first", capture_first_agent)]
        latest = self.pool.latest()
        if latest is not None:
            snapshot = ActorCritic(config.blocks, config.channels).to(self.device)
            snapshot.load_state_dict(latest[1])
            opponents.append(("snapshot", latest[0], self.agent(snapshot)))
        metrics = match_metrics(None, "snapshot")  # NaN until the pool holds a snapshot
        for number, (suffix, name, opponent) in enumerate(opponents):
            result = play_match(learner, opponent, config.eval_games, config.ply_limit,
                                self.seed_for(EVALUATION * 100 + number, iteration), config.start_sfen)
            for score in result.scores:
                self.elo.update(LEARNER, name, score)
            metrics.update(match_metrics(result, suffix))
        self.elo.record(iteration)
        metrics["elo"] = self.elo.ratings[LEARNER]
        metrics["elo_capture_first"] = self.elo.ratings["capture_first"]
        metrics["eval_seconds"] = time.perf_counter() - started
        if self.context.rank == 0 and self.context.output_dir is not None:
            self.elo.write(self.context.output_dir / "elo.json")
        return metrics

    def final_metrics(self) -> dict[str, float]:
        """The best state against random and capture-first, `final_eval_games` games each."""
        games = self.config.final_eval_games
        if games == 0:
            return {}
        learner = self.agent(self.network)
        metrics: dict[str, float] = {}
        for number, (name, opponent) in enumerate((("random", random_agent), ("capture", capture_first_agent))):
            result = play_match(learner, opponent, games, self.config.ply_limit, self.seed_for(FINAL * 100 + number, 0),
                                self.config.start_sfen)
            metrics.update({f"final_{key}": value for key, value in match_metrics(result, name).items()})
        return metrics

    # ----- state
    def extra_state(self) -> dict[str, Any]:
        return {"source": self.source.state_dict(), "pool": self.pool.state_dict(), "elo": self.elo.state_dict(),
                "evaluation": dict(self.evaluation), "totals": dict(self.totals)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.source.load_state_dict(state["source"])
        self.pool.load_state_dict(state["pool"])
        self.elo.load_state_dict(state["elo"])
        self.evaluation = dict(state["evaluation"])
        self.totals = {key: int(value) for key, value in state["totals"].items()}

    def save_figures(self) -> None:
        super().save_figures()
        if self.context.output_dir is None or not self.elo.history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 4))
        names = sorted({name for row in self.elo.history for name in row if name != "iteration"})
        for name in names:
            rows = [row for row in self.elo.history if name in row]
            axis.plot([row["iteration"] for row in rows], [row[name] for row in rows], marker=".", label=name)
        axis.set_xlabel("iteration")
        axis.set_ylabel("Elo (uniform random = 0)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        self.context.log_figure("elo", figure, self.iteration)


def match_metrics(result: MatchResult | None, name: str) -> dict[str, float]:
    if result is None:
        return dict.fromkeys((f"win_rate_{name}", f"loss_rate_{name}", f"draw_rate_{name}", f"mean_plies_{name}"),
                             float("nan"))
    return {f"win_rate_{name}": result.win_rate, f"loss_rate_{name}": result.loss_rate,
            f"draw_rate_{name}": result.draws / max(1, result.games),
            f"mean_plies_{name}": result.plies / max(1, result.games)}

