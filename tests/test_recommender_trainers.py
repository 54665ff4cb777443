"""gat-simple / gat-advanced in-process (LocalContext): learning, resume, hooks, factory."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from trainers.checkpoint import CheckpointError
from trainers.context import LocalContext
from trainers.recommender.baselines import popularity_baseline
from trainers.recommender.model import GATRecommender
from trainers.recommender.trainers import CurriculumTrainer, GatAdvancedTrainer, create_trainer


def test_advanced_learns_beats_popularity_and_tests_the_best_model(small, tmp_path):
    context = LocalContext("gat-advanced", tmp_path, resume=False)
    # the plain GAT: with the EASE^R prior the training loss starts near its floor (the prior fits
    # the training edges), so "the loss falls" is a property of the network alone
    trainer = create_trainer("advanced", {**small, "max_iterations": 15, "patience": 0, "lr": 0.01,
                                          "batch_size": 512, "item_prior": "none"}, context)
    result = trainer.fit()
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < 0.6 * losses[0]
    popularity = popularity_baseline(trainer.data, "val")
    assert result.best_metrics["val_recall@20"] > popularity["recall@20"]
    # the test metrics were computed on the restored best weights
    assert set(result.final_metrics) >= {"test_recall@10", "test_ndcg@10", "test_recall@20", "test_ndcg@20"}
    best = trainer.best_state
    assert all(torch.equal(v, trainer.network.state_dict()[k]) for k, v in best.items())
    assert context.reports[-1]["best_iteration"] == result.best_iteration


def test_simple_reports_in_sample_metrics_only(small):
    trainer = create_trainer("simple", {**small, "max_iterations": 2})
    result = trainer.fit()
    assert trainer.data.val_user.numel() == 0 and trainer.data.test_user.numel() == 0
    assert "insample_recall@10" in result.metrics and not any(k.startswith(("val_", "test_")) for k in result.metrics)


def test_messages_reach_the_right_nodes(small):
    """Changing one song's embedding changes the users who heard it and no one else (layer 1)."""
    # the plain GAT: with the EASE^R prior, the network's output passes a gate that starts at zero
    trainer = create_trainer("advanced", {**small, "num_layers": 1, "dropout": 0.0, "item_prior": "none",
                                          "id_embeddings": ["user", "song", "artist"]})
    network = trainer.network.eval()
    with torch.no_grad():
        before = network(trainer.edge_index, trainer.edge_attr)["user"].clone()
        song = int(trainer.data.train_song[0])
        network.embeddings["song"].weight[song] += 1.0
        after = network(trainer.edge_index, trainer.edge_attr)["user"]
    changed = set(torch.nonzero((after - before).abs().sum(1) > 1e-6).flatten().tolist())
    listeners = set(trainer.data.train_user[trainer.data.train_song == song].tolist())
    assert changed == listeners


def test_resume_continues_where_it_stopped(small, tmp_path):
    straight = create_trainer("advanced", {**small, "max_iterations": 4, "patience": 0},
                              LocalContext("gat-advanced", tmp_path / "a")).fit()

    class StopAfterTwo(GatAdvancedTrainer):
        def on_epoch_end(self, epoch, metrics):
            if epoch == 2:
                raise KeyboardInterrupt
            return False

    config = GatAdvancedTrainer.config_class(**small, max_iterations=4, patience=0)
    with pytest.raises(KeyboardInterrupt):
        StopAfterTwo(config, LocalContext("gat-advanced", tmp_path / "b")).fit()
    resumed = GatAdvancedTrainer(config, LocalContext("gat-advanced", tmp_path / "b")).fit()
    assert [r["iteration"] for r in resumed.history] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in straight.history], rel=1e-5)


def test_checkpoint_of_other_algorithm_is_refused(small, tmp_path):
    create_trainer("simple", {**small, "max_iterations": 1}, LocalContext("gat-simple", tmp_path)).fit()
    with pytest.raises(CheckpointError, match="'gat-simple', not 'gat-advanced'"):
        create_trainer("advanced", {**small, "max_iterations": 1}, LocalContext("gat-advanced", tmp_path)).fit()


