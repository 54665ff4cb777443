"""Where the learner's experience comes from: an `ExperienceSource`.

The trainer asks its source for at least `plies` learner moves from finished games, played with
the current weights, and gets a list of `ExperienceBatch` back; it never knows where the games
ran. The default source plays in this process; another (Ray actors, in distributed/selfplay.py)
registers itself here with `register_source(name, factory)` and is chosen by the config's
`collector` (add the name to its Literal).

A source keeps its games going between calls (see runner.py); `state_dict` holds them as plain
data (moves and the learner's decisions so far), so that a resumed run continues the same games.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import torch

from trainers.selfplay.config import PpoShogiConfig
from trainers.selfplay.network import ActorCritic, make_policy_fn
from trainers.selfplay.runner import ExperienceBatch, GameSlot, new_slots, play_batch


class ExperienceSource(Protocol):
    batches_received: int      # batches handed to the learner so far
    plies_received: int        # plies (both sides) in them

    def collect(self, weights: dict[str, torch.Tensor], plies: int, *, seed: int,
                opponent: dict[str, torch.Tensor] | None = None) -> list[ExperienceBatch]:
        """At least `plies` learner moves from finished games, played with `weights` (and
        `opponent` for games against a snapshot)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class InProcessSource:
    """The lockstep runner in this process: K games, weights loaded before every batch."""

    def __init__(self, config: PpoShogiConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.network = ActorCritic(config.blocks, config.channels).to(self.device).eval()
        self.opponent = ActorCritic(config.blocks, config.channels).to(self.device).eval()
        self.slots: list[GameSlot] = new_slots(config.games_per_batch, config.ply_limit)
        self.batches_received = 0
        self.plies_received = 0

    def collect(self, weights: dict[str, torch.Tensor], plies: int, *, seed: int,
                opponent: dict[str, torch.Tensor] | None = None) -> list[ExperienceBatch]:
        config = self.config
        self.network.load_state_dict(weights)
        opponent_fn = None
        if opponent is not None:
            self.opponent.load_state_dict(opponent)
            opponent_fn = make_policy_fn(self.opponent, self.device)
        batch = play_batch(make_policy_fn(self.network, self.device), self.slots, plies, gamma=config.gamma,
                           gae_lambda=config.gae_lambda, seed=seed, snapshot_prob=config.snapshot_prob,
                           opponent_fn=opponent_fn, ply_limit=config.ply_limit)
        batch.source, batch.sequence = "in_process", self.batches_received
        self.batches_received += 1
        self.plies_received += int(batch.stats["plies"])
        return [batch]

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
    "in_process": lambda config, context: InProcessSource(config, context.device),
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
