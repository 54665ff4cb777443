"""The lockstep game runner: K games at once, one batched forward per ply, per-player GAE.

`play_batch` keeps K game slots going. At every ply all K positions are encoded and the
learner's network is called once on the positions where the learner is to move (a second call,
on the rest, only for games against a pool snapshot). A game that ends is replaced by a new one
at once, so the batch stays K wide; the call returns when the games that ended hold at least
`plies` learner moves. Games in progress carry over to the next call with the learner's moves
so far (collected with the weights of their time, as PPO's old log-probs should be).

Trajectories are *per player* and *finished*: in a self-play game Black's moves and White's
moves are two trajectories (the opponent's reply is part of the environment); GAE never runs
across the two players, nor across games. Rewards are the result: +1 win, -1 loss, 0 draw,
on the player's last move; with `shaping` > 0 each move also gets potential-based material
shaping (Ng, Harada and Russell 1999), shaping * (gamma * Phi(next own decision) - Phi(now)),
Phi = the player's material balance in pawns and 0 at a terminal position. Summed over a
trajectory it telescopes to -shaping * Phi(first position), so the game's return is unchanged and
so is the optimal policy; what changes is that a capture (or a piece left hanging) is felt at
once instead of through a result hundreds of plies later. At the ply limit (a truncation) the value is bootstrapped: the
learner's value of the last position, negated when the other side is to move there (the value
head is zero-sum: it predicts the side to move's result in [-1, 1]). One forward at the end of
the call evaluates every truncated game's last position.

Why whole games: the result is the only reward, hundreds of plies from the opening; a
trajectory cut at the end of a batch and bootstrapped would carry none of it.

`play_match` plays evaluation games between two agents (see agents.py), lockstep as well.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import cshogi
import numpy as np

from trainers.selfplay.game import (PACKED_FEATURES, PACKED_MASK, PERPETUAL_CHECK, REPETITION, Game, GameEnd,
                                    encode, encode_batch, feature_buffer, mask_buffer, pack_features,
                                    pack_masks)
from trainers.selfplay.network import PolicyFn

COLORS = (cshogi.BLACK, cshogi.WHITE)


# ---------------------------------------------------------------- what a batch holds
@dataclass
class ExperienceBatch:
    """The learner's moves of one batch, flat, in plain numpy (picklable, Ray-object-store
    friendly): row i is one decision of the learner."""

    features: np.ndarray      # (N, 1205) uint8: the 119 x 9 x 9 binary planes, bit-packed (unpack_features)
    masks: np.ndarray         # (N, 274) uint8: the 2187 legal-label flags, bit-packed (unpack_masks)
    actions: np.ndarray       # (N,) int64: the label played
    log_probs: np.ndarray     # (N,) float32: log pi(action) at collection
    values: np.ndarray        # (N,) float32: V(position) at collection
    rewards: np.ndarray       # (N,) float32: the result on a trajectory's last move, plus material shaping
    dones: np.ndarray         # (N,) bool: the game ended with a result after this move
    truncations: np.ndarray   # (N,) bool: the game reached the ply limit here (value bootstrapped)
    advantages: np.ndarray    # (N,) float32: GAE, per player
    returns: np.ndarray       # (N,) float32: value targets, advantages + values (lambda-returns)
    trajectories: np.ndarray  # (N,) int64: which player-trajectory the row belongs to
    stats: dict[str, float] = field(default_factory=dict)  # plies, games, results, timing (summable)
    source: str = "in_process"
    sequence: int = 0         # the source's call number: a collector can drop a batch seen twice

    def __len__(self) -> int:
        return len(self.actions)

    ARRAYS = ("features", "masks", "actions", "log_probs", "values", "rewards", "dones", "truncations",
              "advantages", "returns", "trajectories")

    def select(self, rows: np.ndarray) -> "ExperienceBatch":
        return ExperienceBatch(**{name: getattr(self, name)[rows] for name in self.ARRAYS},
                               stats=dict(self.stats), source=self.source, sequence=self.sequence)

    def shard(self, rank: int, world_size: int) -> "ExperienceBatch":
        """Rows rank, rank + W, ... of the first N - N % W: every rank gets as many rows."""
        usable = len(self) - len(self) % world_size
        return self.select(np.arange(rank, usable, world_size))

    @staticmethod
    def concat(batches: list["ExperienceBatch"]) -> "ExperienceBatch":
        if len(batches) == 1:
            return batches[0]
        arrays = {name: np.concatenate([getattr(b, name) for b in batches]) for name in ExperienceBatch.ARRAYS}
        ids, offset = [], 0
        for batch in batches:  # trajectory ids stay distinct across batches
            ids.append(batch.trajectories + offset)
            offset += (int(batch.trajectories.max()) + 1) if len(batch) else 0
        arrays["trajectories"] = np.concatenate(ids)
        stats: dict[str, float] = {}
        for batch in batches:
            for key, value in batch.stats.items():
                stats[key] = stats.get(key, 0.0) + value
        return ExperienceBatch(**arrays, stats=stats, source=batches[0].source, sequence=batches[0].sequence)


def gae(rewards: np.ndarray, values: np.ndarray, bootstrap: float, gamma: float, lam: float) -> np.ndarray:
    """Generalised advantage estimates of one player's trajectory. `bootstrap` is the value after
    the last move: 0 when the game ended there, the estimated value at a truncation."""
    advantages = np.zeros(len(values), dtype=np.float32)
    running, next_value = 0.0, bootstrap
    for t in range(len(values) - 1, -1, -1):
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
        next_value = values[t]
    return advantages


# ---------------------------------------------------------------- game slots
@dataclass
class GameSlot:
    """One of the K games a runner keeps going, which colours the learner plays in it ((True,
    True) in self-play, one of them against a pool snapshot), and the learner's moves so far:
    they are kept until the game ends, then handed out as finished trajectories."""

    game: Game
    learner: tuple[bool, bool]
    plies: list[int] = field(default_factory=list)          # the ply of each learner move
    colors: list[int] = field(default_factory=list)         # and the colour it moved
    actions: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)  # packed planes, regenerable from the moves
    masks: list[np.ndarray] = field(default_factory=list)     # packed legal masks
    potentials: list[float] = field(default_factory=list)     # mover's material balance before the move

    def record(self, features: np.ndarray, mask: np.ndarray, action: int, log_prob: float, value: float) -> None:
        """Keep one learner move (`features` and `mask` packed, kept as given: pass copies)."""
        self.plies.append(self.game.plies)
        self.colors.append(self.game.turn)
        self.potentials.append(self.game.balance(self.game.turn))
        self.features.append(features)
        self.masks.append(mask)
        self.actions.append(int(action))
        self.log_probs.append(float(log_prob))
        self.values.append(float(value))

    def state(self) -> dict[str, Any]:
        """Plain data: the moves and the learner's decisions (features are replayed on load)."""
        return {"sfen": self.game.sfen, "moves": list(self.game.moves), "learner": list(self.learner),
                "plies": list(self.plies),
                "actions": list(self.actions), "log_probs": list(self.log_probs), "values": list(self.values)}

    @classmethod
    def from_state(cls, state: dict[str, Any], ply_limit: int) -> "GameSlot":
        slot = cls(Game(ply_limit, state.get("sfen")), tuple(bool(x) for x in state["learner"]))
        recorded = {int(ply): i for i, ply in enumerate(state["plies"])}
        features, mask = feature_buffer(1)[0], mask_buffer(1)[0]
        for ply, move in enumerate(list(state["moves"]) + [None]):
            if ply in recorded:
                i = recorded[ply]
                encode(slot.game, features, mask)
                slot.record(pack_features(features[None])[0], pack_masks(mask[None])[0], state["actions"][i],
                            state["log_probs"][i], state["values"][i])
            if move is not None:
                slot.game.push(int(move))
        return slot


