"""Corpora: the built-in Python-docs corpus, folder corpora, pretokenized shards + SQLite index, packing."""
from craft.data.builtin import builtin_corpus_dir, craft_home
from craft.data.corpus import CorpusError, CorpusNotFoundError, CorpusWarning, Document, parse_links, read_folder
from craft.data.packing import PackedSequences, WindowSampler, split_windows
from craft.data.pretokenize import (
    PretokenizedCorpus, check_out_dir, default_pretokenized_dir, ensure_pretokenized, is_corpus_build, is_pretokenized,
    pretokenize,
)

__all__ = ["builtin_corpus_dir", "craft_home", "CorpusError", "CorpusNotFoundError", "CorpusWarning", "Document",
           "parse_links", "read_folder", "PackedSequences", "WindowSampler", "split_windows", "PretokenizedCorpus",
           "check_out_dir", "default_pretokenized_dir", "ensure_pretokenized", "is_corpus_build", "is_pretokenized",
           "pretokenize"]
