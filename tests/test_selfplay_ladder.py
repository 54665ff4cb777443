"""`ppo-shogi`'s opponent ladder on hand-set positions, selection by the ladder score, the
checkpoint's two weight sets and the evaluate command, the behaviour log-probs of PPO's ratio,
and bad input (an unknown rung, a negative staleness bound).
"""
from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest
import torch

cshogi = pytest.importorskip("cshogi")
from cshogi import dlshogi  # noqa: E402

from trainers.checkpoint import load_checkpoint  # noqa: E402
from trainers.config import ConfigError, build_config  # noqa: E402
from trainers.context import LocalContext  # noqa: E402
from trainers.selfplay.config import PpoShogiConfig  # noqa: E402
from trainers.selfplay.evaluation import Evaluation, ladder_score  # noqa: E402
from trainers.selfplay.game import Game  # noqa: E402
from trainers.selfplay.ladder import LADDER, one_ply_player, opponent_mates, two_ply_player  # noqa: E402
from trainers.selfplay.network import ActorCritic  # noqa: E402
from trainers.selfplay.ppo import ppo_update  # noqa: E402
from trainers.selfplay.runner import MatchResult, new_slots, play_batch, play_match  # noqa: E402
from trainers.selfplay.trainer import PpoShogiTrainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(blocks=1, channels=8, games_per_batch=4, rollout_plies=48, ply_limit=40, num_minibatches=4,
            update_epochs=2, eval_every=1, eval_games=4, final_eval_games=0, snapshot_every=2,
            snapshot_prob=0.5, pool_size=2, max_iterations=8, patience=0, lr=3e-3, checkpoint_every=1)


def usi_of(player, sfen: str, seeds=range(5)) -> set[str]:
    """The moves `player` chooses in `sfen` over a few seeds (its tie-breaks are random)."""
    return {cshogi.move_to_usi(player([Game(sfen=sfen)], np.random.default_rng(seed))[0]) for seed in seeds}


# ---------------------------------------------------------------- the ladder on hand-set positions
# White's king on 5a, Black's pawn on 5c and a gold in hand: G*5b mates. A white rook on 1e hangs
# to Black's lance on 1i (the mate is worth more than the rook).
MATE_OR_ROOK = "4k4/9/4P4/9/8r/9/9/9/4K3L b G 1"
ROOK_HANGS = "4k4/9/9/9/8r/9/9/9/4K3L b - 1"
# Black's rook on 5h can take the pawn on 5f, which White's gold on 5e protects: the gold then
# takes the rook.
PROTECTED_PAWN = "4k4/9/9/9/4g4/4p4/9/4R4/4K4 b - 1"


@pytest.mark.parametrize("player", [one_ply_player, two_ply_player])
def test_the_searching_players_mate_in_one_before_taking_a_rook(player):
    assert usi_of(player, MATE_OR_ROOK) == {"G*5b"}
    game = Game(sfen=MATE_OR_ROOK)
    end = game.push(player([game], np.random.default_rng(0))[0])
    assert end is not None and end.winner == cshogi.BLACK


def test_one_ply_takes_the_hanging_piece():
    assert usi_of(one_ply_player, ROOK_HANGS) == {"1i1e"}


def test_one_ply_takes_a_protected_pawn_and_two_ply_refuses_to_lose_the_rook():
    assert usi_of(one_ply_player, PROTECTED_PAWN) == {"5h5f"}
    chosen = usi_of(two_ply_player, PROTECTED_PAWN, seeds=range(10))
    assert "5h5f" not in chosen and len(chosen) > 1   # some safe move, chosen at random among equals


def test_the_ladder_rises():
    one_ply = play_match(one_ply_player, LADDER["random"], games=4, ply_limit=300, seed=0)
    two_ply = play_match(two_ply_player, LADDER["capture_first"], games=4, ply_limit=300, seed=0)
    assert one_ply.wins >= 3 and two_ply.wins >= 3


# ---------------------------------------------------------------- selection
def result(score: float, games: int = 10) -> MatchResult:
    wins = round(score * games)
    return MatchResult(scores=[1.0] * wins + [0.0] * (games - wins), wins=wins, losses=games - wins, draws=0,
                       plies=100 * games)


