"""`ppo-shogi`: rules, encoding, GAE, PPO clip, Elo, the lockstep runner, exact resume.

Tiny networks and short games; single-threaded torch (the `one_thread` fixture).
"""
from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

cshogi = pytest.importorskip("cshogi")

from trainers.config import ConfigError, build_config  # noqa: E402
from trainers.context import LocalContext  # noqa: E402
from trainers.selfplay.agents import (EloTable, NetworkAgent, OpponentPool, capture_first_agent,  # noqa: E402
                                      random_agent)
from trainers.selfplay.config import PpoShogiConfig  # noqa: E402
from trainers.selfplay.game import (FEATURE_PLANES, N_LABELS, NO_LEGAL_MOVE, PERPETUAL_CHECK, PLY_LIMIT, REPETITION,  # noqa: E402
                                    Game, encode, encode_batch, feature_buffer, mask_buffer, move_label,
                                    pack_features, pack_masks, unpack_features, unpack_features_tensor,
                                    unpack_bits, unpack_masks, unpack_masks_tensor)
import trainers.selfplay.network as network_module  # noqa: E402
import trainers.selfplay.ppo as ppo_module  # noqa: E402
from trainers.precision import uses_amp  # noqa: E402
from trainers.selfplay.network import ActorCritic, make_policy_fn  # noqa: E402
from trainers.selfplay.ppo import clipped_surrogate, masked_entropy, ppo_update  # noqa: E402
from trainers.selfplay.runner import (ExperienceBatch, GameSlot, gae, new_slots, play_batch,  # noqa: E402
                                      play_match, sample_legal)
from trainers.selfplay.sources import InProcessSource  # noqa: E402
from trainers.selfplay.trainer import PpoShogiTrainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(blocks=1, channels=8, games_per_batch=4, rollout_plies=48, ply_limit=40, num_minibatches=4,
            update_epochs=2, eval_every=2, eval_games=4, final_eval_games=4, snapshot_every=2,
            snapshot_prob=0.5, pool_size=2, max_iterations=5, patience=0, lr=3e-3, checkpoint_every=1)


def play_usi(game: Game, moves: list[str]):
    end = None
    for usi in moves:
        move = game.board.move_from_usi(usi)
        assert move in game.legal, f"{usi} is not legal in {game.board.sfen()}"
        assert end is None, f"the game ended before {usi}"
        end = game.push(move)
    return end


# ---------------------------------------------------------------- rules
def test_a_drop():
    game = Game(sfen="4k4/9/9/9/9/9/9/9/4K4 b P 1")  # Black holds a pawn
    drops = [m for m in game.legal if cshogi.move_is_drop(m)]
    assert drops and all(cshogi.move_drop_hand_piece(m) == cshogi.HPAWN for m in drops)
    assert not any(cshogi.move_to_usi(m).endswith("a") for m in drops)  # no pawn on the last rank
    assert play_usi(game, ["P*5e"]) is None
    assert game.board.piece(cshogi.E5) == cshogi.BPAWN and game.board.pieces_in_hand[0][0] == 0


def test_a_promotion():
    game = Game()
    play_usi(game, ["7g7f", "3c3d"])
    promoting = [m for m in game.legal if cshogi.move_is_promotion(m)]
    assert sorted(cshogi.move_to_usi(m) for m in promoting) == ["8h2b+", "8h3c+"]  # the bishop enters the zone
    play_usi(game, ["8h2b+"])
    assert game.board.piece(cshogi.B2) == cshogi.BPROM_BISHOP
    assert game.board.pieces_in_hand[0][cshogi.HBISHOP] == 1


def test_fourfold_repetition_is_a_draw():
    game = Game()
    shuffle = ["5i5h", "5a5b", "5h5i", "5b5a"]
    assert play_usi(game, shuffle * 2) is None          # the start position has occurred 3 times
    assert cshogi.Board(game.board.sfen()).is_draw() == cshogi.NOT_REPETITION  # cshogi alone sees none
    assert game.board.is_draw() == cshogi.REPETITION_DRAW                      # cshogi's rule: the first recurrence
    end = play_usi(game, shuffle)                        # ... and the fourth time
    assert end.reason == REPETITION and end.winner is None and not end.truncated
    assert game.plies == 12 and end.reward(cshogi.BLACK) == end.reward(cshogi.WHITE) == 0


def test_perpetual_check_loses_for_the_checker():
    # Black's rook checks the White king from 5i and 4i; the king shuttles between 5a and 4a
    game = Game(sfen="4k4/9/9/9/9/9/9/9/4R3K w - 1")
    end = play_usi(game, ["5a4a", "5i4i", "4a5a", "4i5i"] * 3)
    assert end.reason == PERPETUAL_CHECK and end.winner == cshogi.WHITE
    assert end.reward(cshogi.BLACK) == -1 and end.reward(cshogi.WHITE) == 1
    assert game.board.is_draw() == cshogi.REPETITION_WIN  # cshogi agrees: the side to move (White) wins


