"""Self-play reinforcement learning for shogi: the `ppo-shogi` algorithm.

Plain PyTorch and numpy, no Ray. The pieces, each readable on its own:

- `game`      the rules on top of cshogi (fourfold repetition, perpetual check, no legal move,
              ply limit as a truncation) and the dlshogi encoding (features, 2187 labels, masks)
- `network`   the SE-ResNet actor-critic and `policy_fn`, the one call the game runner makes
- `runner`    the lockstep game runner: K games, one batched forward per ply, per-player GAE,
              `play_batch` -> `ExperienceBatch`, and `play_match` for evaluation games
- `agents`    uniform random and capture-first players, the opponent pool, the Elo table
- `ppo`       the PPO update, CleanRL style
- `sources`   where experience comes from: the in-process source, and the hook for others
- `trainer`   `PpoShogiTrainer`, the `ppo-shogi` trainer
- `config`    `PpoShogiConfig` (pydantic, imports neither torch nor cshogi)

cshogi is GPL-3.0: it is an optional extra (`shogi`), and a program that imports this package
is a work based on cshogi when distributed.
"""
