"""Players for evaluation games, the pool of past snapshots, and the Elo table.

An agent is a callable `agent(games, rng) -> moves`: one legal move for each game given, all
the games where it is to move at this ply (so a network agent makes one batched forward).
The fixed players (random ... two-ply minimax) are the ladder, in ladder.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cshogi
import numpy as np
import torch

from trainers.checkpoint import write_json_atomic
from trainers.selfplay.game import (Game, encode_batch, feature_buffer, mask_buffer, material_balance,
                                    material_gain)
from trainers.selfplay.ladder import capture_first_player, gives_mate, opponent_mates, random_player
from trainers.selfplay.network import PolicyFn
from trainers.selfplay.runner import sample_legal

# the ladder's two weakest players, under the names the rest of the package uses
random_agent = random_player
capture_first_agent = capture_first_player


@dataclass
class Position:
    """What the encoder reads of a game (a searched child position is not a whole `Game`)."""

    board: cshogi.Board
    legal: list[int]


class NetworkAgent:
    """A policy network as a player: one batched forward per call; samples (or takes the most
    probable move when `greedy`) among the legal moves, or searches one or two plies
    (`search_width`, `depth`)."""

    def __init__(self, policy_fn: PolicyFn, greedy: bool = False, search_width: int = 0, shaping: float = 0.0,
                 depth: int = 1):
        """`search_width` > 0: play through a search over the value head (see `search`), one ply
        deep (`depth` 1, play_search "value1") or two (`depth` 2, "value2");
        `shaping`: the material shaping the value head was trained with (runner.py)."""
        if depth not in (1, 2):
            raise ValueError(f"search depth must be 1 or 2, got {depth}")
        self.policy_fn, self.greedy, self.search_width, self.shaping = policy_fn, greedy, search_width, shaping
        self.depth = depth
        self.features, self.masks = feature_buffer(0), mask_buffer(0)
        self.labels, self.counts = np.zeros(0, np.int64), np.zeros(0, np.int64)

    def __call__(self, games: list[Game], rng: np.random.Generator) -> list[int]:
        n = len(games)
        logits = self.forward(games)[0]
        labels, counts = self.labels, self.counts
        if self.search_width:
            return self.search(games, logits, labels, counts)
        if self.greedy:
            starts = np.cumsum(counts) - counts
            picks = [int(np.argmax(logits[i, labels[a:a + c]].numpy())) for i, (a, c) in enumerate(zip(starts, counts))]
        else:
            picks, _, _ = sample_legal(logits.numpy(), labels, counts, rng)
        return [game.legal[pick] for game, pick in zip(games[:n], picks)]

    def forward(self, games: list[Game] | list[Position]) -> tuple[torch.Tensor, torch.Tensor]:
        """One batched forward over the games' positions (labels and counts kept for the caller)."""
        n = len(games)
        if len(self.features) < n:
            self.features, self.masks = feature_buffer(n), mask_buffer(n)
        self.labels, self.counts = encode_batch(games, self.features, self.masks)
        return self.policy_fn(self.features[:n], self.masks[:n])

    def values(self, positions: list[Position]) -> np.ndarray:
        """The value head's prediction of the result for the side to move at each position, in one
        forward. Trained with potential-based material shaping, the head predicts the result minus
        `shaping` x the side to move's material balance (the shaping sums to -shaping x Phi of the
        first position); that term is added back, so positions are compared by the result."""
        values = self.forward(positions)[1].numpy().astype(np.float64)
        if self.shaping:
            values += self.shaping * np.array([material_balance(p.board, p.board.turn) for p in positions])
        return values

    def search(self, games: list[Game], logits: torch.Tensor, labels: np.ndarray, counts: np.ndarray) -> list[int]:
        """A search over the value head: a mate in one is played at once; otherwise the policy's
        `search_width` most probable moves are played out (all games' children in one forward,
        and with `depth` 2 all their leaves in one more) and the move with the highest score, from
        the mover's side, wins (the most probable among equals). A move after which the opponent
        mates in one scores -inf: it is played only if every searched move allows a mate."""
        starts = np.cumsum(counts) - counts
        moves: list[int | None] = [None] * len(games)
        children: list[tuple[int, int]] = []          # (game index, move) per child position
        for i, game in enumerate(games):
            row = logits[i, labels[starts[i]:starts[i] + counts[i]]].numpy()
            top = np.argsort(-row, kind="stable")[:self.search_width]
            mate = next((move for move in game.legal if gives_mate(game.board, move)), None)
            if mate is not None or len(top) == 1:
                moves[i] = mate if mate is not None else game.legal[int(top[0])]
                continue
            children.extend((i, game.legal[int(j)]) for j in top)
        if children:
            after = [played(games[i].board, move) for i, move in children]
            scores = self.one_ply(after) if self.depth == 1 else self.two_ply(after)
            best: dict[int, tuple[float, int]] = {}
            for (i, move), score in zip(children, scores.tolist()):
                if i not in best or score > best[i][0]:   # strict: ties keep the more probable move
                    best[i] = (score, move)
            for i, (_, move) in best.items():
                moves[i] = move
        return [int(move) for move in moves]

    def one_ply(self, after: list[Position]) -> np.ndarray:
        """value1's score of each child: minus the opponent's value there (the head speaks for
        the side to move, the opponent after our move)."""
        scores = -self.values(after)
        # a child where the opponent mates in one is lost whatever the value head says
        scores[[opponent_mates(p.board, p.legal) for p in after]] = -np.inf
        return scores

    def two_ply(self, after: list[Position]) -> np.ndarray:
        """value2's score of each child (opponent to move): the minimum over the opponent's replies
        of the value of the leaf after the reply. At a leaf we are to move again, so the head's
        value is already ours: no sign flip (negamax over two plies: max over our moves of min
        over their replies).

        The replies searched are the opponent's policy's `search_width` most probable moves (its
        policy from the children's forward) plus every reply that gains material (captures,
        promotions): all legal replies would cost ~80-100 leaves a child, while the replies a
        weak policy overlooks and that a material opponent (the ladder's two_ply) punishes are
        exactly the recaptures; captures are few, so the leaves stay ~2 x width a child. Mates
        need no ranking: `opponent_mates` checks every reply of a child for a mate in one."""
        logits = self.forward(after)[0]
        labels, counts = self.labels, self.counts
        starts = np.cumsum(counts) - counts
        scores = np.full(len(after), np.inf)
        leaves: list[Position] = []
        owner: list[int] = []                          # the child each leaf belongs to
        for c, child in enumerate(after):
            if not child.legal:
                continue                               # our move left no legal reply: a win (+inf)
            if opponent_mates(child.board, child.legal):
                scores[c] = -np.inf                    # a reply mates us: lost, whatever the leaves say
                continue
            row = logits[c, labels[starts[c]:starts[c] + counts[c]]].numpy()
            top = set(np.argsort(-row, kind="stable")[:self.search_width].tolist())
            for j, reply in enumerate(child.legal):
                if j in top or material_gain(reply) > 0:
                    # only the leaf's value is read, so its legal moves are not generated (an empty
                    # list leaves its mask empty); a mating reply was caught by opponent_mates above
                    leaves.append(played(child.board, reply, with_legal=False))
                    owner.append(c)
        if leaves:
            np.minimum.at(scores, np.array(owner), self.values(leaves))
        return scores