def test_curriculum_hook_widens_the_edges(small):
    trainer = create_trainer("curriculum", {**small, "max_iterations": 1})
    sizes = []
    for epoch in range(6):
        trainer.on_epoch_start(epoch)
        sizes.append(len(trainer.training_edge_ids()))
    total = len(trainer.data.train_user)
    assert sizes[0] == int(total * 0.2) and sizes[-1] == total and sizes == sorted(sizes)
    assert isinstance(trainer, CurriculumTrainer)


def test_factory_rejects_unknown_kind():
    with pytest.raises(ValueError, match="simple, advanced, curriculum"):
        create_trainer("fancy")


def test_id_embeddings_choose_free_vectors(small):
    default = create_trainer("advanced", small).network
    assert set(default.embeddings) == {"artist"} and set(default.type_vectors) == {"user", "song"}
    every = create_trainer("advanced", {**small, "id_embeddings": ["user", "song", "artist"]}).network
    assert set(every.embeddings) == {"user", "song", "artist"} and not every.type_vectors


def test_batch_edges_leave_the_message_graph(small):
    trainer = create_trainer("advanced", small)
    batch = torch.tensor([0, 5, 7])
    edge_index, edge_attr = trainer.message_graph(batch)
    listens = edge_index[("user", "listens", "song")]
    assert listens.shape[1] == len(trainer.data.train_user) - 3
    removed = {(int(trainer.data.train_user[i]), int(trainer.data.train_song[i])) for i in batch}
    remaining = set(map(tuple, listens.t().tolist()))
    assert not removed & remaining
    assert edge_attr[("song", "rev_listens", "user")].shape[0] == listens.shape[1]


def test_ddp_has_no_unused_parameters(small):
    """Every parameter gets a gradient from the BPR loss (DDP would fail otherwise)."""
    trainer = create_trainer("advanced", {**small, "max_iterations": 1})
    embeddings = trainer.model(trainer.edge_index, trainer.edge_attr)
    ranking, penalty = trainer.bpr_loss(embeddings, torch.arange(64), torch.Generator().manual_seed(0))
    (ranking + penalty).backward()
    unused = [name for name, p in trainer.network.named_parameters() if p.grad is None]
    assert unused == []
    assert isinstance(trainer.network, GATRecommender)



def test_rank_shards_of_an_epoch_are_disjoint_and_cover_every_edge(small):
    """Two ranks shuffle in the same order and take alternate edges: no edge trained twice."""
    trainer = create_trainer("simple", {**small, "max_iterations": 1})
    shards = []
    for rank in (0, 1):
        trainer.context.rank, trainer.context.world_size = rank, 2
        shards.append(torch.cat(trainer.edge_batches()))
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())
    assert len(shards[0]) + len(shards[1]) == len(trainer.data.train_user)


# ---------------------------------------------------------------- speed options
TINY_NETWORK = {"num_layers": 1, "embedding_dim": 8, "heads": 1, "dropout": 0.0}  # the cheapest to compile


@pytest.mark.parametrize("kind", ["simple", "advanced"])
def test_mixed_precision_is_ignored_on_cpu(small, kind):
    losses = []
    for flag in (False, True):  # one after the other: a trainer seeds the global RNG when built
        trainer = create_trainer(kind, {**small, **TINY_NETWORK, "dropout": 0.1, "max_iterations": 1,
                                        "mixed_precision": flag})
        assert not trainer.use_amp
        losses.append(trainer.fit().history[-1]["loss"])
    # the loss only: with two CPU threads the backward's sums (and, through ties of this tiny
    # network's scores, the ranking metrics) may differ in the last bits from run to run anyway
    assert losses[0] == losses[1]


