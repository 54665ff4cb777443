"""Shogi under full rules, on cshogi, and the dlshogi encoding of a position.

cshogi generates legal moves (drops, promotions, no pawn-drop mate) and applies them; `push`
does no legality check, so a `Game` only pushes moves from its own `legal` list. What cshogi
leaves to the caller is decided here:

- fourfold repetition: the same position (board, hands, side to move) for the fourth time is a
  draw. cshogi's own `is_draw` reports the first recurrence (a search engine's rule), so the
  occurrences are counted here;
- perpetual check: if every move one side made between the first and the fourth occurrence gave
  check, that side loses (both sides checking throughout: a draw);
- no legal move: the side to move loses (checkmate; shogi has no stalemate draw);
- the ply limit ends the game as a *truncation*: not a result, the learner bootstraps its value.
  The entering-king declaration is not implemented: such games run to the ply limit.

Encoding, from the side to move (dlshogi): `make_input_features` writes 62 + 57 binary planes
(9 x 9), rotated for White; `make_move_label` maps a move to one of 2,187 labels (27 move kinds
x 81 destination squares), also rotated for White. The labels of a position's legal moves never
collide, so a softmax over the masked 2,187 logits is a softmax over the legal moves.
`encode_batch` does K positions at once and computes the labels itself, vectorised (the tests
check them against cshogi's). Stored experience is bit-packed: the planes are 0/1.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import cshogi
import numpy as np
import torch
from cshogi import dlshogi

FEATURES1 = dlshogi.FEATURES1_NUM              # pieces, attacks (62 planes)
FEATURES2 = dlshogi.FEATURES2_NUM              # pieces in hand, check (57 planes)
FEATURE_PLANES = FEATURES1 + FEATURES2         # 119
MOVE_KINDS = 27                                # 10 directions x (move, promote) + 7 drops
N_LABELS = MOVE_KINDS * 81                     # 2187

NO_LEGAL_MOVE = "no_legal_move"
REPETITION = "repetition"
PERPETUAL_CHECK = "perpetual_check"
PLY_LIMIT = "ply_limit"


@dataclass(frozen=True)
class GameEnd:
    reason: str              # one of NO_LEGAL_MOVE, REPETITION, PERPETUAL_CHECK, PLY_LIMIT
    winner: int | None       # cshogi.BLACK or cshogi.WHITE; None for a draw or a truncation

    @property
    def truncated(self) -> bool:
        return self.reason == PLY_LIMIT

    def reward(self, color: int) -> float:
        """+1 win, -1 loss, 0 draw or truncation, for the player of `color`."""
        if self.winner is None:
            return 0.0
        return 1.0 if self.winner == color else -1.0


class Game:
    """One game from `sfen` (default: the initial position); `legal` holds the legal moves."""

    def __init__(self, ply_limit: int = 512, sfen: str | None = None):
        self.board = cshogi.Board(sfen) if sfen else cshogi.Board()
        self.sfen = sfen
        self.ply_limit = ply_limit
        self.moves: list[int] = []
        key = self.board.zobrist_hash()
        self.keys = [key]                       # keys[t]: the position after t plies
        self.counts = {key: 1}
        self.in_check = [self.board.is_check()]  # in_check[t]: move t gave check
        self.legal = list(self.board.legal_moves)
        self.black_balance = material_balance(self.board, cshogi.BLACK)  # kept up to date by push
        self.end: GameEnd | None = None
        if not self.legal:
            self.end = GameEnd(NO_LEGAL_MOVE, cshogi.opponent(self.board.turn))

    @classmethod
    def from_moves(cls, moves: list[int], ply_limit: int = 512, sfen: str | None = None) -> "Game":
        """Replay `moves` (a resumed game in progress)."""
        game = cls(ply_limit, sfen)
        for move in moves:
            game.push(move)
        return game

    @property
    def turn(self) -> int:
        return self.board.turn

    def balance(self, color: int) -> float:
        """material_balance(self.board, color), kept incrementally (a few cshogi calls a move)."""
        return self.black_balance if color == cshogi.BLACK else -self.black_balance

    @property
    def plies(self) -> int:
        return len(self.moves)

    def push(self, move: int) -> GameEnd | None:
        """Play a move from `legal`; returns how the game ended, or None while it goes on."""
        if self.end is not None:
            raise RuntimeError(f"the game is over ({self.end.reason})")
        board = self.board
        gain = material_gain(move)
        self.black_balance += gain if board.turn == cshogi.BLACK else -gain
        board.push(move)
        self.moves.append(move)
        key = board.zobrist_hash()
        self.keys.append(key)
        self.in_check.append(board.is_check())
        count = self.counts[key] = self.counts.get(key, 0) + 1
        self.legal = list(board.legal_moves)
        if count >= 4:
            self.end = self._repetition(key)
        elif not self.legal:
            self.end = GameEnd(NO_LEGAL_MOVE, cshogi.opponent(board.turn))
        elif self.plies >= self.ply_limit:
            self.end = GameEnd(PLY_LIMIT, None)
        return self.end

    def _repetition(self, key: int) -> GameEnd:
        """The fourth occurrence: a draw, unless one side checked with every move since the first."""
        now, first = self.plies, self.keys.index(key)
        last_mover_checked = all(self.in_check[t] for t in range(now, first, -2))
        to_move_checked = all(self.in_check[t] for t in range(now - 1, first, -2))
        if last_mover_checked and not to_move_checked:
            return GameEnd(PERPETUAL_CHECK, self.board.turn)
        if to_move_checked and not last_mover_checked:
            return GameEnd(PERPETUAL_CHECK, cshogi.opponent(self.board.turn))
        return GameEnd(REPETITION, None)


# ---------------------------------------------------------------- material
# piece values in pawns (a promoted minor piece moves like a gold); the king counts 0
_VALUES = {cshogi.PAWN: 1, cshogi.LANCE: 3, cshogi.KNIGHT: 4, cshogi.SILVER: 5, cshogi.GOLD: 6,
           cshogi.BISHOP: 8, cshogi.ROOK: 10, cshogi.PROM_PAWN: 6, cshogi.PROM_LANCE: 6,
           cshogi.PROM_KNIGHT: 6, cshogi.PROM_SILVER: 6, cshogi.PROM_BISHOP: 10, cshogi.PROM_ROOK: 12}
# board piece code -> value for Black (White's pieces are code + 16 and count negative)
_BOARD_VALUE = np.zeros(32, dtype=np.float32)
for _piece, _value in _VALUES.items():
    _BOARD_VALUE[_piece], _BOARD_VALUE[_piece + 16] = _value, -_value
# pieces in hand, in cshogi's order: pawn, lance, knight, silver, gold, bishop, rook
_HAND_VALUE = np.array([1, 3, 4, 5, 6, 8, 10], dtype=np.float32)


_PIECE_VALUE = np.zeros(16, dtype=np.float32)   # by piece type, promoted ones included
for _piece, _value in _VALUES.items():
    _PIECE_VALUE[_piece] = _value
_PROMOTED = 8   # PROM_X = X + 8 for pawn, lance, knight, silver, bishop and rook


def material_gain(move: int) -> float:
    """How much a move raises its mover's balance: a capture takes the piece off the board and
    puts it, unpromoted, in hand; a promotion upgrades the piece. A drop changes nothing."""
    if cshogi.move_is_drop(move):
        return 0.0
    gain = 0.0
    captured = cshogi.move_cap(move)
    if captured:
        base = captured - _PROMOTED if captured > cshogi.KING else captured
        gain += float(_PIECE_VALUE[captured] + _PIECE_VALUE[base])
    if cshogi.move_is_promotion(move):
        moved = cshogi.move_from_piece_type(move)
        gain += float(_PIECE_VALUE[moved + _PROMOTED] - _PIECE_VALUE[moved])
    return gain


def material_balance(board: cshogi.Board, color: int) -> float:
    """Material of `color` minus the opponent's, board and hands, in pawns (0 at the start)."""
    black_hand, white_hand = board.pieces_in_hand
    black = float(_BOARD_VALUE[np.asarray(board.pieces)].sum()
                  + _HAND_VALUE @ np.asarray(black_hand, dtype=np.float32)
                  - _HAND_VALUE @ np.asarray(white_hand, dtype=np.float32))
    return black if color == cshogi.BLACK else -black