def played(board: cshogi.Board, move: int, with_legal: bool = True) -> Position:
    """The position after `move`, on a copy: the game itself must not move."""
    board = board.copy()
    board.push(move)
    return Position(board, list(board.legal_moves) if with_legal else [])


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


def draw_elo_history(axis: Any, history: list[dict[str, float]]) -> None:
    """The ratings over training on a matplotlib axis: the learner and each named opponent (the
    ladder) as a labelled line, the pool's snapshots (`iteration_N`, dozens in a long run) as
    faint unlabelled lines, so that the legend stays a handful of entries."""
    names = sorted({name for row in history for name in row if name != "iteration"})
    snapshot_labelled = False
    for name in names:
        rows = [row for row in history if name in row]
        x, y = [row["iteration"] for row in rows], [row[name] for row in rows]
        if name.startswith("iteration_"):
            axis.plot(x, y, color="0.75", linewidth=0.6, label=None if snapshot_labelled else "snapshots")
            snapshot_labelled = True
        else:
            axis.plot(x, y, "-" if name == "learner" else "--", marker=".", markersize=3, label=name,
                      linewidth=2.0 if name == "learner" else 1.2)
    axis.set_xlabel("iteration whose weights played")
    axis.set_ylabel("Elo (uniform random = 0)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
