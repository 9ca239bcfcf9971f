"""Near-repeats: prompt embeddings and one vector index per namespace.

Sits between `pipeline/` (which asks it for prompts like a new one) and
`cache/` (whose entries it indexes by their prompts). It knows the embedding
model; `cache/` still knows nothing of models, and nothing here knows HTTP.
"""

from similarity.embedding import EMBEDDER_NAME, Embedder, load_embedder
from similarity.index import Match, VectorIndex

__all__ = ["EMBEDDER_NAME", "Embedder", "Match", "VectorIndex", "load_embedder"]
