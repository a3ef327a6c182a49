"""Generative retrieval (TIGER): semantic IDs, a seq2seq recommender, trie-constrained batched beam search.

Modules: ``semantic_ids`` (embeddings -> codes), ``model`` (Tiger), ``train``, ``decode`` (beam search,
exact scoring, hybrid ranker), ``baselines`` (popularity, transition heuristic), ``metrics``,
``evaluate``, ``cli`` (``craft retrieval train|eval``). Data readers live in ``craft.data.recsys``.
Nothing is imported here, so ``craft --help`` stays fast.
"""
