"""Linked generation in its default mode for a linked-trained checkpoint (``cross_doc_link``,
``drop_oldest``) against a simple, independent implementation written here: it keeps its own list
of placed tokens, builds the attention mask itself and recomputes every token with a full float64 forward pass written from the
model's weights at every step. Nothing is shared with the generator but the model's weights, the
tokenizer and the public ``generate_linked`` call; decoding is greedy, so tokens must match exactly
(and the logits at every step closely).

The scenario: the root links to a new document in the middle of its text, that document links to a
third one in the middle of its own; each child is generated when its link completes, then its
parent resumes, and every token the parent writes from the link's closing parenthesis on sees the
child. What a token saw is fixed when it is written (the generator keeps keys and values in a
cache), so the reference mask lets token ``i`` see token ``j`` when ``j`` was placed before ``i``
and ``j``'s document was ``i``'s own or one it linked to at that time.
"""
import re

import pytest
import torch

from craft.generation.linked import generate_linked
from craft.models import LanguageModel, ModelConfig
from craft.tokenizers import get_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # the machine is shared

PROMPT = "# Root\nSee "
MAX_DOC = 40  # max_tokens_per_document: every document ends there (EOS is never sampled here)
FREE = 3  # tokens chosen by the model before a link is forced
LINKS = {"# Root\n": "[x](Topic A)", "# Topic A\n": "[y](Topic B)"}
LINK_RE = re.compile(r"\[[^\[\]]*\]\(([^()]*)\)$")


def _model(tok):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96,
                      max_seq_len=256)
    model = LanguageModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # weights far from init: peaked logits, no near-ties for greedy decoding
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g) if "norm" in name
                    else 0.3 * torch.randn(p.shape, generator=g))
    model.tokenizer = tok
    return model


def _processor(tok, record):
    """Forces, ``FREE`` tokens into a document with a ``LINKS`` header, that link's text; elsewhere
    bans link punctuation and EOS, so links come only from the script and documents end at their
    limit. Records the logits it is given (the model's, before any change)."""
    special = [tok.encode(c)[0] for c in "[]()!"] + [tok.eos_id]
    # (document start, where the free tokens start, the link text)
    scripts = [(tok.encode(h), len(tok.encode(PROMPT if h == "# Root\n" else h)), tok.encode(body))
               for h, body in LINKS.items()]

    def fn(logits, ids):
        record.append(logits[0].detach().clone())
        h = ids[0].tolist()
        out = logits.clone()
        for head, start, body in scripts:
            k = len(h) - start - FREE
            if h[: len(head)] == head and 0 <= k < len(body):
                out[0] = float("-inf")
                out[0, body[k]] = 0.0
                return out
        out[0, special] = float("-inf")
        return out

    return fn


# ------------------------------------------------------------------ the reference
def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def reference_forward(sd, cfg: ModelConfig, tokens, positions, mask):
    """float64 logits (T, V) of ``tokens`` (T,) at rotary ``positions`` (T,) under ``mask`` (T, T) bool."""
    H, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    w = {k: v.double() for k, v in sd.items()}
    inv = 1.0 / cfg.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = positions.double()[:, None] * inv[None]
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]

    def rope(x):
        a, b = x[..., : hd // 2], x[..., hd // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

    x = w["tok_embeddings.weight"][tokens]
    T = len(tokens)
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        h = _rms(x, w[p + "attention_norm.weight"], cfg.norm_eps)
        q, k, v = (h @ w[p + "attention.wqkv.weight"].T).split([H * hd, Hkv * hd, Hkv * hd], -1)
        q, k, v = rope(q.view(T, H, hd)), rope(k.view(T, Hkv, hd)), v.view(T, Hkv, hd)
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        s = torch.einsum("qhd,khd->hqk", q, k) * hd ** -0.5
        a = torch.softmax(s.masked_fill(~mask, float("-inf")), -1)
        x = x + torch.einsum("hqk,khd->qhd", a, v).reshape(T, H * hd) @ w[p + "attention.wo.weight"].T
        h = _rms(x, w[p + "ffn_norm.weight"], cfg.norm_eps)
        gate, up = (h @ w[p + "feed_forward.gate_up.weight"].T).chunk(2, -1)
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "feed_forward.down.weight"].T
    return _rms(x, w["norm.weight"], cfg.norm_eps) @ w["output.weight"].T


