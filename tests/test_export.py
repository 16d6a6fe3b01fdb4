"""Exports compute what our model computes: logits, KV-cached decoding, greedy text and
token ids are compared with transformers (and GGUF read back) on tiny models."""

import json

import pytest
import torch

from speedrun.checkpoint import save_checkpoint
from speedrun.cli import main
from speedrun.config import ChatData, Config, ConfigError, ModelConfig, TextData, load_config, recipe_names, to_dict
from speedrun.export import export_run, hf_architecture, load_export
from speedrun.export.mapping import no_native_class
from speedrun.model import GPT, generate
from speedrun.rundir import RunDir
from speedrun.tokenizer import EOT, BPETokenizer, CharTokenizer

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

TOLERANCE = 1e-4
BLOCK = 96
MULTILINGUAL = ("The quick brown fox. Der Bär läuft über die Straße. Le cœur a ses raisons. "
                "Быстрая лиса. 東京は晴れです。 안녕하세요 세계. مرحبا بالعالم. नमस्ते दुनिया. 🙂🚀 ½ ≠ ∞\n")
SAMPLE = MULTILINGUAL + "a line\n\n  two spaces, a tab\tand " + EOT + " inside, 12+34=46" + EOT
# Every bundled recipe; chat-sft fine-tunes chat-base's model as it is, so it brings no model of its own.
RECIPES = [name for name in recipe_names() if name != "chat-sft"]


def shrunk(model: ModelConfig, vocab_size: int, **changes) -> ModelConfig:
    """A recipe's model switches at a size a test runs in milliseconds."""
    fields = {**vars(model), "n_layer": min(model.n_layer, 2), "n_head": 2, "n_embd": 32, "block_size": BLOCK,
              "vocab_size": vocab_size, "dropout": 0.0, **changes}
    return ModelConfig(**fields)


def random_model(m: ModelConfig, seed: int = 0) -> GPT:
    """Random weights everywhere, zero-initialised projections and biases included,
    so that every tensor of the export matters to the logits."""
    torch.manual_seed(seed)
    model = GPT(m).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def make_run(path, cfg: Config, model: GPT, tok) -> str:
    run = RunDir(path)
    run.checkpoints.mkdir(parents=True)
    save_checkpoint(run.checkpoint("last"), model.state_dict(), {"config": to_dict(cfg), "tokenizer": tok.to_json()})
    run.write_json("summary.json", {"recipe": cfg.recipe, "steps": 3, "params": model.num_params(),
                                    "train_seconds": 1.5, "metrics": {"val_loss": 2.5}})
    return str(path)


@pytest.fixture(scope="module")
def char_tok():
    return CharTokenizer(sorted(set(SAMPLE + "abcdefghijklmnopqrstuvwxyz0123456789+=")), eot=EOT)


@pytest.fixture(scope="module")
def chat_tok():
    from speedrun.chat.template import train_chat_tokenizer

    return train_chat_tokenizer([MULTILINGUAL * 3, *(f"What is {i} plus {i * 7}? g a r d e n" for i in range(200))],
                                vocab_size=400)


def assert_same_model(model: GPT, out, pad_id: int) -> float:
    """transformers' model of the export against ours: logits of a whole block, logits
    token by token through the KV cache, 64 greedy tokens with the cache on, and the same
    tokens with it off. Custom code is loaded with trust_remote_code, and the cached
    steps pass the token before each new one, as generate does."""
    custom = json.loads((out / "config.json").read_text())["model_type"] == "speedrun"
    assert custom == (out / "modeling_speedrun.py").exists()  # native exports carry no code
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, trust_remote_code=custom).eval()
    ids = torch.randint(model.cfg.vocab_size, (2, BLOCK), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids)
        diff = (hf(ids).logits - ours).abs().max().item()
        assert diff <= TOLERANCE
        step = hf(ids[:, :8], use_cache=True)  # a prompt of 8, then one token at a time through the cache
        cached, past = [step.logits], step.past_key_values
        for t in range(8, 40):
            before = {"previous_ids": ids[:, t - 1:t]} if custom else {}
            step = hf(ids[:, t:t + 1], past_key_values=past, use_cache=True, **before)
            cached.append(step.logits)
            past = step.past_key_values
        assert (torch.cat(cached, 1) - ours[:, :40]).abs().max().item() <= TOLERANCE
        prompt = ids[:1, :16]
        greedy = {"attention_mask": torch.ones_like(prompt), "max_new_tokens": 64, "do_sample": False,
                  "eos_token_id": None, "pad_token_id": pad_id}
        theirs = hf.generate(prompt, use_cache=True, **greedy)
        assert torch.equal(hf.generate(prompt, use_cache=False, **greedy), theirs)
    assert torch.equal(theirs, generate(model, prompt, 64))
    return diff


