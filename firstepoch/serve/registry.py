"""What a server serves: models and indexes loaded once at start, each under a name, each with a slot that
runs one request at a time and a bounded first-come-first-served queue in front of it."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firstepoch.errors import FirstEpochError

KINDS = ("llm", "embedder", "classifier", "regressor", "index")


class Busy(Exception):
    """The model's queue is full: the client should retry later (503 + Retry-After)."""

    def __init__(self, name: str, retry_after: int):
        super().__init__(f"model {name!r} is busy ({retry_after}s); try again shortly")
        self.retry_after = retry_after


def compute_thread() -> ThreadPoolExecutor:
    """The one thread that loads and runs every model of a server. One thread, not one per model: a second
    thread entering OpenMP regions doubles the threads OpenMP manages, and past the core count its workers
    stop spinning between regions, which halved decode speed here (70 against 160 tokens/s on 2 cores)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="firstepoch-compute")


class Slot:
    """One request at a time on one model, in arrival order, with at most `queue_size` waiting.

    `async with slot:` admits, waits its turn and holds the model. A stream reserves its place first
    (`slot.reserve()`, a 503 while nothing is sent yet) and enters later with `async with reservation:`, so that
    a stream admitted before its headers went out is never refused after them. Work runs on the compute
    thread, so the event loop (and `/health`) stays free while a model computes.
    """

    def __init__(self, name: str, queue_size: int, thread: ThreadPoolExecutor, parallel: int = 1):
        self.name, self.queue_size, self.thread, self.parallel = name, queue_size, thread, parallel
        # asyncio's lock and semaphore wake waiters in arrival order: fair. With continuous batching (a
        # `Batcher`), `parallel` requests hold the model at once, their tokens made on the compute thread and
        # their text read off it by threads of their own, which only wait for tokens.
        self.lock = asyncio.Lock() if parallel == 1 else asyncio.Semaphore(parallel)
        self.waiting = 0  # requests admitted and not yet holding the model (reserved ones included)
        self.holding = 0  # requests holding it (at most `parallel`)
        self._held: dict = {}  # task -> the reservation it holds through `async with slot`
        self.busy_seconds = 0.0

    def __repr__(self):
        return f"Slot({self.name!r}, waiting={self.waiting}, busy={self.lock.locked()})"

    def reserve(self) -> "Reservation":
        """A place in the queue, or Busy when the queue is full: at most `queue_size` waiting behind the one that
        holds the model, counting the reserved streams that have not taken it yet."""
        if self.waiting >= self.queue_size + (self.parallel - self.holding):
            raise Busy(self.name, retry_after=max(1, round(self.busy_seconds or 1)))
        self.waiting += 1
        return Reservation(self)

    async def __aenter__(self):
        reservation = self.reserve()
        await reservation.__aenter__()
        self._held[asyncio.current_task()] = reservation  # with batching, several tasks hold the model at once
        return self

    async def __aexit__(self, *exc):
        await self._held.pop(asyncio.current_task()).__aexit__(*exc)

    async def run(self, fn, *args):
        """`fn(*args)` on the slot's thread."""
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn, *args)

    def reader(self) -> ThreadPoolExecutor:
        """Where one generation's text is read: the compute thread, or with batching a thread of the request's
        own, which only waits for the tokens the compute thread makes for every request (`shutdown` it after)."""
        return self.thread if self.parallel == 1 else ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-reader")


class Reservation:
    """An admitted request's place in a slot's queue: `async with` waits for the model and holds it;
    `cancel()` gives the place back if it was never used (a client that left before its stream started)."""

    def __init__(self, slot: Slot):
        self.slot, self.state = slot, "waiting"  # waiting -> holding -> done, or waiting -> done

    async def __aenter__(self) -> Slot:
        slot = self.slot
        if self.state != "waiting":
            raise RuntimeError(f"a reservation of {slot.name!r} entered twice or after cancel()")
        try:
            await slot.lock.acquire()
        except BaseException:
            self.cancel()
            raise
        slot.waiting -= 1
        slot.holding += 1
        self.state, self._since = "holding", time.perf_counter()
        return slot

    async def __aexit__(self, *exc):
        slot, self.state = self.slot, "done"
        slot.busy_seconds = 0.8 * slot.busy_seconds + 0.2 * (time.perf_counter() - self._since)
        slot.holding -= 1
        slot.lock.release()

    def cancel(self) -> None:
        if self.state == "waiting":
            self.slot.waiting -= 1
            self.state = "done"


