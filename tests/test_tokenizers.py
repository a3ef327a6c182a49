import pytest

from craft.tokenizers import (
    DVT_SPECIALS, ByteTokenizer, CharTokenizer, GPT2Tokenizer, get_tokenizer, tokenizer_from_dict,
)

TEXT = "See [the docs](https://x.org/a_(b)).\nÜnïcode — ok"


def test_gpt2_real_ranks_offline():
    tok = GPT2Tokenizer()
    assert tok.vocab_size == 50257 and tok.eos_id == 50256
    assert tok.encode("[") == [58] and tok.encode(" [") == [685] and tok.encode(")") == [8]
    assert 16151 in tok.encode("[a](b)")
    assert tok.token_bytes[737] == b")." and tok.token_bytes[828] == b"),"
    assert tok.decode(tok.encode(TEXT)) == TEXT


@pytest.mark.parametrize("name", ["gpt2", "byte", "char"])
def test_round_trip_and_token_bytes(name):
    tok = get_tokenizer(name, corpus=[TEXT])
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert len(tok.token_bytes) == tok.vocab_size
    assert b"".join(tok.token_bytes[i] for i in ids) == TEXT.encode("utf-8")
    again = tokenizer_from_dict(tok.to_dict())
    assert again.encode(TEXT) == ids and again.vocab_size == tok.vocab_size


def test_char_uses_dvt_specials_and_unk():
    tok = CharTokenizer.from_corpus("abc")
    assert tok.chars[:4] == list(DVT_SPECIALS)
    assert (tok.specials["<unk>"], tok.pad_id, tok.eos_id, tok.join_id) == (0, 1, 2, 3)
    assert "<mask>" not in tok.specials and "<sep>" not in tok.specials
    assert tok.encode("abz") == [4, 5, 0]
    assert tok.vocab_size == 7


def test_byte_specials_after_bytes():
    tok = ByteTokenizer()
    assert tok.vocab_size == 258 and tok.eos_id == 256 and tok.pad_id == 257
    assert tok.encode("é") == [0xC3, 0xA9]


@pytest.mark.parametrize("name", ["gpt2", "byte", "char"])
def test_decode_rejects_ids_outside_vocab(name):
    tok = get_tokenizer(name, corpus="ab")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_unknown_name_and_missing_corpus():
    with pytest.raises(ValueError, match="expected one of"):
        get_tokenizer("sentencepiece")
    with pytest.raises(ValueError, match="corpus"):
        get_tokenizer("char")
