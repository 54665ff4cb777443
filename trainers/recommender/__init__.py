"""GAT music recommender: synthetic listening data, HeteroData graph, GAT, BPR, baselines."""