def test_no_legal_move_loses():
    game = Game(sfen="4k4/9/4P4/9/9/9/9/9/8K b G 1")
    end = play_usi(game, ["G*5b"])  # gold dropped on 5b, guarded by the pawn: mate
    assert end.reason == NO_LEGAL_MOVE and end.winner == cshogi.BLACK and game.legal == []
    with pytest.raises(RuntimeError):
        game.push(0)


def test_ply_limit_is_a_truncation():
    game = Game(ply_limit=6)
    end = play_usi(game, ["7g7f", "3c3d", "2g2f", "8c8d", "2f2e", "8d8e"])
    assert end.reason == PLY_LIMIT and end.truncated and end.winner is None
    assert len(game.legal) > 0  # the game could go on: the learner bootstraps here


def test_game_replays_from_its_moves():
    game = Game(ply_limit=100)
    rng = np.random.default_rng(0)
    for _ in range(30):
        game.push(random_agent([game], rng)[0])
    copy = Game.from_moves(game.moves, 100)
    assert copy.board.sfen() == game.board.sfen() and copy.counts == game.counts and copy.legal == game.legal


# ---------------------------------------------------------------- encoding
def test_features_labels_and_masks_rotate_for_white():
    game = Game()
    play_usi(game, ["7g7f", "3c3d", "2g2f"])                       # White to move
    mirrored = Game(sfen=cshogi.rotate_sfen(game.board.sfen()))    # the same position seen by Black
    assert game.turn == cshogi.WHITE and mirrored.turn == cshogi.BLACK
    features, masks = feature_buffer(2), mask_buffer(2)
    labels = encode(game, features[0], masks[0])
    mirrored_labels = encode(mirrored, features[1], masks[1])
    assert np.array_equal(features[0], features[1]) and features[0].sum() > 0
    assert np.array_equal(masks[0], masks[1])
    for move, label in zip(game.legal, labels):  # a White move's label = its rotated move's label for Black
        rotated = cshogi.move_rotate(move)
        assert rotated in mirrored.legal
        assert label == move_label(rotated, cshogi.BLACK) == mirrored_labels[mirrored.legal.index(rotated)]


def test_labels_round_trip_over_random_games():
    rng = np.random.default_rng(1)
    features, mask = feature_buffer(1)[0], mask_buffer(1)[0]
    positions = 0
    for _ in range(4):
        game = Game(ply_limit=150)
        while game.end is None:
            labels = encode(game, features, mask)
            assert len(set(labels)) == len(labels) == int(mask.sum())      # no collisions
            assert all(0 <= label < N_LABELS for label in labels)
            for move, label in zip(game.legal, labels):                    # label -> move -> label
                assert game.legal[labels.index(label)] == move and move_label(move, game.turn) == label
            assert set(np.unique(features)) <= {0.0, 1.0}
            game.push(random_agent([game], rng)[0])
            positions += 1
    assert positions > 300


def test_batched_encoding_equals_cshogi_labels():
    """encode_batch computes the labels itself: they must be cshogi's make_move_label."""
    rng = np.random.default_rng(2)
    games = []
    for _ in range(24):
        game = Game(ply_limit=400)
        for _ in range(int(rng.integers(0, 300))):
            if game.end is not None:
                break
            game.push(random_agent([game], rng)[0])
        if game.end is None:
            games.append(game)
    features, masks = feature_buffer(len(games)), mask_buffer(len(games))
    labels, counts = encode_batch(games, features, masks)
    one_features, one_mask = feature_buffer(1)[0], mask_buffer(1)[0]
    start = 0
    for i, game in enumerate(games):
        expected = encode(game, one_features, one_mask)
        assert labels[start:start + counts[i]].tolist() == expected
        assert np.array_equal(features[i], one_features) and np.array_equal(masks[i], one_mask)
        start += counts[i]
    assert sum(cshogi.move_is_drop(m) for g in games for m in g.legal) > 100  # drops were covered
    assert np.array_equal(unpack_features(pack_features(features)), features)    # storage round trip
    packed = torch.from_numpy(pack_features(features))  # the learner's unpacking, on a tensor's device
    assert torch.equal(unpack_features_tensor(packed), torch.from_numpy(features))
    # the bit ops of a GPU (a CPU takes numpy's unpackbits), run here on CPU tensors
    unpacked = unpack_bits(packed, FEATURE_PLANES * 81).view(features.shape).float()
    assert torch.equal(unpacked, torch.from_numpy(features))
    assert np.array_equal(unpack_masks(pack_masks(masks)), masks)
    assert torch.equal(unpack_masks_tensor(torch.from_numpy(pack_masks(masks))), torch.from_numpy(masks))
    assert torch.equal(unpack_bits(torch.from_numpy(pack_masks(masks)), N_LABELS), torch.from_numpy(masks))