def test_mixed_precision_autocasts_the_forward_and_keeps_float32_numbers(small, monkeypatch):
    """CPU bf16 autocast stands in for CUDA's: the forward runs in bf16, the BPR loss and the
    ranking metrics see float32 embeddings."""
    # the plain GAT: with the EASE^R prior's zero-initialised gate, the first loss would not see the forward's precision
    values = {**small, **TINY_NETWORK, "max_iterations": 1, "mixed_precision": True, "item_prior": "none"}
    plain = create_trainer("advanced", {**values, "mixed_precision": False}).fit().history[-1]
    real_autocast = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda device_type, dtype, **options: real_autocast("cpu", dtype=dtype, **options))
    trainer = create_trainer("advanced", values)
    trainer.use_amp = True  # as on CUDA
    linear_outputs, loss_inputs = set(), set()
    for module in trainer.network.modules():
        if type(module).__name__ == "Linear":
            module.register_forward_hook(lambda m, i, out: linear_outputs.add(out.dtype))
    bpr_loss = trainer.bpr_loss

    def recording_bpr_loss(embeddings, edges, generator):
        loss_inputs.update(value.dtype for value in embeddings.values())
        return bpr_loss(embeddings, edges, generator)

    trainer.bpr_loss = recording_bpr_loss
    row = trainer.fit().history[-1]
    assert linear_outputs == {torch.bfloat16} and loss_inputs == {torch.float32}
    assert {value.dtype for value in trainer.embeddings().values()} == {torch.float32}
    assert torch.isfinite(torch.tensor(row["loss"])) and row["loss"] != plain["loss"]


class DDPContext(LocalContext):
    """LocalContext with the model wrapped in DDP (world size 1, gloo), as Ray's prepare_model does."""

    def prepare_model(self, model, **ddp_kwargs):
        return DistributedDataParallel(model.to(self.device), **ddp_kwargs)


def test_compile_trains_and_keeps_the_plain_checkpoint_keys(small, tmp_path):
    torch.compiler.reset()
    values = {**small, **TINY_NETWORK, "max_iterations": 1}
    plain = create_trainer("advanced", values)
    plain_loss = plain.fit().history[-1]["loss"]
    keys = list(plain.model_state())
    compiled = create_trainer("advanced", {**values, "compile": True})
    assert isinstance(compiled.train_model, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.fit().history[-1]["loss"] == pytest.approx(plain_loss, rel=1e-4)
    assert list(compiled.model_state()) == keys and not any("_orig_mod" in key for key in keys)
    assert list(compiled.checkpoint_payload()["trainer"]["best_state"]) == keys
    plain.load_model_state(compiled.model_state())  # strict loads, both ways
    compiled.load_model_state(plain.model_state())
    # with DDP the compiled module wraps the DDP one; the checkpoint still has the plain keys
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        ddp = create_trainer("advanced", {**values, "compile": True}, DDPContext("gat-advanced"))
        assert isinstance(ddp.model, DistributedDataParallel) and ddp.train_model._orig_mod is ddp.model
        assert ddp.fit().history[-1]["loss"] == pytest.approx(plain_loss, rel=1e-4)
        assert list(ddp.model_state()) == keys
    finally:
        dist.destroy_process_group()


def test_fold_out_prior_scores_each_training_pair_without_its_fold(small):
    """Fold f of the BPR loss's prior is EASE^R fitted on the training matrix minus fold f's
    edges (computed here from the closed form), and it scores those edges lower than the full
    prior does: EASE^R reconstructs the pairs it was fitted on."""
    from trainers.recommender.baselines import ease_weights, interaction_matrix

    trainer = create_trainer("advanced", {**small, "item_prior": "ease", "prior_folds": 3, "prior_weight": 1.0,
                                          "max_iterations": 1})
    trainer.setup()
    data, folds = trainer.data, trainer.edge_fold
    assert trainer.train_prior.shape == (3, data.n_users, data.n_songs)
    counts = torch.bincount(folds, minlength=3)
    assert len(counts) == 3 and int(counts.max() - counts.min()) <= 1  # balanced folds
    x = interaction_matrix(data)
    held = folds == 1
    x1 = x.clone()
    x1[data.train_user[held], data.train_song[held]] = 0.0
    expected = x1 @ ease_weights(x1, trainer.config.prior_lambda)
    expected = expected / expected.std()
    assert torch.allclose(trainer.train_prior[1], expected / expected.std(), atol=1e-4)
    pairs = data.train_user[held], data.train_song[held]
    assert trainer.train_prior[1][pairs].mean() < trainer.prior[pairs].mean()
    # prior_folds 0: every training pair sees the full prior
    plain = create_trainer("advanced", {**small, "item_prior": "ease", "prior_folds": 0, "max_iterations": 1})
    plain.setup()
    assert torch.equal(plain.train_prior[0], plain.prior) and int(plain.edge_fold.max()) == 0
