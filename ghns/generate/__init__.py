"""Stage 2 (paper 3.2): the hard-negative generator. Parts shuffle, FAISS nearest-part priority,
FilterNet scoring in feature space, per-class budgets, the bank."""
