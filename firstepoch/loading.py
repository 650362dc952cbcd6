"""`firstepoch.load`: one function for everything firstepoch runs, chosen by a table of formats.

    firstepoch.load("runs/pets/model")        # a bundle: a Predictor, or a LanguageModel for a GPT
    firstepoch.load("smollm2-135m-instruct")  # a bundled name, a .gguf file or a Hugging Face folder: an LLM
    firstepoch.load("all-minilm-l6-v2")       # a bundled name or a sentence-transformers folder: an Embedder
    firstepoch.load("efficientnet_lite0")     # a timm architecture name: a pretrained ImageNet classifier

A new kind of file is one entry in `FORMATS` (how to recognise it, how to load it); a new kind of bundle is
one entry in `BUNDLE_TASKS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from firstepoch.bundle import CONFIG_FILE, WEIGHTS_FILE, is_bundle, read_config
from firstepoch.errors import FirstEpochError
from firstepoch.llm import models as llm
from firstepoch.llm.gguf import GGUF_MAGIC
from firstepoch.llm.hf import is_hf_folder
from firstepoch.predictor import Predictor
from firstepoch.retrieval.embed import (BUNDLED_EMBEDDERS, is_sentence_transformers_folder, load_embedder,
                                       resolve_embedder)


@dataclass(frozen=True)
class Options:
    """What the caller asked for; each format takes the options that apply to it."""

    device: str | None = None
    context: int | None = None
    chat_template: str | Path | None = None


def _bundle(path: Path, options: Options):
    task = read_config(path)["task"]
    if task not in BUNDLE_TASKS:
        raise FirstEpochError(f"{path}: a bundle for the task {task!r}, which this version of firstepoch cannot "
                              f"load (known: {', '.join(BUNDLE_TASKS)}); upgrade firstepoch")
    return BUNDLE_TASKS[task](path, options.device)


def _llm(path: Path, options: Options):
    return llm.load(path, context=options.context, chat_template=options.chat_template)


def _embedder(path: Path, options: Options):
    return load_embedder(str(path))


def is_gguf_file(path: Path) -> bool:
    """A file named .gguf, or any file that starts with GGUF's magic bytes."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


@dataclass(frozen=True)
class Format:
    """One kind of thing `load` opens: its name in messages, how to recognise it, how to load it."""

    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path, Options], object]


# tried in order: the first whose `detect` holds loads the path
FORMATS = (
    Format("firstepoch bundle", is_bundle, _bundle),
    Format("sentence-transformers folder", is_sentence_transformers_folder, _embedder),
    Format("GGUF file", is_gguf_file, _llm),
    Format("Hugging Face model folder", is_hf_folder, _llm),
)

# a bundle's task -> what loads it
BUNDLE_TASKS: dict[str, Callable[[Path, str | None], object]] = {
    "classification": Predictor.from_bundle, "regression": Predictor.from_bundle,
    "language_model": llm.load_bundle,
}


def load(source: str | Path, device: str | None = None, context: int | None = None,
         chat_template: str | Path | None = None):
    """Load what `source` names, by the first entry of `FORMATS` that recognises it.

    Args:
        source: a bundle folder (from `learn.export` or `firstepoch train`), a .gguf file, a Hugging Face
            folder, a sentence-transformers folder, a bundled model name (`firstepoch models` lists them), a
            file in `firstepoch.llm.models_dir()`, or a timm architecture name (a pretrained ImageNet model).
        device: where a bundle's model runs (default: the best available).
        context: for LLMs, the most positions to attend to (default: the model's own).
        chat_template: for LLMs, a Jinja chat template overriding the model's own (its text, or a Path).

    Returns:
        a `Predictor` (classifiers and regressors), a `LanguageModel`, an `Embedder` or an
        `ImageNetClassifier`; each has `kind` ("classifier", "regressor", "llm", "embedder").
    """
    options = Options(device, context, chat_template)
    path = resolve(source)
    if path is None:
        from firstepoch.models.vision import ImageNetClassifier

        return ImageNetClassifier(str(source))
    for entry in FORMATS:
        if entry.detect(path):
            return entry.load(path, options)
    first, *others = (entry.name for entry in FORMATS)
    raise FirstEpochError(f"{path}: not a {first} (expected a folder with {CONFIG_FILE} and {WEIGHTS_FILE}, as "
                          f"written by learn.export or firstepoch train), nor a {', a '.join(others)}")


def resolve(source: str | Path) -> Path | None:
    """The file or folder `source` names (bundled names first, then paths, then the models folder); None for a
    timm architecture name; one clear line when it is none of these."""
    name = str(source)
    if name in BUNDLED_EMBEDDERS:
        return resolve_embedder(name)
    try:
        return llm.resolve(name)  # a bundled LLM's name, a path, or a file in the models folder
    except FirstEpochError:
        if Path(name).name == name and _is_timm_name(name):
            return None
        raise


def _is_timm_name(name: str) -> bool:
    import timm

    return timm.is_model(name)
