"""Language models: your own GPTs, GGUF files and Hugging Face folders on the one `Transformer`.

`load(name_or_path)` gives a `LanguageModel` with `generate(prompt)` and `chat(messages)`, each streamed as a
`Generation` with its own `GenerationStats`; `find_models()`
lists what is installed; `perplexity(lm, text)` measures a model on a text.
"""
from firstepoch.llm.generate import Generation, GenerationStats, LanguageModel, Sampling, sample_tokens
from firstepoch.llm.models import DEFAULT_MODEL, find_models, load
from firstepoch.llm.perplexity import perplexity

__all__ = ["DEFAULT_MODEL", "Generation", "GenerationStats", "LanguageModel", "Sampling", "find_models", "load",
           "perplexity", "sample_tokens"]