class Scripted:
    """Stands in for the evaluation games only: a scripted outcome per iteration (everything
    else, the collection, the update, selection and checkpoints, is the real trainer). Results
    come back `delay` iterations after their evaluation was submitted, as with evaluation actors."""

    def __init__(self, outcomes, delay: int = 0, now=lambda: 0):
        self.outcomes, self.delay, self.now = outcomes, delay, now
        self.submitted: list[tuple[int, dict]] = []     # (iteration, weights that played)
        self.waiting: list[Evaluation] = []

    def submit(self, matches):
        iteration = matches[0].iteration
        self.submitted.append((iteration, copy.deepcopy(matches[0].weights)))
        evaluation = Evaluation(iteration)
        for match in matches:
            evaluation.results[match.opponent] = result(self.outcomes(iteration, match.opponent))
            evaluation.labels[match.opponent] = match.opponent_label or match.opponent
        self.waiting.append(evaluation)

    def poll(self, wait=False):
        ready = [e for e in self.waiting if wait or e.iteration <= self.now() - self.delay]
        self.waiting = [e for e in self.waiting if e not in ready]
        return ready

    def pending(self):
        return [e.iteration for e in self.waiting]

    def counters(self):
        return {}

    def close(self):
        pass


def saturating(iteration: int, opponent: str) -> float:
    """win_rate_random is 1.0 from iteration 2 on; the one-ply player is beaten only at 6."""
    if opponent == "random":
        return 0.5 if iteration == 1 else 1.0
    if opponent == "one_ply":
        return {6: 0.7, 7: 0.3}.get(iteration, 0.0)
    return 0.0


def scripted_trainer(tmp_path, delay=0, **values):
    config = PpoShogiConfig(**{**TINY, **values})

    class Trainer(PpoShogiTrainer):
        def setup(self):
            super().setup()
            self.evaluator = Scripted(saturating, delay, now=lambda: self.iteration + 1)

    return Trainer(config, LocalContext("ppo-shogi", tmp_path))


@pytest.mark.parametrize("delay", [0, 2])
def test_selection_picks_the_later_stronger_state_not_the_first_saturated_one(tmp_path, delay):
    trainer = scripted_trainer(tmp_path, delay)
    result_ = trainer.fit()
    assert result_.best_iteration == 6 and result_.final_metrics["final_weights_iteration"] == 6
    played = dict(trainer.evaluator.submitted)
    # results two iterations late: a due evaluation waits for the one in flight
    assert sorted(played) == ([1, 2, 4, 6, 8] if delay else list(range(1, 9)))
    # the model holds the weights that played iteration 6's evaluation, not those of iteration 8
    state = {k: v for k, v in trainer.network.state_dict().items()}
    assert all(torch.equal(state[k], played[6][k]) for k in state)
    assert not all(torch.equal(state[k], played[8][k]) for k in state)
    # each evaluation's metrics come tagged with the iteration whose weights played
    tagged = [row["eval_iteration"] for row in result_.history]
    assert all(e <= row["iteration"] for e, row in zip(tagged, result_.history))
    if delay:
        assert tagged[:5] == [1, 1, 1, 2, 2] and result_.history[2]["eval_pending"] == 1
    # the checkpoint says which iteration's weights it holds, and keeps the last iteration's too
    payload = load_checkpoint(sorted((tmp_path / "checkpoints").iterdir())[-1] / "state.pt")
    extra = payload["trainer"]["extra"]
    assert extra["weights_iteration"] == 6 and extra["last"]["iteration"] == 8
    assert all(torch.equal(extra["last"]["weights"][k], played[8][k]) for k in state)


def test_selection_by_win_rate_random_stops_at_the_first_saturated_state(tmp_path):
    result_ = scripted_trainer(tmp_path, metric="win_rate_random").fit()
    assert result_.best_iteration == 2


def test_ladder_score_sums_score_rates():
    results = {"random": result(1.0), "capture_first": result(0.5), "one_ply": result(0.2)}
    assert ladder_score(results, ["random", "capture_first", "one_ply"]) == pytest.approx(1.7)