@pytest.mark.parametrize("recipe", RECIPES)
def test_bundled_recipes_export_to_transformers_with_the_same_logits(recipe, char_tok, chat_tok, tmp_path):
    """Every recipe as shipped: a transformers class where one computes the model, and
    the export's own code where none does (smear, the bigram embedding, base-d20's
    soft-cap), saying which and why."""
    cfg = load_config(recipe)
    tok = chat_tok if recipe.startswith("chat") else char_tok
    cfg.model = shrunk(cfg.model, tok.vocab_size)
    cfg.train.batch_tokens = 0  # its grad_accum was derived for the recipe's context, not the shrunk one
    model = random_model(cfg.model)
    result = export_run(make_run(tmp_path / "run", cfg, model, tok), tmp_path / "hf")
    assert result["max_logit_diff"] <= TOLERANCE
    reason = no_native_class(cfg.model)
    assert result["custom_code"] == bool(reason) == (hf_architecture(cfg.model) == "speedrun")
    assert result["custom_code"] == (recipe in ("shakespeare-char", "shakespeare-char-long", "base-d20"))
    assert reason in result["architecture"]
    assert_same_model(model, tmp_path / "hf", tok.eot_id)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert f"`{recipe}`" in card and "from_pretrained" in card and result["architecture"] in card
    assert ("trust_remote_code=True" in card) == result["custom_code"]


@pytest.mark.parametrize("changes", [
    {"bias": True, "mlp": "relu2", "tie_embeddings": False},  # GPT-2 with biases, ReLU^2 and its own head
    {"pos": "rope", "norm": "rmsnorm", "bias": True, "tie_embeddings": False},  # Arcee with biases and GELU
    {"pos": "rope", "norm": "rmsnorm", "qk_norm": True, "mlp": "gelu", "tie_embeddings": True},  # Apertus, GELU
])
def test_every_mapping_option_exports_exactly(changes, char_tok, tmp_path):
    cfg = Config(task="text", data=TextData(), model=shrunk(ModelConfig(), char_tok.vocab_size, **changes))
    model = random_model(cfg.model, seed=2)
    export_run(make_run(tmp_path / "run", cfg, model, char_tok), tmp_path / "hf")
    assert_same_model(model, tmp_path / "hf", char_tok.eot_id)


@pytest.mark.parametrize("changes, named", [
    ({"pos": "rope", "norm": "rmsnorm", "qk_norm": True, "smear": True, "bigram": True, "value_embeddings": True,
      "logit_softcap": 15.0}, "model.logit_softcap"),
    ({"pos": "learned", "norm": "layernorm", "smear": True, "bigram": True, "value_embeddings": True,
      "bias": True, "tie_embeddings": True, "mlp": "gelu"}, "model.smear"),
    ({"pos": "rope", "norm": "rmsnorm", "value_embeddings": True, "tie_embeddings": True}, "model.value_embeddings"),
    ({"pos": "rope", "norm": "layernorm", "bias": True}, "model.norm = 'layernorm' with RoPE"),
    ({"pos": "learned", "norm": "rmsnorm", "qk_norm": True}, "model.norm = 'rmsnorm' with learned"),
    ({"pos": "rope", "norm": "rmsnorm", "qk_norm": True, "bias": True}, "model.bias = true with QK-norm"),
])
def test_models_without_a_transformers_class_export_their_own_code_exactly(changes, named, char_tok, tmp_path,
                                                                           capsys):
    """The export says it wrote custom code and why, in its one line of output."""
    cfg = Config(task="text", data=TextData(), model=shrunk(ModelConfig(), char_tok.vocab_size, **changes))
    model = random_model(cfg.model, seed=3)
    run = make_run(tmp_path / "run", cfg, model, char_tok)
    assert main(["export", run, "--to", "hf", str(tmp_path / "hf")]) == 0
    wrote = capsys.readouterr().out.splitlines()[0]
    assert "SpeedrunForCausalLM, custom code (trust_remote_code=True)" in wrote and named in wrote
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_speedrun.SpeedrunForCausalLM"
    assert_same_model(model, tmp_path / "hf", char_tok.eot_id)


