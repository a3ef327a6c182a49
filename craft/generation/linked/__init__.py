"""Linked-document (DS2DS) generation: documents that link to documents, generated token by token
with a KV cache and an incremental document mask."""
from craft.generation.linked.config import GenerationConfig
from craft.generation.linked.context import ContextDocument, ContextFull, DocumentContext
from craft.generation.linked.corpus import DocumentCorpus
from craft.generation.linked.generator import (
    LinkedDocumentGenerator, PromptLinkProcessor, SingleDocumentGenerator, generate_linked, resolve_config,
)
from craft.generation.linked.result import GeneratedDocument, GenerationResult, topological_order

__all__ = ["GenerationConfig", "ContextDocument", "ContextFull", "DocumentContext", "DocumentCorpus",
           "GeneratedDocument", "GenerationResult", "topological_order", "LinkedDocumentGenerator", "PromptLinkProcessor",
           "SingleDocumentGenerator", "generate_linked", "resolve_config"]
