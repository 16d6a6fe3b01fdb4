import pytest
import torch

from speedrun.config import ModelConfig
from speedrun.model import GPT, generate, sample_next

VARIANTS = [
    dict(),
    dict(pos="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, zero_init_proj=True,
         tie_embeddings=False, logit_softcap=15.0),
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