# ---------------------------------------------------------------- the behaviour log-probs
def test_the_ppo_ratio_is_taken_against_the_stored_behaviour_log_probs():
    """A batch collected one update ago: with its stored log-probs the ratio starts at 1 (no
    clipping); told that the behaviour policy was e times less likely, every ratio starts at e."""
    config = PpoShogiConfig(**{**TINY, "update_epochs": 1, "num_minibatches": 1})
    network = ActorCritic(1, 8)
    batch = play_batch(lambda f, m: network_policy(network, f, m), new_slots(4, 40), 48, gamma=1.0,
                       gae_lambda=0.8, seed=0)
    frozen = copy.deepcopy(network.state_dict())
    for shift, clipped in ((0.0, 0.0), (-1.0, 1.0)):
        network.load_state_dict(frozen)
        optimizer = torch.optim.SGD(network.parameters(), lr=0.0)
        stale = copy.copy(batch)
        stale.log_probs = batch.log_probs + np.float32(shift)
        metrics = ppo_update(network, optimizer, stale, config, torch.Generator().manual_seed(0))
        assert metrics["clip_fraction"] == pytest.approx(clipped)


def network_policy(network, features, masks):
    from trainers.selfplay.network import make_policy_fn
    return make_policy_fn(network, "cpu")(features, masks)


# ---------------------------------------------------------------- bad input
def test_bad_ladder_names_and_staleness_are_refused_with_the_field():
    with pytest.raises(ConfigError, match="ladder"):
        build_config(PpoShogiConfig, {"ladder": ["random", "three_ply"]})
    with pytest.raises(ConfigError, match="staleness"):
        build_config(PpoShogiConfig, {"staleness": -1})


@pytest.mark.parametrize("setting", ["ladder=[random,stockfish]", "staleness=-1"])
def test_bad_ladder_or_staleness_exit_2_before_ray(setting, capsys):
    import run

    ray = sys.modules.get("ray")
    started = ray is not None and ray.is_initialized()
    assert run.main(["--algorithm", "ppo-shogi", "--set", setting]) == 2
    err = capsys.readouterr().err
    assert setting.split("=")[0] in err and ("stockfish" in err or ">= 0" in err or "greater" in err), err
    assert (ray is not None and ray.is_initialized()) == started   # refused before Ray was started


# ---------------------------------------------------------------- the evaluate command
def test_the_evaluate_command_plays_either_weight_set(tmp_path, capsys):
    from trainers.selfplay import evaluate

    trainer = scripted_trainer(tmp_path, max_iterations=3)
    trainer.fit()
    checkpoint = sorted((tmp_path / "checkpoints").iterdir())[-1]
    for weights, iteration in (("selected", trainer.early_stopping.best_iteration + 1), ("last", 3)):
        out = tmp_path / f"{weights}.json"
        assert evaluate.main([str(checkpoint), "--weights", weights, "--games", "2", "--opponents", "random,one_ply",
                              "--ply-limit", "30", "--out", str(out)]) == 0
        report = json.loads(out.read_text())
        assert report["weights_iteration"] == iteration
        assert set(report["opponents"]) == {"random", "one_ply"}
        assert all(row["games"] == 2 for row in report["opponents"].values())
    with pytest.raises(SystemExit) as bad:
        evaluate.main([str(checkpoint), "--opponents", "three_ply"])
    assert bad.value.code == 2 and "three_ply" in capsys.readouterr().err


def test_the_in_process_evaluation_climbs_the_ladder():
    """A rung is played only after the learner scored >= 1/2 against the one below it."""
    from trainers.selfplay.evaluation import LocalEvaluator, Match, score_rate

    config = PpoShogiConfig(**{**TINY, "ply_limit": 40})
    weights = ActorCritic(1, 8).state_dict()
    evaluator = LocalEvaluator(config)
    for seed in range(3):
        evaluator.submit([Match(1, name, 4, seed, weights) for name in LADDER])
        (evaluation,) = evaluator.poll()
        played = [name for name in LADDER if name in evaluation.results]
        assert played == list(LADDER)[:len(played)] and played[0] == "random"
        for below, above in zip(played, list(LADDER)[1:]):
            assert (above in evaluation.results) == (score_rate(evaluation.results[below]) >= 0.5)
        assert ladder_score(evaluation.results, list(LADDER)) == pytest.approx(
            sum(score_rate(evaluation.results[name]) for name in played))


