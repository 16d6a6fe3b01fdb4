import math

import pytest
import torch

from speedrun.config import ConfigError, ModelConfig
from speedrun.model import GPT, generate, sample_next

VARIANTS = [
    dict(),
    dict(pos="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, zero_init_proj=True,
         tie_embeddings=False, logit_softcap=15.0),
    dict(pos="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, zero_init_proj=True, smear=True,
         value_embeddings=True),
    dict(pos="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, zero_init_proj=True, smear=True, bigram=True),
    dict(bigram=True, zero_init_proj=True),  # without smear: the bigram's carry is the cache's only look-back
]


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=24, vocab_size=11, **kw)
    model = GPT(cfg).eval()
    if cfg.zero_init_proj:  # give the zero-initialised projections something to say
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.mark.parametrize("kw", VARIANTS)
def test_kv_cache_generation_equals_full_recompute(kw):
    model = tiny(**kw)
    prompt = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(0))
    with_cache = generate(model, prompt, 40, use_cache=True)  # past block_size (24) too
    without = generate(model, prompt, 40, use_cache=False)
    assert with_cache.shape == (3, 45) and torch.equal(with_cache, without)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(generate(model, prompt, 10, temperature=1.0, top_k=5, generator=g1),
                       generate(model, prompt, 10, temperature=1.0, top_k=5, generator=g2, use_cache=False))


@pytest.mark.parametrize("kw", VARIANTS)
def test_chunked_prefill_matches_one_pass(kw):
    model = tiny(**kw)
    idx = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(1))
    full = model(idx)
    cache = model.new_cache()
    first = model(idx[:, :7], cache=cache)
    rest = model(idx[:, 7:], cache=cache, start=7)
    torch.testing.assert_close(torch.cat((first, rest), dim=1), full, atol=1e-5, rtol=1e-5)


def test_smear_adds_a_learned_share_of_the_previous_embedding():
    model = tiny(smear=True)
    with torch.no_grad():  # a learned share: with the weight at its initial zero, any look-back would pass
        model.smear.weight.copy_(torch.linspace(-1.0, 1.0, 32))
    x = torch.randn(2, 5, 32)
    w = model.smear.weight.detach()
    out = model.smear(x)
    torch.testing.assert_close(out[:, 0], x[:, 0])  # the first position has nothing to look back at
    torch.testing.assert_close(out[:, 1:], x[:, 1:] + w * x[:, :-1])
    assert torch.equal(GPT(ModelConfig(vocab_size=11, smear=True)).smear.weight, torch.zeros(64))  # starts off


def test_bigram_adds_the_row_of_each_previous_and_current_pair():
    model = tiny(bigram=True, zero_init_proj=True)  # tiny() adds noise to every weight, the table's included
    table = model.bigram.table.weight.detach()
    assert table.any()
    assert table.shape == (11 * 12, 32)
    idx = torch.tensor([[3, 7, 7, 0]])
    out = model.bigram(idx)
    torch.testing.assert_close(out[0, 0], table[11 * 11 + 3])  # nothing before: a row of its own
    torch.testing.assert_close(out[0, 1:], table[torch.tensor([3 * 11 + 7, 7 * 11 + 7, 7 * 11 + 0])])
    assert not GPT(ModelConfig(vocab_size=11, bigram=True)).bigram.table.weight.any()  # starts off


def test_bigram_refuses_a_large_vocabulary():
    with pytest.raises(ConfigError, match="model.bigram=false"):
        GPT(ModelConfig(vocab_size=1024, bigram=True))


def test_loss_ignores_masked_targets():
    model = tiny()
    idx = torch.randint(0, 11, (2, 8))
    targets = idx.clone()
    targets[:, :4] = -100
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 11), idx[:, 4:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_tied_and_untied_heads():
    tied, untied = tiny(), tiny(tie_embeddings=False)
    assert tied.head.weight.data_ptr() == tied.tok_emb.weight.data_ptr()
    assert untied.head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()
    assert untied.num_params() == tied.num_params() + 11 * 32


def test_zero_init_blocks_start_as_identity():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=8, vocab_size=11,
                            zero_init_proj=True, pos="rope", norm="rmsnorm"))
    x = torch.randn(2, 8, 32)
    for block in model.blocks:
        torch.testing.assert_close(block(x, (model.rope_cos, model.rope_sin), None, 0), x)