class ReferenceLinkedGeneration:
    """Greedy linked generation, recomputing the whole context for every token."""

    def __init__(self, model, tok, processor, max_new_tokens, max_link_depth):
        self.sd, self.cfg = model.state_dict(), model.config
        self.tok, self.processor, self.eos = tok, processor, tok.eos_id
        self.max_new_tokens, self.max_link_depth = max_new_tokens, max_link_depth
        self.docs = {}  # title -> {"tokens", "depth", "links", "status"}
        self.placed = []  # (token, title, position in its document, titles it may see)
        self.sampled = 0
        self.logits = []
        self.margins = []  # greedy: best minus second-best logit at every step the model chose

    def place(self, title, token):
        d = self.docs[title]
        self.placed.append((token, title, len(d["tokens"]), {title, *d["links"]}))
        d["tokens"].append(token)

    def next_logits(self):
        toks = torch.tensor([p[0] for p in self.placed])
        pos = torch.tensor([p[2] for p in self.placed])
        titles = list(self.docs)
        doc = torch.tensor([titles.index(p[1]) for p in self.placed])
        sees = torch.tensor([[t in p[3] for t in titles] for p in self.placed])  # (n, documents)
        mask = sees[:, doc] & torch.ones(len(doc), len(doc), dtype=torch.bool).tril()
        return reference_forward(self.sd, self.cfg, toks, pos, mask)[-1]

    def new_document(self, title, tokens, depth):
        self.docs[title] = {"tokens": [], "depth": depth, "links": [], "status": None}
        for t in tokens:
            self.place(title, t)

    def generate(self, title):
        d = self.docs[title]
        while True:
            if self.sampled >= self.max_new_tokens:
                d["status"] = "budget"
                break
            if MAX_DOC - len(d["tokens"]) <= 1:  # the document's last slot is kept for its EOS
                d["status"] = "max_tokens"
                break
            logits = self.next_logits()
            self.logits.append(logits)
            chosen = self.processor(logits[None].float(), torch.tensor([d["tokens"]]))
            t = int(chosen[0].argmax())
            top2 = chosen[0].double().topk(2).values
            if torch.isfinite(top2[1]):
                self.margins.append(float(top2[0] - top2[1]))
            self.sampled += 1
            if t == self.eos:
                d["status"] = "eos"
                break
            m = LINK_RE.search(self.tok.decode(d["tokens"] + [t]))
            if m and d["depth"] < self.max_link_depth and m.group(1) not in self.docs:
                child = m.group(1)
                d["links"].append(child)
                self.new_document(child, self.tok.encode(f"# {child}\n"), d["depth"] + 1)
                self.generate(child)
            self.place(title, t)
        if d["status"] in ("eos", "max_tokens") and d["depth"] > 0:
            self.place(title, self.eos)

    def run(self, prompt):
        self.new_document("Root Document", self.tok.encode(prompt), 0)
        self.generate("Root Document")
        return self.docs


def test_linked_generation_matches_an_independent_full_recompute():
    tok = get_tokenizer("byte")
    model = _model(tok)
    model.train_config = {"linked": True}  # as loaded from a linked-trained checkpoint: cross_doc_link by default
    fast_logits, ref_rec = [], []
    res = generate_linked(model, PROMPT, logits_processors=[_processor(tok, fast_logits)], temperature=0.0,
                          max_new_tokens=200, max_tokens_per_document=MAX_DOC, max_link_depth=2, num_threads=1)
    ref = ReferenceLinkedGeneration(model, tok, _processor(tok, ref_rec), max_new_tokens=200, max_link_depth=2)
    docs = ref.run(PROMPT)

    got = {d.title: d for d in [res.root_document, *res.auxiliary_documents]}
    assert sorted(got) == sorted(docs) == ["Root Document", "Topic A", "Topic B"]
    for title, d in docs.items():
        tokens = got[title].tokens.tolist()
        assert tokens[: len(d["tokens"])] == d["tokens"], title
        assert got[title].status == d["status"] == "max_tokens"
        assert got[title].links == d["links"]
    root = tok.decode(docs["Root Document"]["tokens"])
    assert "[x](Topic A)" in root and not root.endswith(")")  # the link completed mid-document
    assert "[y](Topic B)" in tok.decode(docs["Topic A"]["tokens"])

    assert len(fast_logits) == len(ref.logits) == res.stats["sampled_tokens"]
    for i, (a, b) in enumerate(zip(fast_logits, ref.logits)):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4, msg=lambda m: f"step {i}: {m}")
    assert min(ref.margins) > 1e-2, "a near-tie would make greedy decoding fragile: change the seed"


def test_default_mask_follows_the_checkpoint():
    """Generation reads with the mask the model was trained with: cross_doc_link after linked
    packing, doc_causal otherwise (a doc_causal model is worse with linked documents in view)."""
    from craft.generation.linked import GenerationConfig
    from craft.generation.linked.generator import resolve_config
    tok = get_tokenizer("byte")
    model = _model(tok)
    assert resolve_config(model, tok, GenerationConfig()).mask_kind == "doc_causal"
    model.train_config = {"linked": False, "seq_len": 64}
    assert resolve_config(model, tok, GenerationConfig()).mask_kind == "doc_causal"
    model.train_config = {"linked": True, "seq_len": 64}
    assert resolve_config(model, tok, GenerationConfig()).mask_kind == "cross_doc_link"
    assert resolve_config(model, tok, GenerationConfig(mask_kind="doc_causal")).mask_kind == "doc_causal"
