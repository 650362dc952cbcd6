"""A persistent document index: chunk text, metadata and vectors in SQLite (with an FTS5 table for
lexical search), and an HNSW graph (usearch) over the vectors once a collection is too big to scan.

    index = Index.open("notes", create=True)
    report = index.add("~/notes")            # incremental: by content hash
    for hit in index.search("how do I resume training?", k=5):
        print(hit.score, hit.source, hit.page, hit.text[:80])

Crash safety: SQLite commits are atomic and every file's chunks go in with one commit, so an interrupted
run leaves the index as it was after the last whole file. The HNSW graph is derived data, named after the
commit it reflects (`vectors-<generation>.usearch`); when it does not match the database it is rebuilt,
and until then search scans the vectors exactly, so a stale graph can never return deleted text.
Another process may update an open index (`firstepoch index` while a server holds it): each search asks SQLite
whether another connection committed since (`PRAGMA data_version`), if so dropping its vectors and graph.
A full disk stops an indexing run in one line; SQLite rolls the rest back.
"""
from __future__ import annotations

import os
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from firstepoch.errors import FirstEpochError
from firstepoch.retrieval.chunk import chunk_pages
from firstepoch.retrieval.documents import READERS, NoText, Unreadable, read_document
from firstepoch.retrieval.storage import (NO_ROOM_ERRNOS, connect, document_files, file_hash, graph_threads, index_path,
                                          new_graph, no_room, writing)

EXACT_LIMIT = 20_000  # up to this many chunks a search scans every vector (about 2 ms); above, HNSW
SEARCH_MODES = ("hybrid", "vector", "lexical")
EMBED_BATCH = 64  # chunks embedded between two progress reports
# hybrid score = 0.4 x cosine + 0.6 x BM25, each scaled to [0, 1] over the query's candidates; on the retrieval
# evaluation (benchmarks/retrieval_eval.py) this beat vector, BM25 and reciprocal rank fusion alike
VECTOR_WEIGHT = 0.4
TEXT_VERSION = "2"  # how files are read and cut (2: PDF layout, sections), kept with each hash: others are re-read


@dataclass
class Hit:
    """One search result: a chunk, where it comes from, and how well it matches."""
    id: int
    source: str  # the file, relative to the folder it was indexed from
    path: str  # the file's absolute path
    page: int | None
    start: int
    end: int
    text: str
    score: float  # cosine similarity between the query and the chunk
    rank_score: float = 0.0  # what the ranking used (cosine, BM25 or the fused score)
    section: str = ""  # the headings the passage is under, when the document has them

    @property
    def where(self) -> str:
        return f"{self.source}, page {self.page}" if self.page else self.source


@dataclass
class FileReport:
    path: str
    status: str  # indexed, unchanged, removed, no text, unreadable, skipped
    detail: str = ""
    chunks: int = 0


@dataclass
class Report:
    """What an indexing run did, file by file."""
    files: list[FileReport] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(f.status == status for f in self.files)

    @property
    def chunks_added(self) -> int:
        return sum(f.chunks for f in self.files if f.status == "indexed")