def test_sequence_longer_than_block_is_refused():
    with pytest.raises(ValueError, match="exceeds block_size"):
        tiny()(torch.zeros(1, 25, dtype=torch.long))


def test_greedy_is_argmax_and_top_k_restricts():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9]])
    assert sample_next(logits, 0.0).item() == 1
    g = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, 1.0, top_k=2, generator=g).item() for _ in range(200)}
    assert picks == {1, 3}
    # probabilities ~ [.02, .48, .06, .43]: top_p 0.4 keeps the first token only,
    # 0.5 needs the second as well to reach it
    assert {sample_next(logits, 1.0, top_p=0.4, generator=g).item() for _ in range(200)} == {1}
    assert {sample_next(logits, 1.0, top_p=0.5, generator=g).item() for _ in range(200)} == {1, 3}


# --- components pinned against small hand-written references ----------------------------------

def reference_attention(q, k, v):
    """softmax(q k^T / sqrt(d) + causal mask) v, written out; the queries are the last T of S positions."""
    T, S, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-1, -2) / d ** 0.5
    allowed = torch.ones(T, S).tril(S - T).bool()
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("kw", VARIANTS)
def test_attention_matches_reference_with_and_without_cache(kw):
    from speedrun.model import apply_rotary
    import torch.nn.functional as F

    model = tiny(**kw)
    attn, cfg = model.blocks[0].attn, model.cfg
    x = torch.randn(2, 7, cfg.n_embd, generator=torch.Generator().manual_seed(1))
    rotary = (model.rope_cos, model.rope_sin) if cfg.pos == "rope" else None
    with torch.no_grad():
        q, k, v = attn.qkv(x).view(2, 7, 3, attn.n_head, attn.head_dim).unbind(2)
        if cfg.qk_norm:
            q, k = F.rms_norm(q, (attn.head_dim,)), F.rms_norm(k, (attn.head_dim,))
        if rotary:
            cos, sin = rotary[0][:7, None], rotary[1][:7, None]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        heads = reference_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        expected = attn.proj(heads.transpose(1, 2).reshape(2, 7, cfg.n_embd))
        torch.testing.assert_close(attn(x, rotary, None, 0), expected, atol=1e-5, rtol=1e-5)
        cache = []
        first = attn(x[:, :4], rotary, cache, 0)  # a prefill of 4, then 3 more over the cache
        rest = attn(x[:, 4:], rotary, cache, 4)
        torch.testing.assert_close(torch.cat((first, rest), 1), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(attn(x, rotary, [], 0, keep=2), expected[:, -2:], atol=1e-5, rtol=1e-5)


def test_rotary_is_a_rotation_of_each_pair_by_position_times_frequency():
    from speedrun.model import apply_rotary, rotary_tables

    d, T = 8, 5
    cos, sin = rotary_tables(d, T)
    x = torch.randn(T, d, generator=torch.Generator().manual_seed(2))
    out = apply_rotary(x, cos, sin)
    half = d // 2
    for t in range(T):
        for i in range(half):  # pair (i, i + d/2) rotated by angle t / 10000^(2i/d)
            angle = t / 10000 ** (2 * i / d)
            pair = torch.complex(x[t, i], x[t, i + half]) * complex(math.cos(angle), math.sin(angle))
            assert out[t, i].item() == pytest.approx(pair.real.item(), abs=1e-5)
            assert out[t, i + half].item() == pytest.approx(pair.imag.item(), abs=1e-5)
    # rotations keep lengths, and the score of two rotated vectors depends only on their distance
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    q, k = torch.randn(d), torch.randn(d)
    qs, ks = apply_rotary(q.expand(T, d), cos, sin), apply_rotary(k.expand(T, d), cos, sin)
    assert (qs[3] @ ks[1]).item() == pytest.approx((qs[4] @ ks[2]).item(), abs=1e-5)
