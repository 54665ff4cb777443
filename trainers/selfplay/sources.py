"""Where the learner's experience comes from: an `ExperienceSource`.

The trainer asks its source for at least `plies` learner moves from finished games, played with
the current weights, and gets a list of `ExperienceBatch` back; it never knows where the games
ran. The default source plays in this process; another (Ray actors, in distributed/selfplay.py)
registers itself here with `register_source(name, factory)` and is chosen by the config's
`collector` (add the name to its Literal).

A source keeps its games going between calls (see runner.py); `state_dict` holds them as plain
data (moves and the learner's decisions so far), so that a resumed run continues the same games.

`counters()` are reported with the trainer's metrics as `source_*` (batches, plies, and for a
remote source duplicates, losses and restarts). `per_rank` says whether, with several learners,
each rank's source already returns that rank's own experience (the trainer then trains on all
of it) or every rank receives the same experience (the trainer takes its shard).
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import torch

from trainers.selfplay.config import PpoShogiConfig
from trainers.selfplay.network import ActorCritic, PolicyFn, make_policy_fn
from trainers.selfplay.runner import ExperienceBatch, GameSlot, new_slots, play_batch


class ExperienceSource(Protocol):
    batches_received: int      # batches handed to the learner so far
    plies_received: int        # plies (both sides) in them
    per_rank: bool             # True: each learner rank gets its own experience (no sharding)

    def collect(self, weights: dict[str, torch.Tensor], plies: int, *, seed: int,
                opponent: dict[str, torch.Tensor] | None = None) -> list[ExperienceBatch]:
        """At least `plies` learner moves from finished games, played with `weights` (and
        `opponent` for games against a snapshot)."""
        ...

    def counters(self) -> dict[str, float]:
        """Cumulative counters, reported as `source_<name>` metrics."""
        ...

    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class InProcessSource:
    """The lockstep runner in this process: K games, weights loaded before every batch."""

    per_rank = False   # seeded per iteration: every rank plays the same games, each takes its shard

    def __init__(self, config: PpoShogiConfig, device: torch.device | str = "cpu", compile: bool = False):
        """`compile`: run the forwards through `torch.compile` (the learner's source passes
        `config.compile`; Ray self-play actors build this class without it)."""
        self.config = config
        self.device = torch.device(device)
        self.network = ActorCritic(config.blocks, config.channels).to(self.device).eval()
        self.opponent = ActorCritic(config.blocks, config.channels).to(self.device).eval()
        # weights are loaded into the plain modules above; the forwards may be compiled views of them
        self.forwards = ((torch.compile(self.network), torch.compile(self.opponent)) if compile
                         else (self.network, self.opponent))
        self.slots: list[GameSlot] = new_slots(config.games_per_batch, config.ply_limit, config.start_sfen)
        self.batches_received = 0
        self.plies_received = 0

    def collect(self, weights: dict[str, torch.Tensor], plies: int, *, seed: int,
                opponent: dict[str, torch.Tensor] | None = None) -> list[ExperienceBatch]:
        config = self.config
        policy_fn, opponent_fn = self.policies(weights, opponent)
        batch = play_batch(policy_fn, self.slots, plies, gamma=config.gamma,
                           gae_lambda=config.gae_lambda, seed=seed, snapshot_prob=config.snapshot_prob,
                           opponent_fn=opponent_fn, ply_limit=config.ply_limit,
                           shaping=config.material_shaping)
        batch.source, batch.sequence = "in_process", self.batches_received
        self.batches_received += 1
        self.plies_received += int(batch.stats["plies"])
        return [batch]

    def policies(self, weights: dict[str, torch.Tensor] | None, opponent: dict[str, torch.Tensor] | None
                 ) -> tuple[PolicyFn, PolicyFn | None]:
        """The learner's and the snapshot's policy functions (None: no snapshot games). A source
        whose network runs elsewhere (an inference server) overrides this."""
        amp = self.config.mixed_precision
        self.network.load_state_dict(weights)
        learner = make_policy_fn(self.forwards[0], self.device, amp)
        if opponent is None:
            return learner, None
        self.opponent.load_state_dict(opponent)
        return learner, make_policy_fn(self.forwards[1], self.device, amp)

    def counters(self) -> dict[str, float]:
        return {"batches": float(self.batches_received), "plies": float(self.plies_received)}

    def state_dict(self) -> dict[str, Any]:
        return {"slots": [slot.state() for slot in self.slots], "batches_received": self.batches_received,
                "plies_received": self.plies_received}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.slots = [GameSlot.from_state(slot, self.config.ply_limit) for slot in state["slots"]]
        self.batches_received = int(state["batches_received"])
        self.plies_received = int(state["plies_received"])

    def close(self) -> None:
        pass


SourceFactory = Callable[[PpoShogiConfig, Any], ExperienceSource]   # (config, context) -> source

SOURCES: dict[str, SourceFactory] = {
    "in_process": lambda config, context: InProcessSource(config, context.device, compile=config.compile),
}


def register_source(name: str, factory: SourceFactory) -> None:
    """Make `collector: name` build its source with `factory(config, context)`."""
    SOURCES[name] = factory


def make_source(config: PpoShogiConfig, context: Any) -> ExperienceSource:
    try:
        factory = SOURCES[config.collector]
    except KeyError:
        raise ValueError(f"collector {config.collector!r} is not registered; registered: "
                         f"{', '.join(sorted(SOURCES))}") from None
    return factory(config, context)