def test_custom_code_export_loads_without_speedrun(char_tok, tmp_path):
    """The folder's code imports torch and transformers only: with every import of
    speedrun blocked, a fresh process loads it, decodes with the cache, and gets our logits."""
    import subprocess
    import sys

    changes = {"pos": "rope", "norm": "rmsnorm", "qk_norm": True, "smear": True, "bigram": True,
               "value_embeddings": True}
    cfg = Config(task="text", data=TextData(), model=shrunk(ModelConfig(), char_tok.vocab_size, **changes))
    model = random_model(cfg.model, seed=4)
    export_run(make_run(tmp_path / "run", cfg, model, char_tok), tmp_path / "hf")
    ids = torch.randint(cfg.model.vocab_size, (1, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.save({"ids": ids, "logits": model(ids), "greedy": generate(model, ids, 40)}, tmp_path / "expected.pt")
    script = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "speedrun" or name.startswith("speedrun."):
            raise ImportError("speedrun is blocked in this test")
sys.meta_path.insert(0, Block())
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
expected = torch.load({str(tmp_path / "expected.pt")!r})
hf = AutoModelForCausalLM.from_pretrained({str(tmp_path / "hf")!r}, trust_remote_code=True, dtype=torch.float32)
AutoTokenizer.from_pretrained({str(tmp_path / "hf")!r}, trust_remote_code=True)
ids = expected["ids"]
with torch.no_grad():
    assert (hf(ids).logits - expected["logits"]).abs().max().item() <= {TOLERANCE}
out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False, eos_token_id=None,
                  pad_token_id=0)
assert torch.equal(out, expected["greedy"])
assert not any(m == "speedrun" or m.startswith("speedrun.") for m in sys.modules)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={**__import__("os").environ, "HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_padded_batches_are_refused_by_the_custom_code(char_tok, tmp_path):
    cfg = Config(task="text", data=TextData(), model=shrunk(ModelConfig(), char_tok.vocab_size, smear=True))
    export_run(make_run(tmp_path / "run", cfg, random_model(cfg.model), char_tok), tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), trust_remote_code=True)
    ids = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="unpadded"):
        hf(ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="previous_ids"):
        step = hf(ids, use_cache=True)
        hf(ids[:, :1], past_key_values=step.past_key_values, use_cache=True)


def test_tokenizers_give_the_same_ids_in_transformers(char_tok, chat_tok, tmp_path):
    bpe = BPETokenizer.train([MULTILINGUAL * 5], vocab_size=300)
    for name, tok in (("char", char_tok), ("bpe", bpe), ("chat", chat_tok)):
        model = ModelConfig(pos="rope", norm="rmsnorm", n_layer=1, n_embd=16, vocab_size=tok.vocab_size)
        cfg = Config(task="text", data=TextData(), model=model)
        export_run(make_run(tmp_path / name, cfg, GPT(model), tok), tmp_path / f"{name}-hf")
        hf = AutoTokenizer.from_pretrained(str(tmp_path / f"{name}-hf"))
        ids = tok.encode(SAMPLE, allow_special=True)
        assert hf(SAMPLE)["input_ids"] == ids, name
        assert hf.decode(ids) == tok.decode(ids) == SAMPLE, name
        assert hf.pad_token_id == tok.eot_id and hf.model_max_length == model.block_size


