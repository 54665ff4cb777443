"""Heterogeneous GAT over users, songs and artists; score = dot product of user and song.

Each node type has its own learned embedding table (so song indices can never land on user
rows, a mistake one shared table with offsets allows). Every layer is a `HeteroConv` of one attention convolution per
relation, with the listening edges' attributes (plays, completion) entering the attention, then
a residual connection and LayerNorm per node type. The last layer computes only the relations
that end at users and songs: artist outputs of the last layer would feed nothing, and unused
parameters would make DDP fail.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from torch_geometric.nn import GATConv, GATv2Conv, HeteroConv

from trainers.recommender.data import RELATIONS

EDGE_DIM = 2


class GATRecommender(nn.Module):
    def __init__(self, num_nodes: dict[str, int], embedding_dim: int = 64, heads: int = 2,
                 num_layers: int = 2, dropout: float = 0.1, conv: str = "gatv2",
                 id_embeddings: tuple[str, ...] = ("artist",), residual_gate: bool = False):
        super().__init__()
        self.num_nodes = dict(num_nodes)
        # Node types in `id_embeddings` get a free vector per node; the others start from one
        # learned vector per type and are what their neighbourhood makes them: a free vector per
        # user and song can memorise that node's training edges, a neighbourhood cannot.
        self.embeddings = nn.ModuleDict({kind: nn.Embedding(n, embedding_dim)
                                         for kind, n in num_nodes.items() if kind in id_embeddings})
        self.type_vectors = nn.ParameterDict({kind: nn.Parameter(torch.zeros(embedding_dim))
                                              for kind in num_nodes if kind not in id_embeddings})
        for table in self.embeddings.values():
            nn.init.normal_(table.weight, std=0.1)
        # artists only send in the last layer, which PyG warns about; that is by design here
        warnings.filterwarnings("ignore", message="There exist node types")
        conv_class = GATv2Conv if conv == "gatv2" else GATConv
        self.layers = nn.ModuleList()
        self.norms = nn.ModuleList()
        for index in range(num_layers):
            last = index == num_layers - 1
            relations = [r for r in RELATIONS if not (last and r[2] == "artist")]
            self.layers.append(HeteroConv({
                relation: conv_class((embedding_dim, embedding_dim), embedding_dim // heads, heads=heads,
                                     edge_dim=EDGE_DIM, add_self_loops=False, dropout=dropout)
                for relation in relations
            }, aggr="sum"))
            targets = sorted({r[2] for r in relations})
            self.norms.append(nn.ModuleDict({kind: nn.LayerNorm(embedding_dim) for kind in targets}))
        self.dropout = nn.Dropout(dropout)
        # Beside a fixed prior score the network is a residual: its score is scaled by a learned
        # gate that starts at zero, so training starts from the prior's ranking and moves away
        # from it only as far as the BPR gradient asks (a random network would first scramble it).
        self.gate = nn.Parameter(torch.zeros(())) if residual_gate else None
        # popularity is the strongest single signal in listening data: give songs a learned bias
        self.song_bias = nn.Embedding(num_nodes["song"], 1)
        nn.init.zeros_(self.song_bias.weight)

    def forward(self, edge_index: dict, edge_attr: dict) -> dict[str, torch.Tensor]:
        """Final embeddings of every user and song (full-graph message passing).

        As in LightGCN, the output averages every layer's representation (the free embedding
        included), so that a node keeps its own identity beside its neighbourhood's. The song
        vector carries one extra coordinate, its bias, met by a constant 1 on the user side.
        """
        x = self.initial_features()
        layers = [x]
        for conv, norms in zip(self.layers, self.norms):
            messages = conv(x, edge_index, edge_attr)
            x = {kind: norms[kind](x[kind] + self.dropout(torch.nn.functional.elu(messages[kind])))
                 for kind in norms}
            layers.append(x)
        user = torch.stack([layer["user"] for layer in layers]).mean(0)
        song = torch.stack([layer["song"] for layer in layers]).mean(0)
        ones = torch.ones(user.shape[0], 1, dtype=user.dtype, device=user.device)
        user = torch.cat([user, ones], 1)
        if self.gate is not None:
            user = user * self.gate
        return {"user": user, "song": torch.cat([song, self.song_bias.weight], 1)}

    def initial_features(self) -> dict[str, torch.Tensor]:
        features = {kind: table.weight for kind, table in self.embeddings.items()}
        for kind, vector in self.type_vectors.items():
            features[kind] = vector.expand(self.num_nodes[kind], -1)
        return features

    @staticmethod
    def score(user_embedding: torch.Tensor, song_embedding: torch.Tensor) -> torch.Tensor:
        return (user_embedding * song_embedding).sum(-1)
