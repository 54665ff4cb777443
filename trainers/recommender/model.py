"""Heterogeneous GAT over users, songs and artists; score = dot product of user and song.

Each node type has its own learned embedding table (so song indices can never land on user
rows: the original's bug). Every layer is a `HeteroConv` of one attention convolution per
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

LISTENS = ("user", "listens", "song")
LISTENED_BY = ("song", "rev_listens", "user")
BY_ARTIST = ("song", "by", "artist")
ARTIST_OF = ("artist", "rev_by", "song")
RELATIONS = (LISTENS, LISTENED_BY, BY_ARTIST, ARTIST_OF)
EDGE_DIM = 2


class GATRecommender(nn.Module):
    def __init__(self, num_nodes: dict[str, int], embedding_dim: int = 64, heads: int = 2,
                 num_layers: int = 2, dropout: float = 0.1, conv: str = "gatv2"):
        super().__init__()
        self.embeddings = nn.ModuleDict({kind: nn.Embedding(n, embedding_dim) for kind, n in num_nodes.items()})
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

    def forward(self, edge_index: dict, edge_attr: dict) -> dict[str, torch.Tensor]:
        """Final embeddings of every user and song (full-graph message passing)."""
        x = {kind: table.weight for kind, table in self.embeddings.items()}
        for conv, norms in zip(self.layers, self.norms):
            messages = conv(x, edge_index, edge_attr)
            x = {kind: norms[kind](x[kind] + self.dropout(torch.nn.functional.elu(messages[kind])))
                 for kind in norms}
        return x

    @staticmethod
    def score(user_embedding: torch.Tensor, song_embedding: torch.Tensor) -> torch.Tensor:
        return (user_embedding * song_embedding).sum(-1)
