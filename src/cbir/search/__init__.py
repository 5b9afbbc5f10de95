"""Exact and FAISS cosine search, query expansion and database augmentation."""
