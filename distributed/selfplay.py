"""Self-play on Ray: actors that play shogi and return experience batches (collector "ray").

    RaySource            lives in the learner (a TorchTrainer worker); the trainer's `source`
      collect()          ray.put(weights) once -> every actor .play(ref, its share, seed, sequence)
                         -> batches as they come back -> the ledger -> [ExperienceBatch, ...]
    SelfPlayActor        one per core: the lockstep runner (InProcessSource) on its own K games
    InferenceServer      inference="server": one actor runs the network for every actor's
                         positions (SEED-style), on the GPU when the learner has one

Overlap (`staleness` 1): when a collection starts, every actor is asked for the next batch with
the current weights before the batches in flight are gathered, so the actors play while the
learner receives their batches and updates; the next
collection takes those batches (one update old, `policy_lag` 1; their stored log-probs are the
behaviour policy's, which PPO's ratio is taken against). A checkpoint taken meanwhile waits for
the actors' games after that batch, and a batch still in flight at a crash is not replayed: its
games moved on, its moves are not trained on, nothing is counted twice.

Evaluation (`RayEvaluator`, `eval_actors` > 0, one learner): evaluation matches are queued on
their own actors and polled without blocking, so they run beside the next iterations; the
trainer attaches each result to the iteration whose weights played. An evaluation actor that
dies is replaced and its match played again, whole.

Placement: actors are created with scheduling_strategy="SPREAD": Ray puts them on different
nodes where it can, so they play over the whole cluster, not all on the head. Not a placement
group: one created by the learner outlives it when the learner dies (job-scoped, seen on Ray
2.60), and a learner restarted by Ray Train would find its actors' CPUs still held. Actors are
owned by the learner process and die with it, freeing theirs. run.py checks beforehand that the
actors and the learners fit the cluster; an actor that still cannot start fails the run after
START_TIMEOUT_S instead of waiting forever.

Fault tolerance: actors are created with `max_restarts=MAX_RESTARTS`. `play` has
`max_task_retries=0`: it advances the actor's games, so Ray must not re-run it behind our back
(a silent re-run would hide the loss). When a `play` fails (ActorDiedError, ActorUnavailableError),
the source counts the batch as lost, waits for Ray's restart through `identity` (idempotent, so
retried until the actor is back), and asks the restarted actor again for its share; an actor
dead for good (restarts used up) is replaced by a fresh one. The games in
progress on a dead actor are gone; no learner move from them reaches the learner.

The ledger: every request is (actor id, sequence), sequences counting up per actor; a batch is
accepted only if its (actor id, sequence) is one the source is waiting for, so nothing is
counted twice; requests that failed are counted as lost. The counters (batches, plies,
duplicates, lost, restarts, replaced, per-actor batches) are the trainer's `source_*` metrics.

Several learners (DDP): each rank owns actors rank, rank + W, ... (run.py checks actors >= W),
asks them for its share of the rollout and trains on all of it (`per_rank = True`); seeds mix in
the global actor id, so the ranks play different games.

Resume: the checkpoint holds every rank's counters and, per actor, its sequence, its batch count
and its games in progress (moves and the learner's decisions, plain data; gathered from all
ranks into rank 0's checkpoint); a resumed rank gives every actor it owns its games back, so the
games continue where they stopped.
"""
from __future__ import annotations

import asyncio
import collections
import os
import time
import uuid
from typing import Any

import numpy as np
import ray
import torch
import torch.distributed as dist
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError

from trainers.selfplay.config import PpoShogiConfig
from trainers.selfplay.evaluation import Evaluation, LocalEvaluator, Match, play, register_evaluator
from trainers.selfplay.game import pack_features, pack_masks, unpack_features, unpack_masks
from trainers.selfplay.network import ActorCritic, PolicyFn
from trainers.selfplay.runner import ExperienceBatch, GameSlot
from trainers.selfplay.sources import InProcessSource, register_source