# ---------------------------------------------------------------- encoding
def feature_buffer(n: int) -> np.ndarray:
    """(n, 119, 9, 9) float32, C-contiguous: the only layout make_input_features may be given
    (it does not check dtype; a float16 array corrupts the heap). Reuse it: first touch is slow."""
    return np.zeros((n, FEATURE_PLANES, 9, 9), dtype=np.float32)


def mask_buffer(n: int) -> np.ndarray:
    return np.zeros((n, N_LABELS), dtype=bool)


# experience is stored bit-packed: the planes are 0/1 (1,205 bytes a position instead of 9,639)
PACKED_FEATURES = -(-FEATURE_PLANES * 81 // 8)
PACKED_MASK = -(-N_LABELS // 8)


def pack_features(features: np.ndarray) -> np.ndarray:
    """(B, 119, 9, 9) 0/1 floats -> (B, 1205) uint8."""
    return np.packbits(features.reshape(len(features), -1) != 0, axis=1)


def unpack_features(packed: np.ndarray) -> np.ndarray:
    """(B, 1205) uint8 -> (B, 119, 9, 9) float32."""
    bits = np.unpackbits(packed, axis=1, count=FEATURE_PLANES * 81)
    return bits.reshape(len(packed), FEATURE_PLANES, 9, 9).astype(np.float32)


_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits' big-endian bit order


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """np.unpackbits(packed, axis=1, count=count) as torch ops, on packed's device: (B, n) uint8
    -> (B, count) bool. The learner moves the packed experience to its GPU once (a 30th of the
    unpacked size) and unpacks each minibatch there; unpacking on the host and copying 316 MB
    of float32 features per 8,192-row minibatch took 90% of a GPU update."""
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    return packed.unsqueeze(-1).bitwise_and(weights).ne(0).flatten(1)[:, :count]


def unpack_features_tensor(packed: torch.Tensor) -> torch.Tensor:
    """(B, 1205) uint8 tensor -> (B, 119, 9, 9) float32, as `unpack_features`, on its device."""
    if packed.device.type == "cpu":  # numpy's unpackbits is 8x faster than the bit ops on a CPU
        return torch.from_numpy(unpack_features(packed.numpy()))
    return unpack_bits(packed, FEATURE_PLANES * 81).view(len(packed), FEATURE_PLANES, 9, 9).float()


def unpack_masks_tensor(packed: torch.Tensor) -> torch.Tensor:
    """(B, 274) uint8 tensor -> (B, 2187) bool, as `unpack_masks`, on its device."""
    if packed.device.type == "cpu":
        return torch.from_numpy(unpack_masks(packed.numpy()))
    return unpack_bits(packed, N_LABELS)


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """(B, 2187) bool -> (B, 274) uint8."""
    return np.packbits(masks, axis=1)


def unpack_masks(packed: np.ndarray) -> np.ndarray:
    """(B, 274) uint8 -> (B, 2187) bool."""
    return np.unpackbits(packed, axis=1, count=N_LABELS).astype(bool)


def encode(game: Game, features: np.ndarray, mask: np.ndarray) -> list[int]:
    """Write one position's features (119, 9, 9) and legal mask (2187,) in place; returns the
    labels of `game.legal`, in order (label i belongs to move game.legal[i])."""
    dlshogi.make_input_features(game.board, features[:FEATURES1], features[FEATURES1:])
    turn = game.board.turn
    labels = [dlshogi.make_move_label(move, turn) for move in game.legal]
    mask[:] = False
    mask[labels] = True
    return labels


def encode_batch(games: list[Game], features: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`encode` for many positions, the labels computed at once (the runner's hot path).

    Returns (labels, counts): the labels of every game's legal moves one game after the other,
    and how many each game has."""
    for i, game in enumerate(games):
        dlshogi.make_input_features(game.board, features[i, :FEATURES1], features[i, FEATURES1:])
    counts = np.fromiter((len(game.legal) for game in games), dtype=np.int64, count=len(games))
    moves = np.fromiter(itertools.chain.from_iterable(game.legal for game in games), dtype=np.int64,
                        count=int(counts.sum()))
    colors = np.fromiter((game.board.turn for game in games), dtype=np.int64, count=len(games))
    labels = move_labels(moves, np.repeat(colors, counts))
    masks[:len(games)] = False
    masks[np.repeat(np.arange(len(games)), counts), labels] = True
    return labels, counts


def move_label(move: int, color: int) -> int:
    return dlshogi.make_move_label(move, color)


# dlshogi's move kind of a board move, by the sign of its file step, the sign of its rank step
# (negative = forward for Black) and whether it is a knight's jump, from the mover's side;
# a promotion adds 10; a drop is 20 + the hand piece (pawn 0 ... rook 6).
_KINDS = np.full((3, 3, 2), -1, dtype=np.int64)
for (_file, _rank, _knight), _kind in {(0, -1, 0): 0, (1, -1, 0): 1, (-1, -1, 0): 2, (1, 0, 0): 3, (-1, 0, 0): 4,
                                       (0, 1, 0): 5, (1, 1, 0): 6, (-1, 1, 0): 7, (1, -1, 1): 8,
                                       (-1, -1, 1): 9}.items():
    _KINDS[_file + 1, _rank + 1, _knight] = _kind


def move_labels(moves: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """`make_move_label` of many moves at once (equal to cshogi's, see the tests). cshogi's move
    bits: destination 0-6, origin 7-13 (81 + hand piece for a drop), promotion 14."""
    white = colors == cshogi.WHITE
    to = moves & 0x7F
    origin = (moves >> 7) & 0x7F
    drop = origin >= 81
    to = np.where(white, 80 - to, to)                      # rotated for White
    origin = np.where(white, 80 - origin, origin)
    file_step, rank_step = to // 9 - origin // 9, to % 9 - origin % 9
    knight = (np.abs(rank_step) == 2) & (np.abs(file_step) == 1)
    kind = _KINDS[np.sign(file_step) + 1, np.sign(rank_step) + 1, knight.astype(np.int64)]
    kind = kind + 10 * ((moves >> 14) & 1)
    kind = np.where(drop, 20 + ((moves >> 7) & 0x7F) - 81, kind)
    return kind * 81 + to
