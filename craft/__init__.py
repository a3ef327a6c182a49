"""craft: small language models for low-spec devices, built on craft_kernels."""
from craft.tokenizers import ByteTokenizer, CharTokenizer, GPT2Tokenizer, get_tokenizer, tokenizer_from_dict

__version__ = "0.1.0"
__all__ = ["ByteTokenizer", "CharTokenizer", "GPT2Tokenizer", "get_tokenizer", "tokenizer_from_dict"]
