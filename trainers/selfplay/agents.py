"""Players for evaluation games, the pool of past snapshots, and the Elo table.

An agent is a callable `agent(games, rng) -> moves`: one legal move for each game given, all
the games where it is to move at this ply (so a network agent makes one batched forward).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cshogi
import numpy as np
import torch

from trainers.checkpoint import write_json_atomic
from trainers.selfplay.game import Game, encode_batch, feature_buffer, mask_buffer
from trainers.selfplay.network import PolicyFn
from trainers.selfplay.runner import sample_legal

# what capture-first prefers to take (a promoted piece is worth more on the board)
PIECE_VALUES = {
    cshogi.PAWN: 1, cshogi.LANCE: 3, cshogi.KNIGHT: 4, cshogi.SILVER: 5, cshogi.GOLD: 6, cshogi.BISHOP: 8,
    cshogi.ROOK: 10, cshogi.PROM_PAWN: 6, cshogi.PROM_LANCE: 6, cshogi.PROM_KNIGHT: 6, cshogi.PROM_SILVER: 6,
    cshogi.PROM_BISHOP: 10, cshogi.PROM_ROOK: 12,
}


def random_agent(games: list[Game], rng: np.random.Generator) -> list[int]:
    """Uniform over the legal moves."""
    return [game.legal[rng.integers(len(game.legal))] for game in games]


def capture_first_agent(games: list[Game], rng: np.random.Generator) -> list[int]:
    """Take the most valuable piece it can (ties at random); with no capture, a random move."""
    moves = []
    for game in games:
        values = [PIECE_VALUES.get(cshogi.move_cap(move), 0) for move in game.legal]
        best = max(values)
        candidates = [move for move, value in zip(game.legal, values) if value == best]
        moves.append(candidates[rng.integers(len(candidates))])
    return moves


class NetworkAgent:
    """A policy network as a player: one batched forward per call; samples (or takes the most
    probable move when `greedy`) among the legal moves."""

    def __init__(self, policy_fn: PolicyFn, greedy: bool = False):
        self.policy_fn, self.greedy = policy_fn, greedy
        self.features, self.masks = feature_buffer(0), mask_buffer(0)

    def __call__(self, games: list[Game], rng: np.random.Generator) -> list[int]:
        n = len(games)
        if len(self.features) < n:
            self.features, self.masks = feature_buffer(n), mask_buffer(n)
        labels, counts = encode_batch(games, self.features, self.masks)
        logits, _ = self.policy_fn(self.features[:n], self.masks[:n])
        if self.greedy:
            starts = np.cumsum(counts) - counts
            picks = [int(np.argmax(logits[i, labels[a:a + c]].numpy())) for i, (a, c) in enumerate(zip(starts, counts))]
        else:
            picks, _, _ = sample_legal(logits.numpy(), labels, counts, rng)
        return [game.legal[pick] for game, pick in zip(games, picks)]


# ---------------------------------------------------------------- the opponent pool
class OpponentPool:
    """Frozen snapshots of past weights, oldest dropped first; plain tensors (checkpointable)."""

    def __init__(self, size: int, network: dict[str, torch.Tensor] | None = None):
        """`network`: a state dict of the learner; every snapshot must have its keys and shapes."""
        self.size = size
        self.shapes = {key: tuple(value.shape) for key, value in network.items()} if network else None
        self.names: list[str] = []
        self.weights: list[dict[str, torch.Tensor]] = []

    def check(self, name: str, weights: dict[str, torch.Tensor]) -> None:
        """A snapshot of another network shape (blocks/channels) is refused with its name."""
        if self.shapes is None:
            return
        shapes = {key: tuple(value.shape) for key, value in weights.items()}
        if shapes.keys() != self.shapes.keys():
            missing, extra = sorted(self.shapes.keys() - shapes.keys()), sorted(shapes.keys() - self.shapes.keys())
            raise ValueError(f"opponent-pool snapshot {name!r} is not this network: missing {missing[:3]}, "
                             f"unexpected {extra[:3]} (another blocks/channels setting?)")
        for key, shape in shapes.items():
            if shape != self.shapes[key]:
                raise ValueError(f"opponent-pool snapshot {name!r} does not fit this network: {key} has shape "
                                 f"{shape}, the network {self.shapes[key]} (another blocks/channels setting?)")

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: str, weights: dict[str, torch.Tensor]) -> None:
        self.check(name, weights)
        self.names.append(name)
        self.weights.append({key: value.detach().cpu().clone() for key, value in weights.items()})
        while len(self.names) > self.size:
            self.names.pop(0)
            self.weights.pop(0)

    def sample(self, rng: np.random.Generator) -> tuple[str, dict[str, torch.Tensor]] | None:
        if not self.names:
            return None
        index = int(rng.integers(len(self.names)))
        return self.names[index], self.weights[index]

    def latest(self) -> tuple[str, dict[str, torch.Tensor]] | None:
        return (self.names[-1], self.weights[-1]) if self.names else None

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "weights": list(self.weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, weights in zip(state["names"], state["weights"]):
            self.check(name, weights)
        self.names, self.weights = list(state["names"]), list(state["weights"])


# ---------------------------------------------------------------- Elo
class EloTable:
    """Elo ratings updated game by game; `anchor` (uniform random) stays at 0 to fix the scale."""

    def __init__(self, k: float = 16.0, anchor: str = "random"):
        self.k, self.anchor = k, anchor
        self.ratings: dict[str, float] = {anchor: 0.0}
        self.games: dict[str, int] = {anchor: 0}
        self.history: list[dict[str, float]] = []

    @staticmethod
    def expected(rating: float, other: float) -> float:
        """The expected score of a player rated `rating` against one rated `other`."""
        return 1.0 / (1.0 + 10.0 ** ((other - rating) / 400.0))

    def add(self, name: str, rating: float) -> None:
        self.ratings.setdefault(name, float(rating))
        self.games.setdefault(name, 0)

    def update(self, player: str, opponent: str, score: float) -> None:
        """One game: `score` is the player's (1 win, 0.5 draw, 0 loss)."""
        self.add(player, 0.0)
        self.add(opponent, 0.0)
        delta = self.k * (score - self.expected(self.ratings[player], self.ratings[opponent]))
        if player != self.anchor:
            self.ratings[player] += delta
        if opponent != self.anchor:
            self.ratings[opponent] -= delta
        self.games[player] += 1
        self.games[opponent] += 1

    def record(self, iteration: int) -> None:
        self.history.append({"iteration": float(iteration), **self.ratings})

    def state_dict(self) -> dict[str, Any]:
        return {"ratings": dict(self.ratings), "games": dict(self.games), "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ratings, self.games = dict(state["ratings"]), dict(state["games"])
        self.history = list(state["history"])

    def write(self, path: str | Path) -> Path:
        """The table and its history as JSON, written atomically (temporary file, then rename)."""
        return write_json_atomic({"k": self.k, "anchor": self.anchor, **self.state_dict()}, path)