def test_chat_template_renders_our_ids(chat_tok, tmp_path):
    from jinja2 import TemplateError

    from speedrun.chat.template import ChatTemplate

    model = shrunk(load_config("chat-base").model, chat_tok.vocab_size)
    cfg = Config(task="chat", data=ChatData(), model=model)
    export_run(make_run(tmp_path / "run", cfg, GPT(model), chat_tok), tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    template = ChatTemplate(chat_tok)
    conversations = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "You are terse. Réponds en français."},
         {"role": "user", "content": "What is 482 plus 137?"},
         {"role": "assistant", "content": [{"type": "text", "text": "Let me compute. "},
                                           {"type": "tool_call", "text": "482+137"},
                                           {"type": "tool_output", "text": "619"},
                                           {"type": "text", "text": " The answer is 619."}]},
         {"role": "user", "content": "Спасибо! 🙂"},
         {"role": "assistant", "content": "東京 is 2 words?"}],
    ]
    for messages in conversations:
        rendered = hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        assert rendered == template.render(messages)[0]
        if messages[-1]["role"] == "user":
            prompt = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                            return_dict=True)["input_ids"]
            assert prompt == template.prompt(messages)
    with pytest.raises(TemplateError, match="system message may only come first"):
        hf.apply_chat_template([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["bos_token_id"] == chat_tok.token_id("<|bos|>")
    assert gen["eos_token_id"] == [chat_tok.token_id("<|assistant_end|>"), chat_tok.eot_id]


def test_sample_and_chat_load_an_export_back(chat_tok, char_tok, tmp_path, capsys):
    model = shrunk(load_config("chat-base").model, chat_tok.vocab_size)
    cfg = Config(task="chat", data=ChatData(), model=model)
    run = make_run(tmp_path / "run", cfg, random_model(model), chat_tok)
    assert main(["export", run, "--to", "hf", str(tmp_path / "hf")]) == 0
    assert "ApertusForCausalLM" in capsys.readouterr().out
    loaded = load_export(tmp_path / "hf")[0]
    ids = torch.randint(chat_tok.vocab_size, (1, BLOCK))
    with torch.no_grad():
        assert torch.equal(loaded(ids), random_model(model)(ids))
    chats = []
    for path in (run, str(tmp_path / "hf")):
        assert main(["chat", path, "-p", "What is 2 plus 3?", "--temperature", "0", "--max-new-tokens", "12"]) == 0
        chats.append(capsys.readouterr().out)
        assert main(["sample", path, "--prompt", "What", "--max-new-tokens", "12"]) == 0
        chats.append(capsys.readouterr().out)
    assert chats[:2] == chats[2:] and chats[1].startswith("What")


def test_gguf_export_of_a_gpt2_style_run_reads_back_exactly(char_tok, tmp_path, capsys):
    gguf = pytest.importorskip("gguf")
    cfg = load_config("nanogpt-cpu")
    ascii_tok = CharTokenizer(sorted(set("hello world, HELLO WORLD!\n:;.?")), eot=EOT)
    cfg.model = shrunk(cfg.model, ascii_tok.vocab_size)
    model = random_model(cfg.model)
    run = make_run(tmp_path / "run", cfg, model, ascii_tok)
    result = export_run(run, tmp_path / "gguf", to="gguf")
    assert result["max_logit_diff"] == 0.0
    reader = gguf.GGUFReader(str(tmp_path / "gguf" / "model.gguf"))
    field = reader.fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == "gpt2"
    field = reader.fields["gpt2.context_length"]
    assert int(field.parts[field.data[0]][0]) == BLOCK
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == ascii_tok.vocab_size
    assert main(["sample", str(tmp_path / "gguf"), "--prompt", "hello", "--max-new-tokens", "20"]) == 0
    from_gguf = capsys.readouterr().out
    assert main(["sample", run, "--prompt", "hello", "--max-new-tokens", "20"]) == 0
    assert capsys.readouterr().out == from_gguf
    # Models only custom code computes, and non-ASCII character vocabularies, are refused, naming the way out.
    cfg = load_config("shakespeare-char")
    cfg.model = shrunk(cfg.model, ascii_tok.vocab_size)
    run = make_run(tmp_path / "smear", cfg, random_model(cfg.model), ascii_tok)
    with pytest.raises(ConfigError, match="model.smear .*--to hf"):
        export_run(run, tmp_path / "refused", to="gguf")
    cfg = load_config("nanogpt-cpu")
    cfg.model = shrunk(cfg.model, char_tok.vocab_size)
    run = make_run(tmp_path / "unicode", cfg, random_model(cfg.model), char_tok)
    with pytest.raises(ConfigError, match="ASCII"):
        export_run(run, tmp_path / "refused", to="gguf")


def gguf_field(reader, key):
    field = reader.fields[key]
    values = [field.parts[i] for i in field.data]
    if field.types[0] == __import__("gguf").GGUFValueType.STRING:
        return bytes(values[0]).decode()
    return [v.tolist()[0] for v in values] if len(values) > 1 or key.startswith("xielu") else values[0].tolist()[0]


@pytest.mark.parametrize("recipe, arch", [("headlines", "arcee"), ("shakespeare-bpe", "apertus")])
def test_gguf_export_of_a_rope_run_reads_back_exactly(recipe, arch, tmp_path, capsys):
    """RoPE models go to llama.cpp's arcee (no QK-norm) or apertus (QK-norm, xIELU set to
    ReLU^2), with its tensor names and metadata, and read back with difference 0.0."""
    gguf = pytest.importorskip("gguf")
    tok = BPETokenizer.train([MULTILINGUAL * 5], vocab_size=300)
    cfg = load_config(recipe)
    cfg.model = shrunk(cfg.model, tok.vocab_size)
    model = random_model(cfg.model)
    run = make_run(tmp_path / "run", cfg, model, tok)
    assert main(["export", run, "--to", "gguf", str(tmp_path / "gguf")]) == 0
    assert f"GGUF {arch}" in capsys.readouterr().out
    result = json.loads((tmp_path / "gguf" / "speedrun.json").read_text())
    assert result["architecture"] == f"gguf-{arch}"
    reader = gguf.GGUFReader(str(tmp_path / "gguf" / "model.gguf"))
    m = cfg.model
    assert gguf_field(reader, "general.architecture") == arch
    expected = {"context_length": BLOCK, "embedding_length": m.n_embd, "block_count": m.n_layer,
                "feed_forward_length": m.mlp_ratio * m.n_embd, "attention.head_count": m.n_head,
                "attention.head_count_kv": m.n_head, "rope.dimension_count": m.n_embd // m.n_head,
                "rope.freq_base": 10000.0, "vocab_size": tok.vocab_size}
    for key, value in expected.items():
        assert gguf_field(reader, f"{arch}.{key}") == value, key
    assert gguf_field(reader, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(torch.finfo().eps)
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight", "blk.0.ffn_up.weight",
            "blk.0.ffn_down.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"} <= names
    assert ("blk.0.attn_q_norm.weight" in names) == (arch == "apertus")
    assert ("output.weight" in names) == (not m.tie_embeddings)
    if arch == "apertus":
        assert gguf_field(reader, "xielu.alpha_p") == [1.0] * m.n_layer
        assert gguf_field(reader, "xielu.alpha_n") == gguf_field(reader, "xielu.beta") == [0.0] * m.n_layer
    loaded = load_export(tmp_path / "gguf")[0]
    ids = torch.randint(tok.vocab_size, (2, BLOCK), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    assert main(["sample", str(tmp_path / "gguf"), "--prompt", "The", "--max-new-tokens", "20"]) == 0
    from_gguf = capsys.readouterr().out
    assert main(["sample", run, "--prompt", "The", "--max-new-tokens", "20"]) == 0
    assert capsys.readouterr().out == from_gguf


def test_arcee_rows_rotate_as_llama_cpp_rotates_them():
    """llama.cpp's arcee turns neighbouring pairs (2i, 2i+1) of each head; ours turns
    (i, i + D/2). Interleaving the query rows must make the two the same rotation."""
    from speedrun.export.to_gguf import interleave_pairs
    from speedrun.model import apply_rotary, rotary_tables

    n_head, D, C, T = 2, 8, 16, 5
    w, x = torch.randn(n_head * D, C), torch.randn(T, C)
    cos, sin = rotary_tables(D, T)
    ours = apply_rotary((x @ w.t()).view(T, n_head, D), cos[:, None], sin[:, None])
    q = (x @ interleave_pairs(w, n_head).t()).view(T, n_head, D // 2, 2)  # llama.cpp's "normal" RoPE
    c, s_ = cos[:, None], sin[:, None]
    theirs = torch.stack((q[..., 0] * c - q[..., 1] * s_, q[..., 0] * s_ + q[..., 1] * c), dim=-1).view(T, n_head, D)
    assert torch.allclose(interleave_pairs(theirs.reshape(T, -1).t(), n_head, inverse=True).t().reshape(T, n_head, D),
                          ours, atol=1e-6)
    assert torch.equal(interleave_pairs(interleave_pairs(w, n_head), n_head, inverse=True), w)


def test_gguf_refuses_an_activation_llama_cpp_computes_otherwise(tmp_path):
    tok = BPETokenizer.train([MULTILINGUAL * 5], vocab_size=300)
    cfg = load_config("shakespeare-bpe")
    cfg.model = shrunk(cfg.model, tok.vocab_size, mlp="gelu")
    run = make_run(tmp_path / "run", cfg, random_model(cfg.model), tok)
    with pytest.raises(ConfigError, match="model.mlp = 'gelu' .*apertus.*model.mlp='relu2'"):
        export_run(run, tmp_path / "refused", to="gguf")