def test_sampling_is_over_legal_moves_with_the_policy_probabilities():
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0]]).repeat(100_000, 1)
    legal = np.tile([0, 1, 3], 100_000)   # label 2 has the largest logit but is illegal
    counts = np.full(100_000, 3)
    picks, labels, log_probs = sample_legal(logits.numpy(), legal, counts, np.random.default_rng(0))
    assert set(labels.tolist()) == {0, 1, 3}
    expected = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0).numpy()
    assert np.allclose(np.bincount(picks, minlength=3) / 100_000, expected, atol=0.01)
    full = torch.log_softmax(logits[0].masked_fill(torch.tensor([False, False, True, False]), float("-inf")), 0)
    assert np.allclose(log_probs, full[labels].numpy(), atol=1e-6)


def test_network_shapes_and_value_range():
    network = ActorCritic(blocks=2, channels=16)
    logits, values = network(torch.rand(3, 119, 9, 9))
    assert logits.shape == (3, N_LABELS) and values.shape == (3,)
    assert values.abs().max() <= 1


# ---------------------------------------------------------------- GAE and PPO
def test_gae_by_hand():
    rewards = np.array([0.0, 0.0, 1.0])
    values = np.array([0.5, 0.6, 0.7])
    # terminal: delta2 = 1 - .7; delta1 = .9*.7 - .6; delta0 = .9*.6 - .5; A_t = delta_t + .72 A_t+1
    assert np.allclose(gae(rewards, values, 0.0, 0.9, 0.8), [0.21712, 0.246, 0.3])
    # cut with bootstrap 0.4: delta2 = .9*.4 - .7 = -.34
    assert np.allclose(gae(np.zeros(3), values, 0.4, 0.9, 0.8), [-0.114656, -0.2148, -0.34])


def test_clipped_surrogate_by_hand():
    ratios = torch.tensor([1.5, 0.5, 0.5, 1.1])
    advantages = torch.tensor([1.0, 1.0, -1.0, 2.0])
    log_ratio = ratios.log().requires_grad_()
    loss = clipped_surrogate(log_ratio, advantages, clip_coef=0.2)
    # objectives: min(1.5, 1.2) = 1.2 (clipped); min(.5, .8) = .5; min(-.5, -.8) = -.8 (clipped); min(2.2, 2.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 0.8 + 2.2) / 4)
    loss.backward()
    # clipped entries pass no gradient; the others -A * r / n
    assert torch.allclose(log_ratio.grad, torch.tensor([0.0, -0.5 / 4, 0.0, -2.2 / 4]))


def test_masked_entropy_is_the_entropy_over_legal_moves():
    masks = torch.tensor([[True, True, False, False], [True, True, True, True]])
    log_probs = torch.log_softmax(torch.zeros(2, 4).masked_fill(~masks, float("-inf")), dim=1)
    assert torch.allclose(masked_entropy(log_probs, masks), torch.tensor([np.log(2), np.log(4)]).float())


def hand_made_batch(network: ActorCritic, n: int = 16) -> ExperienceBatch:
    """n copies of the start position: even rows played the first legal move with advantage +1,
    odd rows the second with advantage -1."""
    game = Game()
    features, masks = feature_buffer(n), mask_buffer(n)
    labels = [encode(game, features[i], masks[i]) for i in range(n)]
    actions = np.array([labels[0][i % 2] for i in range(n)])
    with torch.no_grad():
        logits, values = make_policy_fn(network)(features, masks)
    log_probs = torch.log_softmax(logits, 1)[torch.arange(n), torch.from_numpy(actions)].numpy()
    advantages = np.where(np.arange(n) % 2 == 0, 1.0, -1.0).astype(np.float32)
    zeros = np.zeros(n, dtype=np.float32)
    return ExperienceBatch(features=pack_features(features), masks=pack_masks(masks), actions=actions,
                           log_probs=log_probs, values=values.numpy(), rewards=zeros, dones=np.zeros(n, bool),
                           truncations=np.zeros(n, bool), advantages=advantages, returns=advantages,
                           trajectories=np.arange(n))


