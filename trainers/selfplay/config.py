"""Config of `ppo-shogi` (pydantic; imports neither torch nor cshogi, so the CLI validates fast).

Every hyperparameter is named once, here; the modules read them from this object.
Defaults are sized for 2 CPU cores and about 30 minutes (see `trainer.py` for the budget).
"""
from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from trainers.config import Mode, Schedule, TrainerConfig

# the opponent ladder (trainers/selfplay/ladder.py), weakest first; named here so the CLI checks
# them without importing cshogi
LadderName = Literal["random", "capture_first", "one_ply", "two_ply"]
LADDER_NAMES = ("random", "capture_first", "one_ply", "two_ply")


class PpoShogiConfig(TrainerConfig):
    # ----- shared keys: one iteration = collect >= `rollout_plies` learner moves, then one PPO update
    lr: float = Field(3e-3, gt=0, le=1, description="Adam learning rate")
    max_iterations: int = Field(150, ge=1, le=1_000_000)
    patience: int = Field(0, ge=0, le=10_000, description="iterations without a better ladder score "
                                                           "before stopping; 0 = never stop early")
    schedule: Schedule = "none"
    metric: str = "ladder_score"
    mode: Mode = "max"
    checkpoint_every: int = Field(5, ge=1, le=1_000_000)
    # ----- network
    blocks: int = Field(3, ge=1, le=40, description="SE residual blocks")
    channels: int = Field(32, ge=4, le=512, description="channels of the residual tower")
    # ----- speed (opt-in; CPU behaviour unchanged with both off)
    mixed_precision: bool = Field(False, description="bf16 autocast of the network's forward on CUDA (ignored on "
                                                     "CPU); losses, metrics and optimizer state stay float32")
    compile: bool = Field(False, description="torch.compile the network (pays off on GPU for long runs; the first "
                                             "iterations compile)")
    # ----- self-play
    games_per_batch: int = Field(32, ge=1, le=4096, description="games played in lockstep, one batched forward per ply")
    rollout_plies: int = Field(4096, ge=2, le=10_000_000, description="learner moves per iteration, from games that "
                                                                        "ended (games in progress carry over)")
    start_sfen: Optional[str] = Field(None, description="SFEN of the position every game starts from "
                                                        "(None: the initial position)")
    ply_limit: int = Field(512, ge=2, le=100_000, description="a game reaching it is truncated (value bootstrapped)")
    snapshot_prob: float = Field(0.2, ge=0, le=1, description="probability that a new game is against a past "
                                                               "snapshot from the pool instead of the latest policy")
    snapshot_every: int = Field(10, ge=1, le=1_000_000, description="iterations between snapshots added to the pool")
    pool_size: int = Field(5, ge=1, le=1000, description="snapshots kept (oldest dropped first)")
    material_shaping: float = Field(0.02, ge=0, le=0.1, description="potential-based reward shaping per pawn of "
                                                                  "material balance (0 = results only); see runner.py")
    collector: Literal["in_process", "ray"] = Field("in_process", description="where experience is collected: in "
                                                   "the learner's process, or by Ray self-play actors "
                                                   "(run.py --actors N)")
    actors: int = Field(2, ge=1, le=10_000, description="self-play actors (collector 'ray'); with several learners "
                                                        "each owns actors / learners of them")
    staleness: int = Field(1, ge=0, le=1, description="collector 'ray': updates the weights that play may lag "
                                                     "behind the learner's; 1 = actors play the next batch "
                                                     "while the learner updates (the PPO ratio is taken "
                                                     "against the stored behaviour log-probs), 0 = they wait")
    eval_actors: int = Field(2, ge=0, le=1000, description="collector 'ray': Ray actors that play the "
                                                           "evaluation matches beside training (results "
                                                           "attached to the iteration whose weights played); "
                                                           "0 = the learner plays them itself")
    actor_cpus: float = Field(1.0, gt=0, le=256, description="CPUs reserved per self-play actor (collector 'ray')")
    inference: Literal["local", "server"] = Field("local", description="collector 'ray': each actor runs the network "
                                                  "itself, or sends its positions to one inference actor (SEED-style)")
    inference_gpus: float = Field(1.0, ge=0, le=8, description="GPUs of the inference actor when the learner has a GPU "
                                                                "(else it runs on CPU); share one GPU with fractions")
    # ----- PPO
    gamma: float = Field(1.0, gt=0, le=1, description="discount per own move")
    gae_lambda: float = Field(0.8, ge=0, le=1, description="GAE lambda (value targets: advantages + values)")
    clip_coef: float = Field(0.2, gt=0, le=1, description="PPO ratio clip")
    ent_coef: float = Field(0.01, ge=0, le=1, description="entropy bonus")
    vf_coef: float = Field(0.5, ge=0, le=10, description="value loss weight")
    update_epochs: int = Field(3, ge=1, le=100)
    num_minibatches: int = Field(8, ge=1, le=100_000)
    max_grad_norm: float = Field(0.5, gt=0, le=1000)
    target_kl: Optional[float] = Field(None, gt=0, le=10, description="stop the epochs early past this KL; None = off")
    # ----- evaluation
    ladder: list[LadderName] = Field(default_factory=lambda: list(LADDER_NAMES), min_length=1,
                                     description="the fixed opponents every evaluation plays (ladder.py), "
                                                 "weakest first; the latest pool snapshot is played too")
    play_search: Literal["none", "value1", "value2"] = Field("none", description="how the network plays "
                                                             "evaluation games: 'none' its policy alone; "
                                                             "'value1' a one-ply search over its value head (mate "
                                                             "in one first, then the top `search_width` moves of "
                                                             "the policy scored by the value after them); 'value2' "
                                                             "two plies (each of those moves scored by its worst "
                                                             "leaf over the opponent's top `search_width` replies "
                                                             "by the policy plus every capture or promotion; a "
                                                             "move allowing a mate in one loses)")
    search_width: int = Field(8, ge=1, le=600, description="play_search 'value1'/'value2': policy moves searched "
                                                            "(and, for 'value2', the opponent's replies by policy)")
    eval_every: int = Field(10, ge=1, le=1_000_000, description="iterations between evaluations (and the last one)")
    eval_games: int = Field(32, ge=1, le=100_000, description="games against each evaluation opponent, "
                                                               "colours alternated")
    final_eval_games: int = Field(100, ge=0, le=100_000, description="games against every ladder rung on the "
                                                                     "selected state after training; 0 = skip")
    eval_greedy: bool = Field(False, description="evaluation plays the most probable move instead of sampling")
    elo_k: float = Field(16.0, gt=0, le=400, description="Elo K-factor per game")

    @field_validator("start_sfen")
    @classmethod
    def _valid_sfen(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            check_sfen(value)
        return value

    @model_validator(mode="after")
    def _sizes_fit(self):
        if self.num_minibatches > self.rollout_plies // 2:
            raise ValueError(f"num_minibatches ({self.num_minibatches}) must be <= rollout_plies / 2 "
                             f"({self.rollout_plies // 2})")
        if self.inference == "server" and self.collector != "ray":
            raise ValueError("inference 'server' serves Ray self-play actors: it needs collector 'ray' "
                             "(run.py --actors N)")
        return self


# ---------------------------------------------------------------- SFEN, checked here: cshogi aborts
# the whole interpreter (a C++ exception) on a malformed SFEN instead of raising
_PIECE_LETTERS = set("plnsgbrk")
_PROMOTABLE = set("plnsbr")
_HAND_LETTERS = set("plnsgbr")


def check_sfen(sfen: str) -> None:
    """Raise ValueError naming what is wrong with `sfen` (board/side/hands/move number)."""
    fields = sfen.split()
    if len(fields) != 4:
        raise ValueError(f"an SFEN has 4 fields (board, side, hands, move number), got {len(fields)}")
    board, side, hands, number = fields
    ranks = board.split("/")
    if len(ranks) != 9:
        raise ValueError(f"the board has 9 ranks separated by '/', got {len(ranks)}")
    kings = {"K": 0, "k": 0}
    for rank_number, rank in enumerate(ranks, start=1):
        _check_rank(rank, rank_number, kings)
    if kings != {"K": 1, "k": 1}:
        raise ValueError(f"the board needs one king a side (K and k), has {kings['K']} and {kings['k']}")
    if side not in ("b", "w"):
        raise ValueError(f"the side to move is 'b' or 'w', got {side!r}")
    if hands != "-" and not re.fullmatch(r"(?:\d{0,2}[PLNSGBRplnsgbr])+", hands):
        raise ValueError(f"pieces in hand are '-' or counts and letters (e.g. 2Pp), got {hands!r}")
    if not number.isdigit() or int(number) < 1:
        raise ValueError(f"the move number is a positive integer, got {number!r}")


def _check_rank(rank: str, rank_number: int, kings: dict[str, int]) -> None:
    squares, promoted = 0, False
    for char in rank:
        if char == "+":
            promoted = True
            continue
        if char.isdigit():
            if promoted:
                raise ValueError(f"rank {rank_number}: '+' must precede a piece")
            squares += int(char)
        elif char.lower() in _PIECE_LETTERS:
            if promoted and char.lower() not in _PROMOTABLE:
                raise ValueError(f"rank {rank_number}: {char!r} cannot be promoted")
            if char in kings:
                kings[char] += 1
            squares += 1
        else:
            raise ValueError(f"rank {rank_number}: unknown piece {char!r}")
        promoted = False
    if promoted or squares != 9:
        raise ValueError(f"rank {rank_number} ({rank!r}) covers {squares} squares, not 9")