def new_slot(ply_limit: int, snapshot_prob: float, rng: np.random.Generator, snapshot_available: bool,
             sfen: str | None = None) -> GameSlot:
    """A fresh game: against the pool snapshot with probability `snapshot_prob` (learner colour
    random), else self-play."""
    if snapshot_available and snapshot_prob > 0 and rng.random() < snapshot_prob:
        black = bool(rng.random() < 0.5)
        return GameSlot(Game(ply_limit, sfen), (black, not black))
    return GameSlot(Game(ply_limit, sfen), (True, True))


def new_slots(count: int, ply_limit: int, sfen: str | None = None) -> list[GameSlot]:
    """`count` self-play games from `sfen` (None: the initial position)."""
    return [GameSlot(Game(ply_limit, sfen), (True, True)) for _ in range(count)]


def sample_legal(logits: np.ndarray, labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample one move per row of `logits` (B, 2187) among that row's legal labels (`labels`:
    every row's legal labels one row after the other, `counts[i]` of them for row i).

    Works on the legal logits alone (about 80 a position instead of 2,187): a softmax per row,
    then inverse-CDF sampling on one running sum. Returns, per row, the index of the move in the
    row's legal list, its label and its log-probability.
    """
    starts = np.cumsum(counts) - counts
    x = logits[np.repeat(np.arange(len(counts)), counts), labels].astype(np.float64)
    x -= np.repeat(np.maximum.reduceat(x, starts), counts)
    weights = np.exp(x)
    totals = np.add.reduceat(weights, starts)
    cumulative = np.cumsum(weights)
    targets = cumulative[starts] - weights[starts] + rng.random(len(counts)) * totals
    picks = np.clip(np.searchsorted(cumulative, targets, side="right"), starts, starts + counts - 1)
    return picks - starts, labels[picks], (x[picks] - np.log(totals)).astype(np.float32)


def select_rows(labels: np.ndarray, counts: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The flat labels and counts of some rows only."""
    starts = np.cumsum(counts) - counts
    return np.concatenate([labels[starts[i]:starts[i] + counts[i]] for i in rows]), counts[rows]


@dataclass
class _Finished:
    """One player's trajectory in a game that just ended, waiting for its bootstrap value."""

    slot: GameSlot
    color: int
    reward: float
    terminal: bool
    bootstrap: int = -1      # index of the bootstrap position (a truncated game's last position)
    sign: float = 1.0        # +1: the player is to move there; -1: the opponent is
    end_potential: float = 0.0  # Phi of the last position: 0 at a terminal, the balance at a truncation


def _count_end(stats: dict[str, float], slot: GameSlot, end: GameEnd) -> None:
    stats["games"] += 1
    stats["game_plies"] += slot.game.plies
    if end.truncated:
        stats["truncated"] += 1
    elif end.winner is None:
        stats["draws"] += 1
    else:
        stats["decisive"] += 1
    stats["repetitions"] += end.reason in (REPETITION, PERPETUAL_CHECK)
    if not all(slot.learner):  # a game against a snapshot: the learner's result
        color = COLORS[slot.learner.index(True)]
        stats["snapshot_games"] += 1
        stats["snapshot_wins"] += end.reward(color) > 0
        stats["snapshot_losses"] += end.reward(color) < 0


def play_batch(policy_fn: PolicyFn, slots: list[GameSlot], plies: int, *, gamma: float, gae_lambda: float,
               seed: int, snapshot_prob: float = 0.0,
               opponent_fn: PolicyFn | None = None, ply_limit: int | None = None,
               shaping: float = 0.0) -> ExperienceBatch:
    """Play the K games of `slots` (in place, a ply at a time) until the games that ended hold at
    least `plies` learner moves; return those finished trajectories.

    `policy_fn` is the learner, `opponent_fn` the pool snapshot that plays the non-learner side
    of snapshot games (None: every new game is self-play). `seed` fixes the sampling and the
    choices of new games, so a batch is reproducible from (slots, weights, seed). `stats`
    reports the time inside the network calls (`network_seconds`) and in all (`seconds`).
    """
    started = time.perf_counter()
    k = len(slots)
    limit = ply_limit or slots[0].game.ply_limit
    rng = np.random.default_rng(seed)
    features, masks = feature_buffer(k), mask_buffer(k)
    finished: list[_Finished] = []
    boot_features: list[np.ndarray] = []               # truncated games' last positions
    boot_masks: list[np.ndarray] = []
    collected = 0
    stats = dict.fromkeys(("plies", "games", "game_plies", "decisive", "draws", "truncated", "repetitions",
                           "snapshot_games", "snapshot_wins", "snapshot_losses", "forwards", "bootstrap_forwards",
                           "network_seconds"), 0.0)
    while collected < plies:
        labels, counts = encode_batch([slot.game for slot in slots], features, masks)
        learner_moves = np.array([slot.learner[slot.game.turn] for slot in slots])
        chosen = np.zeros(k, dtype=np.int64)           # index of the move in the game's legal list
        for use_learner, fn in ((True, policy_fn), (False, opponent_fn)):
            rows = np.flatnonzero(learner_moves == use_learner)
            if len(rows) == 0:
                continue
            if fn is None:
                raise ValueError("a game against a snapshot is in progress but no opponent_fn was given")
            tick = time.perf_counter()
            whole = len(rows) == k
            logits, values = fn(features if whole else features[rows], masks if whole else masks[rows])
            stats["network_seconds"] += time.perf_counter() - tick
            stats["forwards"] += 1
            row_labels, row_counts = (labels, counts) if whole else select_rows(labels, counts, rows)
            picks, actions, log_probs = sample_legal(logits.numpy(), row_labels, row_counts, rng)
            chosen[rows] = picks
            if use_learner:  # packed for the whole ply at once; each slot keeps its row
                stored_features = pack_features(features if whole else features[rows])
                stored_masks = pack_masks(masks if whole else masks[rows])
                for j, (i, value) in enumerate(zip(rows, values.numpy())):
                    slots[i].record(stored_features[j], stored_masks[j], actions[j], log_probs[j], value)
        for i, slot in enumerate(slots):
            game = slot.game
            end = game.push(game.legal[chosen[i]])
            if end is None:
                continue
            bootstrap = -1
            if end.truncated:
                boot_features.append(feature_buffer(1)[0])
                boot_masks.append(mask_buffer(1)[0])
                encode(game, boot_features[-1], boot_masks[-1])
                bootstrap = len(boot_features) - 1
            for color in COLORS:
                if color in slot.colors:
                    finished.append(_Finished(slot, color, end.reward(color), not end.truncated, bootstrap,
                                              1.0 if color == game.turn else -1.0,
                                              game.balance(color) if end.truncated else 0.0))
            collected += len(slot.plies)
            _count_end(stats, slot, end)
            slots[i] = new_slot(limit, snapshot_prob, rng, opponent_fn is not None, game.sfen)
        stats["plies"] += k
    boot_values = np.zeros(0, dtype=np.float32)
    if boot_features:  # one forward for every truncated game's bootstrap value
        tick = time.perf_counter()
        boot_values = policy_fn(np.stack(boot_features), np.stack(boot_masks))[1].numpy()
        stats["network_seconds"] += time.perf_counter() - tick
        stats["bootstrap_forwards"] += 1
    batch = _assemble(finished, boot_values, gamma, gae_lambda, shaping)
    stats["learner_plies"] = float(len(batch))
    stats["seconds"] = time.perf_counter() - started
    batch.stats = stats
    return batch


def _assemble(finished: list[_Finished], boot_values: np.ndarray, gamma: float, lam: float,
              shaping: float = 0.0) -> ExperienceBatch:
    """Per-player GAE over each finished trajectory; the trajectories one after the other."""
    moves = [[j for j, color in enumerate(t.slot.colors) if color == t.color] for t in finished]
    n = sum(len(rows) for rows in moves)
    batch = ExperienceBatch(features=np.empty((n, PACKED_FEATURES), np.uint8),
                            masks=np.empty((n, PACKED_MASK), np.uint8),
                            actions=np.empty(n, np.int64), log_probs=np.empty(n, np.float32),
                            values=np.empty(n, np.float32), rewards=np.zeros(n, np.float32),
                            dones=np.zeros(n, bool), truncations=np.zeros(n, bool),
                            advantages=np.empty(n, np.float32), returns=np.empty(n, np.float32),
                            trajectories=np.empty(n, np.int64))
    start = 0
    for number, (trajectory, rows) in enumerate(zip(finished, moves)):
        slot, stop = trajectory.slot, start + len(rows)
        here = slice(start, stop)
        if len(rows) == len(slot.plies):   # the learner played one side only: every row is this trajectory's
            np.stack(slot.features, out=batch.features[here])
            np.stack(slot.masks, out=batch.masks[here])
        else:
            np.stack([slot.features[j] for j in rows], out=batch.features[here])
            np.stack([slot.masks[j] for j in rows], out=batch.masks[here])
        batch.actions[here] = [slot.actions[j] for j in rows]
        batch.log_probs[here] = [slot.log_probs[j] for j in rows]
        batch.values[here] = [slot.values[j] for j in rows]
        batch.rewards[stop - 1] = trajectory.reward
        if shaping:
            potentials = np.array([slot.potentials[j] for j in rows] + [trajectory.end_potential], np.float32)
            batch.rewards[here] += shaping * (gamma * potentials[1:] - potentials[:-1])
        batch.dones[stop - 1] = trajectory.terminal
        batch.truncations[stop - 1] = not trajectory.terminal
        bootstrap = 0.0 if trajectory.terminal else trajectory.sign * float(boot_values[trajectory.bootstrap])
        batch.advantages[here] = gae(batch.rewards[here], batch.values[here], bootstrap, gamma, lam)
        batch.returns[here] = batch.advantages[here] + batch.values[here]
        batch.trajectories[here] = number
        start = stop
    return batch


# ---------------------------------------------------------------- evaluation games
Agent = Callable[[list[Game], np.random.Generator], list[int]]


@dataclass
class MatchResult:
    scores: list[float]       # per game, the agent's: 1 win, 0.5 draw or truncation, 0 loss
    wins: int
    losses: int
    draws: int                # repetitions and ply-limit games (not won)
    plies: int

    @property
    def games(self) -> int:
        return len(self.scores)

    @property
    def win_rate(self) -> float:
        return self.wins / max(1, self.games)

    @property
    def loss_rate(self) -> float:
        return self.losses / max(1, self.games)


def play_match(agent: Agent, opponent: Agent, games: int, ply_limit: int, seed: int,
               sfen: str | None = None) -> MatchResult:
    """`games` games between two agents, all in lockstep; the agent plays Black in games 0, 2, ...
    and White in 1, 3, ... Each ply, each agent is called once with the games where it is to move."""
    rng = np.random.default_rng(seed)
    boards = [Game(ply_limit, sfen) for _ in range(games)]
    agent_color = [COLORS[i % 2] for i in range(games)]
    ends: list[GameEnd | None] = [None] * games
    while True:
        active = [i for i in range(games) if ends[i] is None]
        if not active:
            break
        agent_turn = [i for i in active if boards[i].turn == agent_color[i]]
        opponent_turn = [i for i in active if boards[i].turn != agent_color[i]]
        for player, turn in ((agent, agent_turn), (opponent, opponent_turn)):
            if turn:
                for i, move in zip(turn, player([boards[i] for i in turn], rng)):
                    ends[i] = boards[i].push(move)
    scores = [0.5 + 0.5 * end.reward(color) for end, color in zip(ends, agent_color)]
    return MatchResult(scores=scores, wins=sum(s == 1.0 for s in scores), losses=sum(s == 0.0 for s in scores),
                       draws=sum(s == 0.5 for s in scores), plies=sum(b.plies for b in boards))
