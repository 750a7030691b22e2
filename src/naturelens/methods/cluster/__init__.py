"""Clustering: reduce and cluster embeddings (``algorithms``) and the ``cluster`` method."""
