"""Language models: sampling with a KV cache, and the `LanguageModel` wrapper (tokenizer + Transformer)."""
from firstepoch.llm.generate import LanguageModel, sample_tokens

__all__ = ["LanguageModel", "sample_tokens"]