class Index:
    """Chunks of documents with their embeddings, on disk. Open with `Index.open(name)`."""

    def __init__(self, path: Path, db: sqlite3.Connection, embedder):
        self.path, self.db, self.embedder = path, db, embedder
        self._vectors: tuple[np.ndarray, np.ndarray] | None = None  # (ids, matrix) for exact search
        self._ann = None
        self._ann_generation = -1
        self._data_version = None  # SQLite's count of other connections' commits, when the caches were filled

    # ---------------------------------------------------------------------------------- opening

    @classmethod
    def open(cls, name: str | Path, model: str | None = None, create: bool = False) -> "Index":
        """Open the index `name` (see `index_path`). `create=True` makes it when missing, with `model`
        (default: the bundled all-MiniLM-L6-v2). An existing index is opened with the model it was built
        with; asking for another one is refused, because its vectors would not be comparable."""
        from firstepoch.retrieval.embed import load_embedder

        path = index_path(name)
        db_file = path / "index.sqlite"
        if not db_file.is_file():
            if not create:
                raise FirstEpochError(f"no index {name!r} at {path}; make it with: firstepoch index DOCS "
                                      f"--index {name}")
            with writing(path):
                path.mkdir(parents=True, exist_ok=True)
        db = connect(db_file)
        recorded = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if recorded:
            if model is not None and model != recorded["model"]:
                from firstepoch.retrieval.embed import resolve_embedder

                if resolve_embedder(model).resolve() != Path(recorded["model_path"]).resolve():
                    db.close()
                    raise FirstEpochError(
                        f"index {name!r} was built with the embedding model {recorded['model']} "
                        f"({recorded['dim']} dimensions); searching it with {model} would compare unlike "
                        f"vectors. Re-index with: firstepoch index DOCS --index {name} --model {model} --rebuild")
            from firstepoch.retrieval.embed import BUNDLED_EMBEDDERS

            # a bundled model by name (its folder moves with the Python environment), else the recorded folder
            own = recorded["model"] if recorded["model"] in BUNDLED_EMBEDDERS else recorded["model_path"]
            embedder = load_embedder(own if model is None else model)
            if embedder.dim != int(recorded["dim"]):
                db.close()
                raise FirstEpochError(f"index {name!r}: its vectors have {recorded['dim']} dimensions but the "
                                      f"model {embedder.name} gives {embedder.dim}; re-index with --rebuild")
        else:
            from firstepoch.retrieval.embed import resolve_embedder

            embedder = load_embedder(model)
            with writing(path), db:
                db.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("model", embedder.name), ("model_path", str(resolve_embedder(model))),
                    ("dim", str(embedder.dim)), ("normalized", "true"), ("generation", "0"),
                    ("format", "1")])
        return cls(path, db, embedder)

    @staticmethod
    def remove(name: str | Path) -> None:
        """Delete an index (for --rebuild)."""
        import shutil

        path = index_path(name)
        if (path / "index.sqlite").is_file():
            shutil.rmtree(path)

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def generation(self) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def info(self) -> dict:
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        files = self.db.execute("SELECT status, COUNT(*) FROM files GROUP BY status").fetchall()
        return {"path": str(self.path), "model": meta["model"], "dim": int(meta["dim"]), "chunks": len(self),
                "files": dict(files)}

    # ---------------------------------------------------------------------------------- indexing

    def add(self, folder: str | Path, chunk_tokens: int = 200, overlap: int = 32,
            progress: Callable[[FileReport], None] | None = None, files: list[Path] | None = None,
            embedded: Callable[[int], None] | None = None) -> Report:
        """Bring the index up to date with `folder` (a folder, or one file): new and changed files are
        read, chunked and embedded, unchanged ones (same content hash) are left alone, files gone from the
        folder are removed. Files of other folders in the same index are not touched. `files` is
        `document_files(folder)` when the caller already listed them. `progress` hears of each file once it
        is read (with its chunk count), `embedded` of each batch of chunks embedded (how many).

        Raises FirstEpochError when the disk is full; the index then holds every file up to the last commit."""
        with writing(self.path):
            return self._add(folder, chunk_tokens, overlap, progress, files, embedded)

    def _add(self, folder, chunk_tokens, overlap, progress, files, embedded) -> Report:
        started = time.perf_counter()
        root = Path(folder).expanduser().resolve()
        files = files if files is not None else document_files(root)
        base = root.parent if root.is_file() else root
        known = {path: digest for path, digest in self.db.execute(
            "SELECT path, hash FROM files WHERE root = ?", (str(base),))}
        report = Report()
        pending: list[tuple[str, str, FileReport, list]] = []
        removed_ids: list[int] = []
        added_ids: list[int] = []
        start_generation = self.generation

        def note(entry: FileReport):
            report.files.append(entry)
            if progress:
                progress(entry)

        def flush():
            ids = self._write(pending, str(base), removed_ids, embedded)
            added_ids.extend(ids)
            pending.clear()

        seen = set()
        for file in files:
            key = str(file)
            seen.add(key)
            rel = str(file.relative_to(base))
            if file.suffix.lower() not in READERS:
                note(FileReport(rel, "skipped", f"not a document ({file.suffix or 'no extension'})"))
                continue
            digest = file_hash(file, TEXT_VERSION)
            if known.get(key) == digest:
                note(FileReport(rel, "unchanged"))
                continue
            entry, chunks = self._extract(file, rel, chunk_tokens, overlap)
            pending.append((key, digest, entry, chunks))
            note(entry)
            if sum(len(c) for *_, c in pending) >= 256:
                flush()
        for key in sorted(set(known) - seen):
            pending.append((key, None, None, []))
            note(FileReport(str(Path(key).relative_to(base)), "removed"))
        if pending:
            flush()
        self._update_ann(start_generation, removed_ids, added_ids)
        report.seconds = time.perf_counter() - started
        return report

    def _extract(self, file: Path, rel: str, chunk_tokens: int, overlap: int):
        try:
            pages = read_document(file)
        except NoText as exc:
            return FileReport(rel, "no text", str(exc)), []
        except Unreadable as exc:
            return FileReport(rel, "unreadable", str(exc)), []
        e = self.embedder
        chunks = chunk_pages(pages, rel, e.count_tokens, e.token_offsets, min(chunk_tokens, e.max_text_tokens),
                             overlap, e.max_text_tokens)
        return FileReport(rel, "indexed", f"{len(pages)} page(s)" if pages[0].number else "", len(chunks)), chunks

    def _write(self, pending, root: str, removed_ids: list[int], embedded=None) -> list[int]:
        """Embed the pending files' chunks, then replace those files in one transaction."""
        texts = [c.embedding_text for *_, chunks in pending for c in chunks]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths in a batch: little padding
        matrix = np.empty((len(texts), self.embedder.dim), dtype=np.float32)
        for at in range(0, len(texts), EMBED_BATCH):
            rows = order[at:at + EMBED_BATCH]
            matrix[rows] = self.embedder.embed([texts[i] for i in rows])
            if embedded:
                embedded(len(rows))
        vectors = iter(matrix)
        added = []
        with self.db:  # one transaction: all of these files, or none of them
            for key, digest, entry, chunks in pending:
                old = [i for (i,) in self.db.execute("SELECT id FROM chunks WHERE path = ?", (key,))]
                removed_ids += old
                self.db.executemany("DELETE FROM chunks_fts WHERE rowid = ?", [(i,) for i in old])
                self.db.execute("DELETE FROM chunks WHERE path = ?", (key,))
                if entry is None:  # the file is gone
                    self.db.execute("DELETE FROM files WHERE path = ?", (key,))
                    continue
                for c in chunks:
                    v = _unit(next(vectors))
                    cur = self.db.execute("INSERT INTO chunks (path, page, start, end, text, vector, section) "
                                          "VALUES (?, ?, ?, ?, ?, ?, ?)", (key, c.page, c.start, c.end, c.text,
                                                                           v.tobytes(), c.section))
                    fts = "INSERT INTO chunks_fts (rowid, text) VALUES (?, ?)"
                    self.db.execute(fts, (cur.lastrowid, c.lexical_text))
                    added.append(cur.lastrowid)
                self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                                (key, root, digest, entry.status, entry.detail, len(chunks)))
            self.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        self._vectors = None
        return added

    # ---------------------------------------------------------------------------------- vectors

    def _ann_file(self, generation: int) -> Path:
        return self.path / f"vectors-{generation}.usearch"

    def _update_ann(self, start_generation: int, removed: list[int], added: list[int]) -> None:
        """After an indexing run: bring the HNSW graph to the new generation (edit the old one when it
        matches the run's starting point, else rebuild), written to a temp file and renamed."""
        generation = self.generation
        if len(self) <= EXACT_LIMIT or (generation == start_generation and self._ann_file(generation).exists()):
            self._drop_old_ann(keep=None if len(self) <= EXACT_LIMIT else generation)
            return
        ann = None
        previous = self._ann_file(start_generation)
        if previous.exists() and (removed or added):
            ann = new_graph(self.embedder.dim)
            ann.load(str(previous))
            gone = [i for i in removed if i in ann]
            if gone:
                ann.remove(gone)
            if added:
                ids, matrix = self._vectors_of(added)
                ann.add(ids, matrix, threads=graph_threads(len(ann) + len(ids)))
        self._save_ann(ann or self._build_ann(), generation)

    def _build_ann(self):
        ids, matrix = self._all_vectors()
        ann = new_graph(self.embedder.dim)
        if len(ids):
            ann.add(ids, matrix, threads=graph_threads(len(ids)))
        return ann

    def _save_ann(self, ann, generation: int) -> None:
        target = self._ann_file(generation)
        tmp = target.with_name(target.name + ".tmp")
        try:
            ann.save(str(tmp))
            os.replace(tmp, target)
        except (RuntimeError, OSError) as exc:  # usearch says only "Failed to serialize into stream"
            tmp.unlink(missing_ok=True)  # a part-written graph only takes the room a second run needs
            if isinstance(exc, OSError) and exc.errno not in NO_ROOM_ERRNOS:
                raise
            raise no_room(self.path, f"the vector graph: {exc}") from None
        self._drop_old_ann(keep=generation)
        self._ann, self._ann_generation = ann, generation

    def _drop_old_ann(self, keep: int | None) -> None:
        for f in self.path.glob("vectors-*.usearch*"):
            if keep is None or f.name != self._ann_file(keep).name:
                f.unlink(missing_ok=True)

    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        if self._vectors is None:
            rows = self.db.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            matrix = (np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
                      if rows else np.zeros((0, self.embedder.dim), dtype=np.float32))
            self._vectors = ids, matrix
        return self._vectors

    def _vectors_of(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        found = {}
        for start in range(0, len(ids), 900):  # SQLite's limit on parameters
            part = ids[start:start + 900]
            found.update(self.db.execute(f"SELECT id, vector FROM chunks WHERE id IN ({','.join('?' * len(part))})",
                                         part).fetchall())
        keys = [i for i in ids if i in found]
        matrix = np.frombuffer(b"".join(found[i] for i in keys), dtype=np.float32).reshape(len(keys), -1)
        return np.array(keys, dtype=np.int64), matrix

    def _ann_for_search(self):
        """The HNSW graph for this generation, loading or rebuilding it when needed; None: scan exactly."""
        if len(self) <= EXACT_LIMIT:
            return None
        generation = self.generation
        if self._ann is None or self._ann_generation != generation:
            file = self._ann_file(generation)
            if file.exists():
                ann = new_graph(self.embedder.dim)
                ann.view(str(file))  # memory-mapped, not read into memory
                self._ann, self._ann_generation = ann, generation
            else:  # an indexing run stopped before writing it: rebuild from the database
                import warnings

                warnings.warn(f"{self.path}: rebuilding the vector graph from the database ({len(self):,} chunks)")
                self._save_ann(self._build_ann(), generation)
        return self._ann

    # ---------------------------------------------------------------------------------- search

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        """The `k` chunks that best match `query`.

        Args:
            query: what to look for, in plain words.
            k: how many results.
            mode: "hybrid" (vector and BM25 rankings fused), "vector" (embeddings only) or "lexical"
                (SQLite FTS5 BM25 only).
        """
        if mode not in SEARCH_MODES:
            raise FirstEpochError(f"search mode {mode!r}: use one of {', '.join(SEARCH_MODES)}")
        if not query.strip():
            raise FirstEpochError("the query is empty")
        self._forget_if_changed()
        q = _unit(self.embedder.embed([query])[0])
        pool = max(k, 50) if mode == "hybrid" else k
        rankings = []
        if mode in ("hybrid", "vector"):
            rankings.append(self._vector_ranking(q, pool))
        if mode in ("hybrid", "lexical"):
            rankings.append(self._lexical_ranking(query, pool))
        if mode == "hybrid":
            ranked = _fuse(rankings[0], rankings[1], VECTOR_WEIGHT)[:k]
        else:
            ranked = rankings[0][:k]
        return self._hits(ranked, q)

    def _forget_if_changed(self) -> None:
        """Drop the cached vectors and graph if another connection (another process's indexing run) has
        committed since they were read; this connection's own commits already drop them in `_write`."""
        version = self.db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._vectors, self._ann, self._ann_generation = None, None, -1
            self._data_version = version

    def _vector_ranking(self, q: np.ndarray, k: int) -> list[tuple[int, float]]:
        ann = self._ann_for_search()
        if ann is not None:
            found = ann.search(q, k)
            return [(int(i), 1.0 - float(d)) for i, d in zip(found.keys, found.distances)]
        ids, matrix = self._all_vectors()
        if not len(ids):
            return []
        scores = matrix @ q
        top = np.argpartition(-scores, min(k, len(ids)) - 1)[:k] if len(ids) > k else np.arange(len(ids))
        top = top[np.argsort(-scores[top])]
        return [(int(ids[i]), float(scores[i])) for i in top]

    def _lexical_ranking(self, query: str, k: int) -> list[tuple[int, float]]:
        words = re.findall(r"\w+", query.lower())
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in dict.fromkeys(words))
        rows = self.db.execute("SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? "
                               "ORDER BY bm25(chunks_fts) LIMIT ?", (match, k)).fetchall()
        return [(int(i), -float(s)) for i, s in rows]  # bm25() is lower-is-better

    def _hits(self, ranked: list[tuple[int, float]], q: np.ndarray | None) -> list[Hit]:
        if not ranked:
            return []
        ids = [i for i, _ in ranked]
        rows = {r[0]: r for r in self.db.execute(
            f"SELECT c.id, c.path, f.root, c.page, c.start, c.end, c.text, c.vector, c.section FROM chunks c "
            f"JOIN files f ON f.path = c.path WHERE c.id IN ({','.join('?' * len(ids))})", ids)}
        hits = []
        for i, rank_score in ranked:
            if i not in rows:  # not in the database: never returned, whatever a graph says
                continue
            _, path, root, page, start, end, text, blob, section = rows[i]
            score = float(np.frombuffer(blob, dtype=np.float32) @ q) if q is not None else 0.0
            hits.append(Hit(i, os.path.relpath(path, root), path, page, start, end, text, score, rank_score, section))
        return hits

    def chunk(self, chunk_id: int) -> Hit | None:
        """The chunk with this id (as `Hit.id` gives it), scored 0; None when it is not in the index."""
        hits = self._hits([(int(chunk_id), 0.0)], None)
        return hits[0] if hits else None

    # ---------------------------------------------------------------------------------- answers

    def ask(self, question: str, model=None, k: int = 5, stream: bool = False, **options):
        """Answer `question` from this index's documents with numbered citations (see `rag.ask`)."""
        from firstepoch.retrieval.rag import ask

        return ask(self, question, model=model, k=k, stream=stream, **options)

    def files(self) -> Iterator[tuple[str, str, str, int]]:
        """(path, status, detail, chunks) for every file the index knows."""
        yield from self.db.execute("SELECT path, status, detail, chunks FROM files ORDER BY path")


def _fuse(vector: list[tuple[int, float]], lexical: list[tuple[int, float]], weight: float):
    """Convex combination of two rankings' scores, each min-max scaled; absent from a ranking counts as 0."""
    def scaled(ranking):
        if not ranking:
            return {}
        lo, hi = min(s for _, s in ranking), max(s for _, s in ranking)
        return {i: (s - lo) / (hi - lo) if hi > lo else 1.0 for i, s in ranking}

    v, b = scaled(vector), scaled(lexical)
    scores = {i: weight * v.get(i, 0.0) + (1 - weight) * b.get(i, 0.0) for i in v.keys() | b.keys()}
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v
