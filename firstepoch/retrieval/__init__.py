"""Search and question your own documents: embeddings, a persistent index, answers with citations."""
from firstepoch.retrieval.embed import DEFAULT_EMBEDDER, Embedder, embed, load_embedder
from firstepoch.retrieval.index import Hit, Index, Report
from firstepoch.retrieval.rag import Answer, Citation, ask

__all__ = ["DEFAULT_EMBEDDER", "Answer", "Citation", "Embedder", "Hit", "Index", "Report", "ask", "embed",
           "load_embedder"]