def test_ppo_update_follows_the_advantages_and_clips():
    torch.manual_seed(0)
    network = ActorCritic(blocks=1, channels=8)
    batch = hand_made_batch(network)
    config = PpoShogiConfig(update_epochs=4, num_minibatches=2, lr=1e-2, ent_coef=0.0, rollout_plies=64)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    metrics = ppo_update(network, optimizer, batch, config, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = make_policy_fn(network)(unpack_features(batch.features), unpack_masks(batch.masks))
    new = torch.log_softmax(logits, 1)[torch.arange(16), torch.from_numpy(batch.actions)].numpy()
    assert np.all(new[0::2] > batch.log_probs[0::2]) and np.all(new[1::2] < batch.log_probs[1::2])
    assert metrics["clip_fraction"] > 0 and metrics["update_epochs_run"] == 4


def test_target_kl_stops_the_epochs():
    torch.manual_seed(0)
    network = ActorCritic(blocks=1, channels=8)
    batch = hand_made_batch(network)
    config = PpoShogiConfig(update_epochs=10, num_minibatches=2, lr=5e-2, rollout_plies=64, target_kl=1e-4)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    seen = []
    metrics = ppo_update(network, optimizer, batch, config, torch.Generator().manual_seed(0),
                         average=lambda values: seen.append(values) or values)
    assert metrics["update_epochs_run"] < 10 and len(seen) == metrics["update_epochs_run"]


@pytest.mark.parametrize("knob", [{"clip_coef": 0.05}, {"ent_coef": 0.2}, {"vf_coef": 3.0}, {"max_grad_norm": 0.01},
                                  {"update_epochs": 2}, {"num_minibatches": 1}])
def test_every_update_knob_acts(knob):
    def updated(**values):
        torch.manual_seed(0)
        network = ActorCritic(blocks=1, channels=8)
        batch = hand_made_batch(network)
        config = PpoShogiConfig(**{"update_epochs": 3, "num_minibatches": 2, "lr": 1e-2, "rollout_plies": 64,
                                   **values})
        optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
        ppo_update(network, optimizer, batch, config, torch.Generator().manual_seed(0))
        return torch.cat([p.detach().flatten() for p in network.parameters()])

    assert not torch.allclose(updated(), updated(**knob))


# ---------------------------------------------------------------- Elo, agents, pool
def test_elo_by_hand():
    table = EloTable(k=32)
    table.add("a", 1500.0)
    table.add("b", 1400.0)
    assert table.expected(1500, 1400) == pytest.approx(0.640065, abs=1e-6)
    table.update("a", "b", 1.0)
    assert table.ratings["a"] == pytest.approx(1511.5179, abs=1e-3)
    assert table.ratings["b"] == pytest.approx(1388.4821, abs=1e-3)
    before = table.ratings["a"]
    table.update("a", "random", 0.5)  # a draw against the anchor, which never moves
    assert table.ratings["random"] == 0.0
    assert table.ratings["a"] == pytest.approx(before + 32 * (0.5 - 1 / (1 + 10 ** (-before / 400))))


def test_capture_first_beats_random_and_colours_alternate():
    result = play_match(capture_first_agent, random_agent, games=8, ply_limit=512, seed=0)
    assert result.games == 8 and result.wins >= 6 and result.wins + result.losses + result.draws == 8
    swapped = play_match(random_agent, capture_first_agent, games=8, ply_limit=512, seed=0)
    assert swapped.losses >= 6


def test_greedy_agent_plays_the_most_probable_move():
    favourite = move_label(Game().board.move_from_usi("2g2f"), cshogi.BLACK)

    def policy_fn(features, masks):
        logits = torch.zeros(len(features), N_LABELS)
        logits[:, favourite] = 3.0
        return logits.masked_fill(~torch.from_numpy(masks), float("-inf")), torch.zeros(len(features))

    rng = np.random.default_rng(0)
    greedy = [NetworkAgent(policy_fn, greedy=True)([Game()], rng)[0] for _ in range(20)]
    sampled = [NetworkAgent(policy_fn, greedy=False)([Game()], rng)[0] for _ in range(20)]
    assert {cshogi.move_to_usi(m) for m in greedy} == {"2g2f"}
    assert len(set(sampled)) > 1


def test_opponent_pool_keeps_the_newest():
    pool = OpponentPool(size=2)
    for number in range(3):
        pool.add(f"s{number}", {"w": torch.full((2,), float(number))})
    assert pool.names == ["s1", "s2"] and pool.latest()[0] == "s2"
    assert pool.sample(np.random.default_rng(0))[0] in ("s1", "s2")


# ---------------------------------------------------------------- the runner
class CountingPolicy:
    """Uniform policy; the value is 0.01 x the call number, so a row's value tells its ply."""

    def __init__(self):
        self.calls, self.sizes = 0, []

    def __call__(self, features, masks):
        self.calls += 1
        self.sizes.append(len(features))
        logits = torch.zeros(len(features), N_LABELS).masked_fill(~torch.from_numpy(masks), float("-inf"))
        return logits, torch.full((len(features),), 0.01 * self.calls)


def test_one_batched_forward_per_ply():
    policy = CountingPolicy()
    slots = new_slots(4, ply_limit=10)
    batch = play_batch(policy, slots, 40, gamma=1.0, gae_lambda=1.0, seed=0)
    # 10 plies of 4 games (all truncated at the ply limit), then one forward for the bootstraps
    assert policy.sizes == [4] * 10 + [4]
    assert batch.stats["forwards"] == 10 and batch.stats["bootstrap_forwards"] == 1
    assert batch.stats["plies"] == 40 and len(batch) == 40 and batch.stats["games"] == 4


def test_against_a_snapshot_at_most_two_forwards_per_ply():
    learner, opponent = CountingPolicy(), CountingPolicy()
    slots = [GameSlot(Game(10), (True, False)), GameSlot(Game(10), (False, True)), GameSlot(Game(10), (True, True))]
    batch = play_batch(learner, slots, 20, gamma=1.0, gae_lambda=1.0, seed=0, opponent_fn=opponent, snapshot_prob=1.0)
    assert learner.calls == 10 + 1 and opponent.calls == 10
    assert learner.sizes[:-1] == [2] * 10 and opponent.sizes == [1] * 10
    assert len(batch) == 20  # the learner's moves only: 5 + 5 + 10
    assert batch.stats["snapshot_games"] == 2
    assert all(sum(slot.learner) == 1 for slot in slots)  # snapshot_prob 1: every new game faces the snapshot
    assert pickle.loads(pickle.dumps(batch)).actions.tolist() == batch.actions.tolist()  # ships through Ray


def test_trajectories_are_per_player_and_bootstrap_at_the_ply_limit():
    policy = CountingPolicy()
    gamma, lam, limit = 0.9, 0.8, 12
    batch = play_batch(policy, new_slots(2, ply_limit=limit), 2 * limit, gamma=gamma, gae_lambda=lam, seed=3)
    assert len(np.unique(batch.trajectories)) == 4    # 2 games x 2 players
    final_value = 0.01 * (limit + 1)                  # the bootstrap forward
    for number in np.unique(batch.trajectories):
        rows = np.flatnonzero(batch.trajectories == number)
        plies = np.round(batch.values[rows] / 0.01).astype(int)   # the call number of each move
        assert np.all(np.diff(plies) == 2)                         # one player: every other ply
        assert batch.truncations[rows[-1]] and not batch.dones.any()
        bootstrap = -final_value if plies[-1] == limit else final_value  # moved last: the opponent is to move
        rewards, values = batch.rewards[rows], batch.values[rows]
        expected = gae(rewards, values, bootstrap, gamma, lam)
        assert np.allclose(batch.advantages[rows], expected, atol=1e-6)
        assert np.allclose(batch.returns[rows], expected + values, atol=1e-6)


def test_game_ends_give_results_and_games_carry_over():
    policy = CountingPolicy()
    slots = [GameSlot(Game(ply_limit=6), (True, True)), GameSlot(Game(ply_limit=9), (True, True))]
    batch = play_batch(policy, slots, 5, gamma=1.0, gae_lambda=1.0, seed=0, ply_limit=9)
    # the first game ends at ply 6 (6 learner moves >= 5): the second goes on, 6 moves recorded
    assert batch.stats["games"] == 1 and len(batch) == 6 and batch.truncations.sum() == 2
    assert slots[1].game.plies == 6 and len(slots[1].plies) == 6 and slots[0].game.plies == 0
    again = play_batch(policy, slots, 5, gamma=1.0, gae_lambda=1.0, seed=1, ply_limit=9)
    assert again.stats["games"] == 1 and len(again) == 9  # the carried game: 6 old moves + 3 new
    mate = [GameSlot(Game(sfen="4k4/9/4P4/9/9/9/9/9/8K b G 1"), (True, True))]
    rewarded = play_batch(_always("G*5b", CountingPolicy()), mate, 1, gamma=1.0, gae_lambda=1.0, seed=0)
    assert len(rewarded) == 1 and rewarded.rewards[0] == 1.0 and rewarded.dones[0]
    assert rewarded.advantages[0] == pytest.approx(1.0 - rewarded.values[0]) and rewarded.returns[0] == 1.0


def _always(usi: str, fallback: CountingPolicy):
    """A policy that plays `usi` where it is legal (else uniform)."""
    def policy_fn(features, masks):
        logits, values = fallback(features, masks)
        board = Game(sfen="4k4/9/4P4/9/9/9/9/9/8K b G 1").board
        label = move_label(board.move_from_usi(usi), cshogi.BLACK)
        logits[torch.from_numpy(masks[:, label]), label] = 50.0
        return logits, values
    return policy_fn


def test_batches_shard_and_concatenate():
    batch = play_batch(CountingPolicy(), new_slots(3, 7), 21, gamma=1.0, gae_lambda=1.0, seed=0)
    halves = [batch.shard(rank, 2) for rank in range(2)]
    assert len(batch) == 21 and len(halves[0]) == len(halves[1]) == 10
    assert np.array_equal(halves[0].actions, batch.actions[0:20:2])
    assert np.array_equal(halves[1].actions, batch.actions[1:20:2])
    both = ExperienceBatch.concat([batch, batch])
    assert len(both) == 42 and both.stats["plies"] == 42
    assert len(np.unique(both.trajectories)) == 2 * len(np.unique(batch.trajectories)) == 12


def test_in_process_source_resumes_games_in_progress():
    config = PpoShogiConfig(**TINY)
    source = InProcessSource(config)
    source.slots[0] = GameSlot(Game(ply_limit=10), (True, True))   # ends first: the others are mid-game
    weights = ActorCritic(config.blocks, config.channels).state_dict()
    source.collect(weights, 10, seed=0)
    assert [len(slot.plies) for slot in source.slots] == [0, 10, 10, 10]
    copy = InProcessSource(config)
    copy.load_state_dict(source.state_dict())
    for mine, theirs in zip(source.slots, copy.slots):
        assert mine.game.board.sfen() == theirs.game.board.sfen() and mine.actions == theirs.actions
        assert all(np.array_equal(a, b) for a, b in zip(mine.features, theirs.features))
        assert all(np.array_equal(a, b) for a, b in zip(mine.masks, theirs.masks))
    a, b = source.collect(weights, 24, seed=1)[0], copy.collect(weights, 24, seed=1)[0]
    assert np.array_equal(a.actions, b.actions) and np.array_equal(a.advantages, b.advantages)
    assert np.array_equal(a.features, b.features)
    assert source.batches_received == 2 and a.sequence == 1 and source.plies_received == 10 * 4 + 30 * 4


# ---------------------------------------------------------------- the trainer
class Staggered(PpoShogiTrainer):
    """The first game is short, so that later checkpoints catch games in progress."""

    def setup(self):
        super().setup()
        self.source.slots[0] = GameSlot(Game(ply_limit=10), (True, True))


def test_resume_is_exact(tmp_path):
    class Interrupted(Staggered):
        def on_iteration_end(self, iteration, metrics):
            if iteration == 3:
                raise KeyboardInterrupt  # dies after checkpoint 2 was written
            return False

    straight = Staggered(PpoShogiConfig(**TINY), LocalContext("ppo-shogi")).fit()
    with pytest.raises(KeyboardInterrupt):
        Interrupted(PpoShogiConfig(**TINY), LocalContext("ppo-shogi", tmp_path)).fit()
    trainer = Staggered(PpoShogiConfig(**TINY), LocalContext("ppo-shogi", tmp_path))
    resumed = trainer.fit()
    timing = TIMING
    assert len(straight.history) == len(resumed.history) == 5
    for a, b in zip(straight.history, resumed.history):
        a, b = ({k: v for k, v in row.items() if k not in timing} for row in (a, b))
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN-safe equality
    assert resumed.final_metrics == straight.final_metrics
    # what the checkpoint carries, and what the run wrote
    assert trainer.pool.names == ["iteration_2", "iteration_4"] and trainer.source.batches_received == 5
    elo = json.loads((tmp_path / "elo.json").read_text())
    assert elo["anchor"] == "random" and [row["iteration"] for row in elo["history"]] == [1, 2, 4, 5]
    assert (tmp_path / "figures" / "elo.png").is_file()


def test_trainer_reports_and_learns_nothing_silly():
    trainer = PpoShogiTrainer(PpoShogiConfig(**{**TINY, "max_iterations": 2, "final_eval_games": 0}),
                              LocalContext("ppo-shogi"))
    result = trainer.fit()
    last = result.history[-1]
    for key in ("win_rate_random", "win_rate_capture", "loss_rate_capture", "win_rate_snapshot", "elo",
                "policy_loss", "value_loss", "entropy", "approx_kl", "explained_variance", "games", "pool_size"):
        assert np.isfinite(last[key]), key
    assert last["learner_plies"] >= 48 and last["pool_size"] == 2
    assert result.final_metrics == {"final_weights_iteration": float(result.best_iteration)}


# ---------------------------------------------------------------- speed options
TIMING = {"iteration_seconds", "elapsed_seconds", "eval_seconds", "update_seconds", "collect_plies_per_second",
          "network_fraction", "collect_seconds"}


def one_iteration(**values) -> tuple[PpoShogiTrainer, dict]:
    """A TINY trainer after one iteration (collection, update, evaluation), and its metrics less timing."""
    config = PpoShogiConfig(**{**TINY, "max_iterations": 1, "final_eval_games": 0, **values})
    trainer = PpoShogiTrainer(config, LocalContext("ppo-shogi"))
    row = trainer.fit().history[-1]
    return trainer, {key: value for key, value in row.items() if key not in TIMING}


def test_mixed_precision_is_ignored_on_cpu():
    assert uses_amp(True, "cuda") and not uses_amp(True, "cpu") and not uses_amp(False, "cuda")
    _, plain = one_iteration()
    _, mixed = one_iteration(mixed_precision=True)
    assert json.dumps(plain, sort_keys=True) == json.dumps(mixed, sort_keys=True)  # NaN-safe equality


def test_mixed_precision_autocasts_the_forwards_and_keeps_float32_numbers(monkeypatch):
    """CPU bf16 autocast stands in for CUDA's: the update's, self-play's and evaluation's forwards
    run in bf16, while what is computed from them (log-softmax, losses, metrics) is float32."""
    _, plain = one_iteration()
    real_autocast, real_log_softmax = torch.autocast, torch.log_softmax
    monkeypatch.setattr(torch, "autocast", lambda device_type, dtype, **options: real_autocast("cpu", dtype=dtype, **options))
    for module in (network_module, ppo_module):
        monkeypatch.setattr(module, "uses_amp", lambda mixed_precision, device: mixed_precision)
    softmax_inputs = set()

    def log_softmax(x, *args, **kwargs):
        softmax_inputs.add(x.dtype)
        return real_log_softmax(x, *args, **kwargs)

    monkeypatch.setattr(torch, "log_softmax", log_softmax)
    config = PpoShogiConfig(**{**TINY, "max_iterations": 1, "final_eval_games": 0, "mixed_precision": True})
    trainer = PpoShogiTrainer(config, LocalContext("ppo-shogi"))
    outputs = {"update": set(), "evaluation": set(), "self-play": set()}

    def hook(module, inputs, out):   # evaluation games build their own networks from the weights
        if isinstance(module, ActorCritic):
            kind = ("update" if module is trainer.network else
                    "self-play" if module in (trainer.source.network, trainer.source.opponent) else "evaluation")
            outputs[kind].add(out[0].dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        row = trainer.fit().history[-1]
    finally:
        handle.remove()
    assert outputs == {"update": {torch.bfloat16}, "evaluation": {torch.bfloat16}, "self-play": {torch.bfloat16}}
    assert softmax_inputs == {torch.float32}
    features, masks = feature_buffer(2), mask_buffer(2)
    encode_batch([Game(), Game()], features, masks)
    logits, values = make_policy_fn(trainer.network, "cpu", mixed_precision=True)(features, masks)
    assert logits.dtype == values.dtype == torch.float32
    assert all(np.isfinite(row[key]) for key in ("policy_loss", "value_loss", "entropy", "approx_kl"))
    assert row["policy_loss"] != plain["policy_loss"]  # the bf16 forward did change the numbers


def test_compile_trains_and_keeps_the_plain_checkpoint_keys():
    torch.compiler.reset()
    plain_trainer, plain = one_iteration()
    trainer, compiled = one_iteration(compile=True)
    assert isinstance(trainer.train_model, torch._dynamo.eval_frame.OptimizedModule)
    assert all(isinstance(forward, torch._dynamo.eval_frame.OptimizedModule) for forward in trainer.source.forwards)
    keys = list(trainer.model_state())
    assert keys == list(plain_trainer.model_state()) and not any("_orig_mod" in key for key in keys)
    state = trainer.checkpoint_payload()["trainer"]
    assert list(state["model"]) == list(state["best_state"]) == keys
    plain_trainer.load_model_state(trainer.model_state())  # strict loads, both ways
    trainer.load_model_state(plain_trainer.model_state())
    for key in ("policy_loss", "value_loss", "entropy"):
        assert compiled[key] == pytest.approx(plain[key], rel=1e-3, abs=1e-6), key


def test_config_imports_no_torch_and_rejects_bad_values():
    code = "import sys, trainers.selfplay.config; sys.exit(('torch' in sys.modules) + 2 * ('cshogi' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    cases = [({"rollout_plies": 1}, "rollout_plies"), ({"clip_coef": 0}, "clip_coef"),
             ({"gae_lambda": 1.5}, "gae_lambda"), ({"num_minibatches": 5000}, "num_minibatches"),
             ({"collector": "threads"}, "collector"), ({"actors": 0}, "actors"), ({"actor_cpus": 0}, "actor_cpus"),
             ({"snapshot_prob": 2}, "snapshot_prob"), ({"inference": "server"}, "inference")]
    for values, field in cases:
        with pytest.raises(ConfigError, match=field):
            build_config(PpoShogiConfig, values)


# ---------------------------------------------------------------- material shaping
def test_material_balance_counts_board_and_hand_from_each_side():
    import cshogi

    from trainers.selfplay.game import material_balance

    board = cshogi.Board()
    assert material_balance(board, cshogi.BLACK) == 0.0
    # Black has taken White's bishop: White is 8 short on the board and Black holds 8 in hand,
    # a swing of twice the piece's value
    board = cshogi.Board("lnsgkgsnl/1r7/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b B 1")
    assert material_balance(board, cshogi.BLACK) == 16.0
    assert material_balance(board, cshogi.WHITE) == -16.0


def test_shaping_rewards_by_hand_and_the_return_is_unchanged():
    from trainers.selfplay.runner import _assemble, _Finished

    slot = GameSlot(Game(512), (True, True))
    # three decisions of Black at balances 0, +3 (it took a lance), +3; the game then ends in a win
    for potential in (0.0, 3.0, 3.0):
        slot.plies.append(len(slot.plies) * 2)
        slot.colors.append(0)
        slot.features.append(np.zeros(1205, np.uint8))
        slot.masks.append(np.zeros(274, np.uint8))
        slot.actions.append(0)
        slot.log_probs.append(0.0)
        slot.values.append(0.0)
        slot.potentials.append(potential)
    finished = [_Finished(slot, 0, 1.0, True)]
    plain = _assemble(finished, np.zeros(0, np.float32), 1.0, 1.0)
    shaped = _assemble(finished, np.zeros(0, np.float32), 1.0, 1.0, shaping=0.01)
    assert plain.rewards.tolist() == [0.0, 0.0, 1.0]
    # 0.01 * (Phi_next - Phi_now), Phi = 0 after the terminal move
    np.testing.assert_allclose(shaped.rewards, [0.03, 0.0, 1.0 - 0.03], atol=1e-7)
    assert shaped.rewards.sum() == pytest.approx(plain.rewards.sum())  # telescopes: Phi(start) = 0
    # the capture is credited at once: the first move's advantage rises, the return is the same
    assert shaped.advantages[0] == pytest.approx(plain.advantages[0])  # gamma = lambda = 1, V = 0
    assert shaped.advantages[1] < plain.advantages[1] + 1e-9


def test_incremental_balance_equals_a_recount_in_random_games():
    import cshogi

    from trainers.selfplay.agents import capture_first_agent
    from trainers.selfplay.game import material_balance

    rng = np.random.default_rng(3)
    promotions = captures = 0
    for _ in range(6):
        game = Game(400)
        while game.end is None:
            move = capture_first_agent([game], rng)[0]
            captures += bool(cshogi.move_cap(move))
            promotions += bool(cshogi.move_is_promotion(move))
            game.push(move)
            for color in (cshogi.BLACK, cshogi.WHITE):
                assert game.balance(color) == material_balance(game.board, color)
    assert captures > 50 and promotions > 5  # the games did exercise both


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("sfen, reason", [
    ("garbage", "4 fields"),
    ("lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1 b - 1", "9 ranks"),
    ("lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL x - 1", "side to move"),
    ("lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSN b - 1", "rank 9"),
    ("lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGXGSNL b - 1", "unknown piece 'X'"),
    ("lnsg1gsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b - 1", "one king a side"),
    ("lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b 2K 1", "pieces in hand"),
    ("lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LN+GGKGSNL b - 1", "cannot be promoted"),
])
def test_a_malformed_start_sfen_is_refused_before_cshogi_sees_it(sfen, reason):
    # cshogi itself would abort the interpreter on these (an uncaught C++ exception)
    with pytest.raises(ConfigError, match=f"start_sfen.*{reason}"):
        build_config(PpoShogiConfig, {"start_sfen": sfen})


def test_games_start_from_the_given_sfen_and_resume_there():
    sfen = "4k4/9/9/9/9/9/9/9/4K4 b 2P 1"
    config = build_config(PpoShogiConfig, {"start_sfen": sfen, "games_per_batch": 2, "rollout_plies": 16,
                                            "num_minibatches": 2, "ply_limit": 8})
    source = InProcessSource(config)
    assert all(slot.game.board.sfen() == sfen for slot in source.slots)
    network = ActorCritic(config.blocks, config.channels)
    source.collect(network.state_dict(), 16, seed=0)
    restored = GameSlot.from_state(source.slots[0].state(), config.ply_limit)
    assert restored.game.sfen == sfen and restored.game.moves == source.slots[0].game.moves


def test_an_opponent_snapshot_of_another_network_shape_is_refused():
    pool = OpponentPool(3, ActorCritic(1, 8).state_dict())
    pool.add("iteration_0", ActorCritic(1, 8).state_dict())
    with pytest.raises(ValueError, match="snapshot 'wide' does not fit this network.*blocks/channels"):
        pool.add("wide", ActorCritic(1, 16).state_dict())
    with pytest.raises(ValueError, match="snapshot 'deep' is not this network"):
        pool.load_state_dict({"names": ["deep"], "weights": [ActorCritic(2, 8).state_dict()]})
    assert pool.names == ["iteration_0"]
