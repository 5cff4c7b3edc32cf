"""Retrieval: the permission filter (`filters`, the security boundary), the vector store edge (`store`, the only
module importing pymilvus), embedders, a permission-keyed cache, search, the ingest runner and its benchmark.
Importing this package is cheap: pymilvus and onnxruntime load only when a store or embedder is made."""

from .cache import RetrievalCache, cache_key, normalise_query
from .filters import Filter, Principal, for_principal, stored_access

__all__ = ["Principal", "Filter", "for_principal", "stored_access", "RetrievalCache", "cache_key",
           "normalise_query"]