MAX_RESTARTS = 3            # Ray restarts an actor this many times; then the source replaces it
START_TIMEOUT_S = 180.0     # placement and actor start (imports torch and cshogi) on a busy machine
REPLY_TIMEOUT_S = 1800.0    # no batch back for this long: something hangs, say so instead of waiting
SERVER_WAIT_S = 0.002       # the inference server waits this long for the other actors' positions
SERVER_NETWORKS = 3         # weight sets it keeps (learner, snapshot, and the one being replaced)


# ---------------------------------------------------------------- the actors
class ServedRunner(InProcessSource):
    """The lockstep runner with the network on the inference server: positions go there packed
    (1.5 kB each), only the legal moves' logits come back (about 80 a position, not 2,187)."""

    server: Any = None   # the InferenceServer's handle, given with every `play` call
    # (the base's local networks go unused here: they are small, and the base stays one class)

    def policies(self, weights, opponent):
        # in server mode `weights`/`opponent` are [ObjectRef]: the server loads each set once
        return self.remote_policy(weights), None if opponent is None else self.remote_policy(opponent)

    def remote_policy(self, weights_box: list) -> PolicyFn:
        def policy_fn(features: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            legal, values = ray.get(self.server.infer.remote(weights_box, pack_features(features), pack_masks(masks)))
            logits = torch.full(masks.shape, float("-inf"))
            logits[torch.from_numpy(np.ascontiguousarray(masks))] = torch.tensor(legal)
            return logits, torch.tensor(values)
        return policy_fn


class SelfPlayActor:
    """One self-play worker: K games in lockstep, one batched forward per ply (or one request
    to the inference server), kept going between calls."""

    def __init__(self, config: dict[str, Any], actor_id: int):
        torch.set_num_threads(1)  # one actor = one core; more threads would fight the other actors
        config = PpoShogiConfig(**config)
        self.actor_id = actor_id
        self.ply_limit = config.ply_limit
        self.runner = InProcessSource(config) if config.inference == "local" else ServedRunner(config)
        self.incarnation = uuid.uuid4().hex  # new after every restart: how the source sees one
        self.returned_at: float | None = None  # when the last `play` returned: the gap to the next is idle

    @ray.method(max_task_retries=-1)  # idempotent: retried until Ray has restarted the actor
    def identity(self) -> dict[str, Any]:
        return {"incarnation": self.incarnation, "pid": os.getpid(), "actor_id": self.actor_id,
                "node": ray.get_runtime_context().get_node_id()}

    @ray.method(max_task_retries=0)   # advances the games: the source, not Ray, handles a failure
    def play(self, weights: Any, plies: int, seed: int, opponent: Any, sequence: int,
             server: Any = None) -> tuple[str, ExperienceBatch]:
        # the server's handle comes with the call, not the constructor: Ray keeps a restartable
        # actor's constructor arguments, and a handle there would pin the server (ray#53727)
        self.runner.server = server
        called, started = time.perf_counter(), time.process_time()
        batch = self.runner.collect(weights, plies, seed=seed, opponent=opponent)[0]
        # CPU time beside the wall time: on a shared machine it shows how much of a core the actor got
        batch.stats["cpu_seconds"] = time.process_time() - started
        # where an actor's time goes: inside this call (weights loaded, games played, the batch
        # built) or between calls (its batch on the way back, waiting for the learner's next ask)
        batch.stats["call_seconds"] = time.perf_counter() - called
        batch.stats["idle_seconds"] = 0.0 if self.returned_at is None else called - self.returned_at
        batch.source, batch.sequence = actor_name(self.actor_id), sequence
        self.returned_at = time.perf_counter()
        return self.incarnation, batch

    def games(self) -> list[dict[str, Any]]:
        return [slot.state() for slot in self.runner.slots]

    def load_games(self, games: list[dict[str, Any]]) -> None:
        self.runner.slots = [GameSlot.from_state(game, self.ply_limit) for game in games]


class InferenceServer:
    """The network for every self-play actor of one learner rank. Requests that arrive within
    SERVER_WAIT_S (or as soon as every actor has one waiting) go through one forward pass per
    weight set. Weights come as an ObjectRef and are loaded once per new ref, so a restarted
    server reloads them by itself and `infer` may be retried safely."""

    def __init__(self, config: dict[str, Any], device: str, callers: int):
        torch.set_num_threads(1)
        self.config = PpoShogiConfig(**config)
        self.device = torch.device(device)
        self.callers = callers
        self.networks: dict[Any, asyncio.Future] = {}   # ObjectRef -> loaded network
        self.queue: list[tuple[Any, np.ndarray, np.ndarray, asyncio.Future]] = []
        self.timer: asyncio.TimerHandle | None = None

    async def network(self, ref: Any) -> ActorCritic:
        if ref not in self.networks:
            self.networks[ref] = asyncio.ensure_future(self.load(ref))
            while len(self.networks) > SERVER_NETWORKS:
                self.networks.pop(next(iter(self.networks)))
        return await self.networks[ref]

    async def load(self, ref: Any) -> ActorCritic:
        network = ActorCritic(self.config.blocks, self.config.channels)
        network.load_state_dict(await ref)
        return network.to(self.device).eval()

    @ray.method(max_task_retries=-1)  # a pure function of weights and positions
    async def infer(self, weights_box: list, features: np.ndarray, masks: np.ndarray):
        network = await self.network(weights_box[0])
        future = asyncio.get_running_loop().create_future()
        self.queue.append((network, features, masks, future))
        if len(self.queue) >= self.callers:
            self.flush()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(SERVER_WAIT_S, self.flush)
        return await future

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        queue, self.queue = self.queue, []
        groups: dict[int, list] = {}
        for request in queue:
            groups.setdefault(id(request[0]), []).append(request)
        for requests in groups.values():
            try:
                answers = self.forward(requests[0][0], [r[1] for r in requests], [r[2] for r in requests])
            except Exception as error:  # every waiting actor hears about it
                answers = [error] * len(requests)
            for request, answer in zip(requests, answers):
                future = request[3]
                if future.done():  # the caller went away
                    continue
                future.set_exception(answer) if isinstance(answer, Exception) else future.set_result(answer)

    @torch.inference_mode()
    def forward(self, network: ActorCritic, features: list[np.ndarray], masks: list[np.ndarray]) -> list:
        """One forward over every request; per request, the legal logits (row-major) and values."""
        mask = torch.from_numpy(np.concatenate([unpack_masks(m) for m in masks])).to(self.device)
        x = torch.from_numpy(np.concatenate([unpack_features(f) for f in features])).to(self.device)
        logits, values = network(x)
        legal, values = logits[mask].float().cpu().numpy(), values.float().cpu().numpy()
        row_ends = np.cumsum([len(m) for m in masks])                     # where each request's rows end
        legal_ends = np.cumsum(mask.sum(dim=1).cpu().numpy())[row_ends - 1]  # and its legal logits
        return list(zip(np.split(legal, legal_ends[:-1]), np.split(values, row_ends[:-1])))


def actor_name(actor_id: int) -> str:
    return f"actor_{actor_id}"


def gather_ranks(part: Any) -> list[Any]:
    """Every learner rank's `part`, in rank order (just [part] without DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [part]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return parts


# ---------------------------------------------------------------- the source, in the learner
class RaySource:
    """Experience from this rank's self-play actors (see the module docstring)."""

    per_rank = True

    def __init__(self, config: PpoShogiConfig, rank: int = 0, world_size: int = 1, device: Any = "cpu"):
        if config.actors < world_size:
            raise ValueError(f"actors ({config.actors}) must be >= the learners ({world_size}): each owns its own")
        self.config, self.rank = config, rank
        self.ids = list(range(rank, config.actors, world_size))   # the global actor ids this rank owns
        use_gpu = torch.device(device).type == "cuda" and config.inference_gpus > 0
        self.server_options = {"num_cpus": config.actor_cpus,
                               **({"num_gpus": config.inference_gpus} if use_gpu else {})}
        self.server = self.start_server("cuda" if use_gpu else "cpu") if config.inference == "server" else None
        self.actors = {aid: self.spawn(aid) for aid in self.ids}
        self.incarnations = {aid: info["incarnation"] for aid, info in zip(self.ids, self.wait_for(self.actors))}
        self.next_sequence = dict.fromkeys(self.ids, 0)
        self.actor_batches = dict.fromkeys(self.ids, 0)
        self.batches_received = self.plies_received = 0
        self.duplicates = self.lost = self.restarts = self.replaced = 0
        self.expected: set[tuple[int, int]] = set()   # (actor id, sequence) asked for, not yet received
        self.keep: list[Any] = []   # the weight refs of the batches being played, alive while they are
        self.prefetched: tuple[int, dict[Any, tuple[int, int]]] | None = None  # (share, requests in flight)
        self.lag = 0                # updates between the weights that played the last batches and the learner's
        self.wait_seconds = 0.0     # the learner's time inside collect(): waiting for batches
        # the actors' own account, summed over the batches received (see SelfPlayActor.play)
        self.actor_seconds = dict.fromkeys(("call_seconds", "idle_seconds", "seconds", "network_seconds"), 0.0)

    # ----- start-up
    def start_server(self, device: str):
        server = ray.remote(InferenceServer).options(**self.server_options, max_restarts=MAX_RESTARTS)
        return server.remote(self.config.model_dump(), device, len(self.ids))

    def spawn(self, aid: int):
        actor = ray.remote(SelfPlayActor).options(num_cpus=self.config.actor_cpus, max_restarts=MAX_RESTARTS,
                                                  scheduling_strategy="SPREAD")
        return actor.remote(self.config.model_dump(), aid)

    def wait_for(self, actors: dict[int, Any]) -> list[dict[str, Any]]:
        try:
            return ray.get([actor.identity.remote() for actor in actors.values()], timeout=START_TIMEOUT_S)
        except GetTimeoutError:
            self.close()  # pending actors would otherwise keep waiting for CPUs
            raise RuntimeError(f"self-play actors ({self.config.actor_cpus:g} CPU each) did not start within "
                               f"{START_TIMEOUT_S:g} s; free now: {ray.available_resources()}") from None

    # ----- collection
    def collect(self, weights: dict[str, torch.Tensor], plies: int, *, seed: int,
                opponent: dict[str, torch.Tensor] | None = None) -> list[ExperienceBatch]:
        """This update's batches. With `staleness` 1 they were asked for at the previous call,
        with the weights of then, and the actors are asked for the next ones (with `weights`)
        before this returns, so they play while the learner updates: every batch after the
        first is one update old (`policy_lag`), its log-probs those of the weights that played."""
        started = time.perf_counter()
        share = -(-plies // len(self.actors))
        if self.prefetched is not None:   # asked for at the previous call, with the weights of then
            (old_share, pending), self.prefetched, self.lag = self.prefetched, None, 1
            # the next batches are asked for before these are gathered: each actor starts on them
            # as soon as it has sent its batch, instead of idling while the learner receives and
            # unpacks every actor's batch (a large share of an iteration with many actors)
            self.prefetched = (share, self.dispatch(self.put_weights(weights, opponent), share, seed))
            batches = self.gather(pending, old_share, seed)
        else:
            batches, self.lag = [], 0
        missing = plies - sum(len(batch) for batch in batches)
        if missing > 0:                   # no batches in flight, or fewer moves than asked for now
            # (with batches already asked for above, these wait behind them on each actor)
            rest = -(-missing // len(self.actors))
            batches += self.gather(self.dispatch(self.put_weights(weights, opponent), rest, seed), rest, seed)
        if self.config.staleness > 0 and self.prefetched is None:
            self.prefetched = (share, self.dispatch(self.put_weights(weights, opponent), share, seed))
        self.wait_seconds += time.perf_counter() - started
        return batches

    def put_weights(self, weights, opponent) -> list[Any]:
        """Once per update, one object shared by every actor (or by the inference server)."""
        return [ray.put(weights)] + ([] if opponent is None else [ray.put(opponent)])

    def dispatch(self, keep: list[Any], share: int, seed: int) -> dict[Any, tuple[int, int]]:
        """Ask every actor for `share` learner moves: ObjectRef -> (actor id, sequence)."""
        self.keep = keep
        return dict(self.ask(aid, share, seed) for aid in self.ids)

    def gather(self, pending: dict[Any, tuple[int, int]], share: int, seed: int) -> list[ExperienceBatch]:
        batches, failures = [], 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=REPLY_TIMEOUT_S)
            if not ready:
                raise TimeoutError(f"no self-play batch within {REPLY_TIMEOUT_S:g} s from actors "
                                   f"{sorted(aid for aid, _ in pending.values())}")
            aid, sequence = pending.pop(ready[0])
            try:
                incarnation, batch = ray.get(ready[0])
            except RayActorError as error:
                failures += 1
                if failures > 4 * len(self.ids) + 4:
                    raise RuntimeError(f"self-play actors keep dying ({failures} failures in one collection); "
                                       f"last: {str(error).splitlines()[0]}") from error
                self.lost += 1            # its share is asked for again below: the loss is counted, not hidden
                self.expected.discard((aid, sequence))   # should it turn up after all, it counts as a duplicate
                self.recover(aid)
                pending.update([self.ask(aid, share, seed)])
                continue
            self.note_incarnation(aid, incarnation)
            if self.accept(aid, sequence, batch):
                batches.append(batch)
        return batches

    def ask(self, aid: int, plies: int, seed: int) -> tuple[Any, tuple[int, int]]:
        """One request, registered in the ledger: (its ObjectRef, (actor id, sequence))."""
        sequence = self.next_sequence[aid]
        self.next_sequence[aid] += 1
        self.expected.add((aid, sequence))
        actor_seed = int(np.random.SeedSequence([seed, aid, sequence]).generate_state(1)[0])
        weights, opponent = self.keep[0], self.keep[1] if len(self.keep) > 1 else None
        if self.server is not None:  # boxed, so Ray passes the refs on instead of resolving them
            weights, opponent = [weights], None if opponent is None else [opponent]
        ref = self.actors[aid].play.remote(weights, plies, actor_seed, opponent, sequence, self.server)
        return ref, (aid, sequence)

    def accept(self, aid: int, sequence: int, batch: ExperienceBatch) -> bool:
        """Count a batch once: it must be one we asked for and have not received yet."""
        key = (aid, sequence)
        if key not in self.expected or batch.source != actor_name(aid) or batch.sequence != sequence:
            self.duplicates += 1
            return False
        self.expected.discard(key)
        self.actor_batches[aid] += 1
        self.batches_received += 1
        self.plies_received += int(batch.stats["plies"])
        for key in self.actor_seconds:
            self.actor_seconds[key] += float(batch.stats.get(key, 0.0))
        return True

    def recover(self, aid: int) -> None:
        """After a failed request: wait for Ray's restart, or replace an actor dead for good."""
        try:
            info = ray.get(self.actors[aid].identity.remote(), timeout=START_TIMEOUT_S)
        except ActorDiedError:  # its restarts are used up
            ray.kill(self.actors[aid])
            self.actors[aid] = self.spawn(aid)
            info = self.wait_for({aid: self.actors[aid]})[0]
            self.incarnations[aid] = info["incarnation"]
            self.replaced += 1
            return
        self.note_incarnation(aid, info["incarnation"])

    def note_incarnation(self, aid: int, incarnation: str) -> None:
        if incarnation != self.incarnations[aid]:  # Ray restarted it (perhaps while it was idle)
            self.incarnations[aid] = incarnation
            self.restarts += 1

    # ----- counters, state, end
    def counters(self) -> dict[str, float]:
        per_actor = [self.actor_batches[aid] for aid in self.ids]
        return {"batches": self.batches_received, "plies": self.plies_received, "duplicates": self.duplicates,
                "lost": self.lost, "restarts": self.restarts, "replaced": self.replaced, "actors": len(self.ids),
                "actor_batches_min": min(per_actor), "actor_batches_max": max(per_actor), "policy_lag": self.lag,
                "wait_seconds": self.wait_seconds,
                "actor_call_seconds": self.actor_seconds["call_seconds"],
                "actor_idle_seconds": self.actor_seconds["idle_seconds"],
                "actor_games_seconds": self.actor_seconds["seconds"],
                "actor_network_seconds": self.actor_seconds["network_seconds"]}

    def state_dict(self) -> dict[str, Any]:
        """Counters per rank, sequences, batch counts and games in progress per actor. With several
        learners every rank's part is gathered here (all ranks checkpoint at the same iterations),
        so that rank 0's checkpoint resumes every rank, not only its own actors."""
        counters = {"batches_received": self.batches_received, "plies_received": self.plies_received,
                    "duplicates": self.duplicates, "lost": self.lost, "restarts": self.restarts,
                    "replaced": self.replaced}
        parts = gather_ranks({"counters": counters, "next_sequence": dict(self.next_sequence),
                              "actor_batches": dict(self.actor_batches), "games": self.games()})
        return {"ranks": [part["counters"] for part in parts],
                **{key: {aid: value for part in parts for aid, value in part[key].items()}
                   for key in ("next_sequence", "actor_batches", "games")}}

    def games(self) -> dict[int, list[dict[str, Any]]]:
        """Each actor's games in progress; an actor that cannot answer now has none to keep."""
        games = {}
        for aid, actor in self.actors.items():
            try:
                games[aid] = ray.get(actor.games.remote(), timeout=START_TIMEOUT_S)
            except (RayActorError, GetTimeoutError):
                continue
        return games

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "ranks" not in state:  # a checkpoint of the in-process source: start the counters afresh
            return
        if self.rank < len(state["ranks"]):  # run with fewer learners before: new ranks count from 0
            for name, value in state["ranks"][self.rank].items():
                setattr(self, name, int(value))
        for aid in self.ids:  # the actors this rank owns (ownership follows the learner count)
            self.next_sequence[aid] = int(state["next_sequence"].get(aid, 0))
            self.actor_batches[aid] = int(state["actor_batches"].get(aid, 0))
        loads = [self.actors[aid].load_games.remote(games)
                 for aid, games in state["games"].items() if aid in self.actors]
        ray.get(loads, timeout=START_TIMEOUT_S)

    def close(self) -> None:
        for actor in list(self.actors.values()) + ([self.server] if self.server is not None else []):
            ray.kill(actor)
        self.actors, self.server = {}, None


# ---------------------------------------------------------------- evaluation beside training
class EvaluationActor:
    """Plays evaluation matches (trainers/selfplay/evaluation.py) for the learner."""

    def __init__(self, config: dict[str, Any]):
        torch.set_num_threads(1)
        self.config = PpoShogiConfig(**config)

    def ready(self) -> int:
        return os.getpid()

    @ray.method(max_task_retries=0)   # a failure is the evaluator's to handle: it replays the match
    def play(self, match: Match) -> tuple[Any, float]:
        started = time.perf_counter()
        return play(match, self.config), time.perf_counter() - started


class RayEvaluator:
    """Evaluations on `eval_actors` Ray actors while the learner trains on: `submit` queues an
    iteration's matches and returns at once; `poll` hands back the evaluations whose matches are
    all in, each tagged with the iteration whose weights played. A match whose actor died is
    played again from the start on a fresh actor (counted in `replayed`/`replaced`), so no
    evaluation is lost or counted from a partial match."""

    def __init__(self, config: PpoShogiConfig):
        self.config = config
        self.actors = [self.spawn() for _ in range(config.eval_actors)]
        try:
            ray.get([actor.ready.remote() for actor in self.actors], timeout=START_TIMEOUT_S)
        except GetTimeoutError:
            self.close()
            raise RuntimeError(f"evaluation actors ({config.actor_cpus:g} CPU each) did not start within "
                               f"{START_TIMEOUT_S:g} s; free now: {ray.available_resources()}") from None
        self.queue: collections.deque[Match] = collections.deque()
        self.running: dict[Any, tuple[int, Match]] = {}      # ObjectRef -> (actor index, match)
        self.partial: dict[int, Evaluation] = {}             # iteration -> results so far
        self.expected: dict[int, list[str]] = {}             # iteration -> its opponents, in order
        self.replayed = self.replaced = 0

    def spawn(self):
        actor = ray.remote(EvaluationActor).options(num_cpus=self.config.actor_cpus, max_restarts=0,
                                                    scheduling_strategy="SPREAD")
        return actor.remote(self.config.model_dump())

    def submit(self, matches: list[Match]) -> None:
        iteration = matches[0].iteration
        self.partial[iteration] = Evaluation(iteration)
        self.expected[iteration] = [match.opponent for match in matches]
        self.queue.extend(matches)
        self.dispatch()

    def dispatch(self) -> None:
        busy = {index for index, _ in self.running.values()}
        for index, actor in enumerate(self.actors):
            if index not in busy and self.queue:
                match = self.queue.popleft()
                self.running[actor.play.remote(match)] = (index, match)

    def poll(self, wait: bool = False) -> list[Evaluation]:
        while self.running:
            ready, _ = ray.wait(list(self.running), num_returns=1 if wait else len(self.running),
                                timeout=REPLY_TIMEOUT_S if wait else 0)
            if not ready:
                if wait:
                    raise TimeoutError(f"no evaluation match finished within {REPLY_TIMEOUT_S:g} s")
                break
            for ref in ready:
                index, match = self.running.pop(ref)
                try:
                    result, seconds = ray.get(ref)
                except RayActorError:
                    ray.kill(self.actors[index])
                    self.actors[index] = self.spawn()
                    self.replaced += 1
                    self.replayed += 1
                    self.queue.appendleft(match)   # played again, whole, on the fresh actor
                    continue
                evaluation = self.partial[match.iteration]
                evaluation.results[match.opponent] = result
                evaluation.labels[match.opponent] = match.opponent_label or match.opponent
                evaluation.seconds += seconds
            self.dispatch()
        done = sorted(iteration for iteration, evaluation in self.partial.items()
                      if len(evaluation.results) == len(self.expected[iteration]))
        return [self.finish(iteration) for iteration in done]

    def finish(self, iteration: int) -> Evaluation:
        order = self.expected.pop(iteration)
        evaluation = self.partial.pop(iteration)
        # the matches in the order they were submitted, whatever order they finished in
        evaluation.results = {name: evaluation.results[name] for name in order}
        return evaluation

    def pending(self) -> list[int]:
        return sorted(self.partial)

    def counters(self) -> dict[str, float]:
        return {"eval_replayed": float(self.replayed), "eval_replaced": float(self.replaced)}

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.running = [], {}


def _make_ray_evaluator(config: PpoShogiConfig, context: Any):
    """Evaluation actors for a single learner; with several (DDP) every rank must see the same
    evaluations at the same iteration, so each plays them itself, in step."""
    if context.world_size > 1:
        return LocalEvaluator(config, context.device)
    return RayEvaluator(config)


register_evaluator("ray", _make_ray_evaluator)


def _make_ray_source(config: PpoShogiConfig, context: Any) -> RaySource:
    return RaySource(config, context.rank, context.world_size, context.device)


register_source("ray", _make_ray_source)
