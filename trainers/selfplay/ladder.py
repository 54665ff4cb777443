"""The opponent ladder: fixed players of rising strength that a learner is measured against.

    random         uniform over the legal moves (the Elo anchor, rated 0)
    capture_first  takes the most valuable piece it can, else a random move
    one_ply        mates in one if it can, else the move with the best material balance after it
    two_ply        two-ply material minimax with alpha-beta: mates in one if it can, never plays a
                   move after which the opponent mates in one (while another move avoids it), else
                   the move whose balance after the opponent's best material reply is highest

Every player breaks ties at random (from the match's generator), so a match is reproducible from
its seed and a player is not a fixed sequence of moves. Material is counted as in game.py (pawn
1 ... rook 10, promoted rook 12; a captured piece goes to the captor's hand, so a capture gains
the piece's value on the board plus its value in hand). The search ignores repetition: these
players are baselines, not engines.

`LADDER` maps the names above to the players, weakest first; a config's `ladder` lists which of
them an evaluation plays, and its validator refuses other names.
"""
from __future__ import annotations

from typing import Callable

import cshogi
import numpy as np

from trainers.selfplay.game import Game, material_gain

Player = Callable[[list[Game], np.random.Generator], list[int]]
LOSS = float("-inf")


def random_player(games: list[Game], rng: np.random.Generator) -> list[int]:
    """Uniform over the legal moves."""
    return [game.legal[rng.integers(len(game.legal))] for game in games]


def capture_first_player(games: list[Game], rng: np.random.Generator) -> list[int]:
    """The most valuable capture (ties at random); with no capture, a random move."""
    moves = []
    for game in games:
        values = [capture_value(move) for move in game.legal]
        moves.append(pick_best(game.legal, values, rng))
    return moves


def one_ply_player(games: list[Game], rng: np.random.Generator) -> list[int]:
    """Mate in one if there is one, else the best material balance after the move."""
    return [one_ply_move(game.board, game.legal, rng) for game in games]


def two_ply_player(games: list[Game], rng: np.random.Generator) -> list[int]:
    """Two-ply material minimax with alpha-beta, mates in one checked on both plies."""
    return [two_ply_move(game.board, game.legal, rng) for game in games]


LADDER: dict[str, Player] = {"random": random_player, "capture_first": capture_first_player,
                             "one_ply": one_ply_player, "two_ply": two_ply_player}


# ---------------------------------------------------------------- the searches
_CAPTURE_VALUE = {cshogi.PAWN: 1, cshogi.LANCE: 3, cshogi.KNIGHT: 4, cshogi.SILVER: 5, cshogi.GOLD: 6,
                  cshogi.BISHOP: 8, cshogi.ROOK: 10, cshogi.PROM_PAWN: 6, cshogi.PROM_LANCE: 6,
                  cshogi.PROM_KNIGHT: 6, cshogi.PROM_SILVER: 6, cshogi.PROM_BISHOP: 10, cshogi.PROM_ROOK: 12}


def capture_value(move: int) -> int:
    """The board value of the piece a move captures (0 for none)."""
    return _CAPTURE_VALUE.get(cshogi.move_cap(move), 0)


def pick_best(moves: list[int], scores: list[float], rng: np.random.Generator) -> int:
    """One of the moves with the highest score, uniformly."""
    best = max(scores)
    candidates = [move for move, score in zip(moves, scores) if score == best]
    return candidates[int(rng.integers(len(candidates)))]


def gives_mate(board: cshogi.Board, move: int) -> bool:
    """After `move` the opponent has no legal move (cshogi's legal moves exclude a pawn-drop mate)."""
    board.push(move)
    mated = board.is_game_over()
    board.pop()
    return mated


def opponent_mates(board: cshogi.Board, replies: list[int]) -> bool:
    """The side to move has a mate in one. cshogi's fast mate finder assumes the side to move is
    not in check; in check (rare: after a checking move) every reply is tried."""
    if board.is_check():
        return any(gives_mate(board, reply) for reply in replies)
    return bool(board.mate_move_in_1ply())


def one_ply_move(board: cshogi.Board, legal: list[int], rng: np.random.Generator) -> int:
    mates = [move for move in legal if gives_mate(board, move)]
    if mates:
        return mates[int(rng.integers(len(mates)))]
    return pick_best(legal, [material_gain(move) for move in legal], rng)


def two_ply_move(board: cshogi.Board, legal: list[int], rng: np.random.Generator) -> int:
    """A mate in one if there is one; else max over own moves m of [gain(m) - max over replies
    r of gain(r)], where a move after which the opponent mates in one scores -inf.

    Alpha-beta: the replies' gains are >= 0 and a non-mating move leaves a reply, so gain(m)
    bounds m's score from above; moves are tried by falling gain, and the search stops once
    the bound falls below the best score found. Replies stop as soon as one refutes m below
    the best score. Ties (equal scores) are kept and broken at random."""
    mates = [move for move in legal if gives_mate(board, move)]
    if mates:                                 # before the bound below, which a quiet mate would fall under
        return mates[int(rng.integers(len(mates)))]
    order = rng.permutation(len(legal))       # random order first: ties are broken at random
    moves = [legal[i] for i in order]
    gains = [material_gain(move) for move in moves]
    ranked = sorted(range(len(moves)), key=lambda i: -gains[i])  # stable: the random order within a gain
    best, candidates = LOSS, []
    for i in ranked:
        move, gain = moves[i], gains[i]
        if candidates and gain < best:
            break                             # every later move gains less: none can reach `best`
        score = _after(board, move, gain, best)
        if score > best or not candidates:
            best, candidates = score, [move]
        elif score == best:
            candidates.append(move)
    return candidates[int(rng.integers(len(candidates)))]


def _after(board: cshogi.Board, move: int, gain: float, alpha: float) -> float:
    """The score of `move` (its gain minus the opponent's best reply), cut off below `alpha`."""
    board.push(move)
    try:
        replies = list(board.legal_moves)   # not empty: mates were taken before the search
        if opponent_mates(board, replies):
            return LOSS                       # the opponent mates in one
        score = gain
        for reply in replies:
            score = min(score, gain - material_gain(reply))
            if score < alpha:
                break                         # refuted: worse than a move already found
        return score
    finally:
        board.pop()