# ---------------------------------------------------------------- the network's value searches
class MaterialAgent:
    """Builds a `NetworkAgent` whose value head is replaced by the material balance from the side
    to move's view (a unit test of the search, not of a network): the policy is uniform except
    for the labels `favoured` (+10) and `shunned` (-10). `sizes` records each forward's batch."""

    @staticmethod
    def make(width: int, depth: int, favoured=(), shunned=()):
        from trainers.selfplay.agents import NetworkAgent
        from trainers.selfplay.game import N_LABELS, material_balance

        sizes: list[int] = []

        def policy_fn(features, masks):
            logits = torch.zeros(len(features), N_LABELS)
            logits[:, list(favoured)] = 10.0
            logits[:, list(shunned)] = -10.0
            return logits.masked_fill(~torch.from_numpy(masks), float("-inf")), torch.zeros(len(features))

        class Agent(NetworkAgent):
            def forward(self, positions):
                logits, _ = super().forward(positions)
                sizes.append(len(positions))
                return logits, torch.tensor([material_balance(p.board, p.board.turn) for p in positions])

        agent = Agent(policy_fn, search_width=width, depth=depth)
        agent.sizes = sizes
        return agent


def test_value2_refuses_the_capture_that_loses_the_rook_and_value1_takes_it():
    # every move searched, every reply: one ply deep 5h5f wins a pawn; two plies deep the gold
    # takes the rook back
    assert usi_of(MaterialAgent.make(600, depth=1), PROTECTED_PAWN) == {"5h5f"}
    assert "5h5f" not in usi_of(MaterialAgent.make(600, depth=2), PROTECTED_PAWN)
    # narrow: the policy ranks the capture first at the root and the recapture last at the child,
    # yet value2 searches it (every capture reply is); value1 still takes the pawn
    board = cshogi.Board(PROTECTED_PAWN)
    capture = board.move_from_usi("5h5f")
    board.push(capture)
    recapture = board.move_from_usi("5e5f")
    assert board.is_legal(recapture)
    favoured = [dlshogi.make_move_label(capture, cshogi.BLACK)]
    shunned = [dlshogi.make_move_label(recapture, cshogi.WHITE)]
    assert usi_of(MaterialAgent.make(3, 1, favoured, shunned), PROTECTED_PAWN) == {"5h5f"}
    narrow = MaterialAgent.make(3, 2, favoured, shunned)
    games = [Game(sfen=PROTECTED_PAWN), Game(sfen=PROTECTED_PAWN), Game(sfen=MATE_OR_ROOK)]
    moves = [cshogi.move_to_usi(move) for move in narrow(games, np.random.default_rng(0))]
    assert "5h5f" not in moves[:2] and moves[2] == "G*5b"
    # batched: the roots, then both searched games' 3 children, then all their leaves: three forwards
    assert len(narrow.sizes) == 3 and narrow.sizes[:2] == [3, 6]


def test_value2_mates_in_one_and_avoids_a_mate_in_one():
    assert usi_of(MaterialAgent.make(8, depth=2), MATE_OR_ROOK) == {"G*5b"}
    # the same position, White to move: Black threatens G*5b mate; value2 plays only moves after
    # which Black has no mate in one (there are some: the rook guarding 5b, checks, king moves)
    sfen = "4k4/9/4P4/9/8r/9/9/9/4K3L w G 1"
    agent = MaterialAgent.make(600, depth=2)
    for seed in range(3):
        game = Game(sfen=sfen)
        game.push(agent([game], np.random.default_rng(seed))[0])
        assert not opponent_mates(game.board, game.legal), game.board.sfen()


def test_an_unknown_play_search_is_refused_with_the_field_and_the_choices():
    with pytest.raises(ConfigError, match="play_search") as error:
        build_config(PpoShogiConfig, {"play_search": "value3"})
    assert "value2" in str(error.value)
    assert build_config(PpoShogiConfig, {"play_search": "value2"}).play_search == "value2"
