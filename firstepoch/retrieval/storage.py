"""Where an index lives on disk: its SQLite database (chunks, vectors, full-text table) and its HNSW graph,
and one clear line when a write finds no room."""
from __future__ import annotations

import errno
import hashlib
import os
import re
import sqlite3
from contextlib import contextmanager
from pathlib import Path

from firstepoch.errors import FirstEpochError

# a write that found no room: SQLite says SQLITE_FULL for ENOSPC, and SQLITE_IOERR_WRITE (or _SHMSIZE, growing the
# -shm file) when a write failed with EFBIG (a file-size limit) or EDQUOT (a quota); Python's own writes raise
# OSError with one of these errno values
NO_ROOM_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_NO_ROOM_SQLITE = {13: "database or disk is full", 778: "disk I/O error", 4874: "disk I/O error"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, root TEXT NOT NULL, hash TEXT NOT NULL,
                                  status TEXT NOT NULL, detail TEXT, chunks INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL, page INTEGER,
                                   start INTEGER NOT NULL, end INTEGER NOT NULL, text TEXT NOT NULL,
                                   vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_path ON chunks (path);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5 (text, tokenize = 'porter unicode61');
"""


def connect(file: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(file), timeout=30, check_same_thread=False)  # a server uses it from one worker thread
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.executescript(_SCHEMA)
        if "section" not in {row[1] for row in db.execute("PRAGMA table_info(chunks)")}:  # an index of format 1
            db.execute("ALTER TABLE chunks ADD COLUMN section TEXT NOT NULL DEFAULT ''")
    except sqlite3.DatabaseError as exc:
        db.close()
        if is_no_room(exc):  # not a damaged index: the disk is full
            raise no_room(file.parent, exc) from None
        raise FirstEpochError(f"{file}: not a firstepoch index ({exc}); remove it or choose another --index") from None
    return db


def is_no_room(exc: BaseException) -> bool:
    """Whether `exc` is a write that failed for want of space (disk, quota or file-size limit)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+; before that, SQLite's message says it
        return code in _NO_ROOM_SQLITE if code is not None else str(exc) in _NO_ROOM_SQLITE.values()
    return isinstance(exc, OSError) and exc.errno in NO_ROOM_ERRNOS


def no_room(path: Path, detail) -> FirstEpochError:
    return FirstEpochError(f"index {path}: cannot write ({detail}); the disk or your quota is full: free some space "
                           f"and run again (files indexed before are kept)")


@contextmanager
def writing(path: Path):
    """One clear line instead of a traceback when a write to the index at `path` finds no room."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        if not is_no_room(exc):
            raise
        raise no_room(path, exc) from None


def new_graph(dim: int):
    """usearch's HNSW over unit vectors (inner product = cosine), stored as fp16. Chosen over FAISS's HNSW
    (faster per query here, see BENCHMARKS.md) because it deletes keys for real and maps its file instead
    of reading it; 96 candidates per search reach recall@10 0.97 on 100,000 real embeddings."""
    from usearch.index import Index as Graph

    return Graph(ndim=dim, metric="ip", dtype="f16", connectivity=16, expansion_add=128, expansion_search=96)


def graph_threads(size: int) -> int:
    """Threads for inserting into the graph: one below 50,000 vectors, where concurrent inserts were seen to
    leave a node unreachable now and then (a test with 136 vectors missed two in one build of four)."""
    return 1 if size < 50_000 else (os.cpu_count() or 1)


def index_path(name: str | Path) -> Path:
    """An index name (kept in firstepoch's data folder, `indexes/NAME`) or a folder path."""
    name = str(name)
    if os.sep in name or name.startswith(".") or (os.altsep and os.altsep in name):
        return Path(name).expanduser()
    if not re.fullmatch(r"[\w.-]+", name):
        raise FirstEpochError(f"index name {name!r}: use letters, digits, '.', '-' and '_' (or give a folder path)")
    from firstepoch.paths import home

    return home() / "indexes" / name


def document_files(folder: str | Path) -> list[Path]:
    """The files an indexing run looks at: `folder` itself when it is a file, else every file below it but
    hidden ones (or ones in hidden folders), sorted."""
    root = Path(folder).expanduser().resolve()
    if not root.exists():
        raise FirstEpochError(f"{folder}: no such file or folder")
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def file_hash(path: Path, version: str) -> str:
    """The file's sha256, prefixed by `version` (how it is read and cut): a new reader re-reads every file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{version}:{h.hexdigest()}"