@dataclass
class Served:
    name: str
    kind: str  # one of KINDS
    obj: Any  # LanguageModel, Embedder, Predictor or Index
    source: str  # where it came from, for /v1/models and /api/show
    slot: Slot
    info: dict = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))


class Registry:
    """Name -> what is served. Requests name a model or an index; nothing else is ever looked up."""

    def __init__(self, queue_size: int = 16, thread: ThreadPoolExecutor | None = None, parallel: int | None = 1):
        self.queue_size, self.parallel = queue_size, parallel  # None: each GGUF model's `auto_parallel`
        self.thread = thread or compute_thread()
        self.items: dict[str, Served] = {}

    def add(self, name: str, kind: str, obj, source: str, **info) -> Served:
        if name in self.items:
            raise FirstEpochError(f"two things to serve are both named {name!r}; rename one (NAME=PATH)")
        # continuous batching for the LLMs the C layers run (GGUF models on the CPU); the others one at a time
        parallel = 1
        if kind == "llm" and getattr(obj.model, "c_layers", None) is not None:
            from firstepoch.llm.batch import Batcher, auto_parallel

            parallel = self.parallel if self.parallel is not None else auto_parallel(
                obj.model.config, kv_cache=obj.model.kv_cache_type)
            if parallel > 1:
                obj.batcher = Batcher(obj, parallel)
        slot = Slot(name, self.queue_size, self.thread, parallel)
        served = Served(name, kind, obj, source, slot, info)
        self.items[name] = served
        return served

    def get(self, name: str, kinds: tuple[str, ...]) -> Served | None:
        served = self.items.get(name)
        return served if served is not None and served.kind in kinds else None

    def of_kind(self, *kinds: str) -> list[Served]:
        return [s for s in self.items.values() if s.kind in kinds]


def load_registry(models: list[str], indexes: list[str], queue_size: int = 16, context: int = 4096,
                  parallel: int | None = 1, chat_template: Path | None = None, kv_cache: str = "f16") -> Registry:
    """Load what `firstepoch serve` was given. MODEL is a bundled name, a path (GGUF, Hugging Face folder,
    bundle, sentence-transformers folder), or NAME=PATH to choose the served name. With no MODEL: the bundled
    chat model and the bundled embedding model. Everything is loaded on the compute thread that will run it."""
    registry = Registry(queue_size, parallel=parallel)
    registry.thread.submit(_load_into, registry, models, indexes, context, chat_template, kv_cache).result()
    return registry


def _load_into(registry: Registry, models: list[str], indexes: list[str], context: int,
               chat_template: Path | None = None, kv_cache: str = "f16") -> None:
    from firstepoch.llm.models import DEFAULT_MODEL
    from firstepoch.loading import load
    from firstepoch.retrieval.embed import DEFAULT_EMBEDDER
    from firstepoch.retrieval.index import Index

    for spec in models or [DEFAULT_MODEL, DEFAULT_EMBEDDER]:
        name, _, target = spec.partition("=") if "=" in spec else ("", "", spec)
        obj = load(target, context=context, chat_template=chat_template)  # the template: for chat models
        if obj.kind == "llm" and kv_cache != "f16":
            obj.set_kv_cache(kv_cache)
        info = {"dim": obj.dim} if obj.kind == "embedder" else {}
        registry.add(name or _default_name(target, obj), obj.kind, obj, target, **info)
    for spec in indexes:
        name, _, target = spec.partition("=") if "=" in spec else (spec, "", spec)
        registry.add(Path(name).name, "index", Index.open(target, create=False), target)


def _default_name(target: str, obj) -> str:
    """A bundled name as it is, an embedder by its own name, a bundle by its run's name, a file by its stem."""
    from firstepoch.bundle import is_bundle
    from firstepoch.llm.models import BUNDLED

    path = Path(target)
    if obj.kind == "embedder":
        return obj.name
    if target in BUNDLED:
        return target
    if is_bundle(path):
        return _bundle_name(path)
    return path.stem if path.suffix == ".gguf" else path.name


def _bundle_name(path: Path) -> str:
    path = path.resolve()
    return path.parent.name if path.name == "model" else path.name
