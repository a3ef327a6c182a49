"""``DocumentCorpus``: the name linked generation used for its corpus reader.

There is one reader of a pretokenized corpus, :class:`craft.data.PretokenizedCorpus` (validated
at open time, shared with training); ``DocumentCorpus`` is that same class under its former name,
kept so existing code keeps working. New code should use ``PretokenizedCorpus``.
"""
from craft.data.pretokenize import PretokenizedCorpus

DocumentCorpus = PretokenizedCorpus

__all__ = ["DocumentCorpus"]
