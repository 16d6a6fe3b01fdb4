"""Exports compute what our model computes: logits, KV-cached decoding, greedy text and
token ids are compared with transformers (and GGUF read back) on tiny models."""

import json

import pytest
import torch

from speedrun.checkpoint import save_checkpoint
from speedrun.cli import main
from speedrun.config import ChatData, Config, ConfigError, ModelConfig, TextData, load_config, recipe_names, to_dict
from speedrun.export import export_run, hf_architecture, load_export
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
    token by token through the KV cache, and 64 greedy tokens with the cache on."""
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = torch.randint(model.cfg.vocab_size, (2, BLOCK), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids)
        diff = (hf(ids).logits - ours).abs().max().item()
        assert diff <= TOLERANCE
        step = hf(ids[:, :8], use_cache=True)  # a prompt of 8, then one token at a time through the cache
        cached, past = [step.logits], step.past_key_values
        for t in range(8, 40):
            step = hf(ids[:, t:t + 1], past_key_values=past, use_cache=True)
            cached.append(step.logits)
            past = step.past_key_values
        assert (torch.cat(cached, 1) - ours[:, :40]).abs().max().item() <= TOLERANCE
        prompt = ids[:1, :16]
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=64, do_sample=False,
                             use_cache=True, eos_token_id=None, pad_token_id=pad_id)
    assert torch.equal(theirs, generate(model, prompt, 64))
    return diff


@pytest.mark.parametrize("recipe", RECIPES)
def test_bundled_recipes_export_to_transformers_with_the_same_logits(recipe, char_tok, chat_tok, tmp_path):
    """Recipes that smear, add a bigram embedding (speed records' options) or soft-cap the
    logits (base-d20, as nanochat) are refused, naming the setting; trained with them off,
    they export like the rest."""
    cfg = load_config(recipe)
    tok = chat_tok if recipe.startswith("chat") else char_tok
    for option, off, named in (("smear", False, "false"), ("bigram", False, "false"), ("logit_softcap", 0.0, "0")):
        if getattr(cfg.model, option):
            with pytest.raises(ConfigError, match=f"model.{option}={named}"):
                hf_architecture(cfg.model)
            setattr(cfg.model, option, off)
    cfg.model = shrunk(cfg.model, tok.vocab_size)
    cfg.train.batch_tokens = 0  # its grad_accum was derived for the recipe's context, not the shrunk one
    model = random_model(cfg.model)
    result = export_run(make_run(tmp_path / "run", cfg, model, tok), tmp_path / "hf")
    assert result["max_logit_diff"] <= TOLERANCE
    assert_same_model(model, tmp_path / "hf", tok.eot_id)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert f"`{recipe}`" in card and "from_pretrained" in card and result["architecture"] in card


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


@pytest.mark.parametrize("changes, setting", [
    ({"pos": "rope", "norm": "rmsnorm", "qk_norm": True, "logit_softcap": 15.0}, "model.logit_softcap=0"),
    ({"pos": "rope", "norm": "rmsnorm", "qk_norm": True, "smear": True}, "model.smear=false"),
    ({"pos": "rope", "norm": "rmsnorm", "value_embeddings": True}, "model.value_embeddings=false"),
    ({"pos": "rope", "norm": "rmsnorm", "bigram": True}, "model.bigram=false"),
    ({"pos": "rope", "norm": "layernorm"}, "model.norm='rmsnorm'"),
    ({"pos": "learned", "norm": "rmsnorm"}, "model.norm='layernorm'"),
    ({"pos": "rope", "norm": "rmsnorm", "qk_norm": True, "bias": True}, "model.bias=false"),
])
def test_options_without_a_counterpart_are_refused_with_the_setting_that_avoids_them(changes, setting, char_tok,
                                                                                      tmp_path, capsys):
    with pytest.raises(ConfigError, match="no .*counterpart"):
        hf_architecture(shrunk(ModelConfig(), 10, **changes))
    cfg = Config(task="text", data=TextData(), model=shrunk(ModelConfig(), char_tok.vocab_size, **changes))
    run = make_run(tmp_path / "run", cfg, random_model(cfg.model), char_tok)
    assert main(["export", run, "--to", "hf", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and setting in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


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
    # Modern blocks and non-ASCII character vocabularies are refused, naming the way out.
    cfg = load_config("shakespeare-char")
    cfg.model = shrunk(cfg.model, ascii_tok.vocab_size, smear=False, bigram=False)
    run = make_run(tmp_path / "modern", cfg, random_model(cfg.model), ascii_tok)
    with pytest.raises(ConfigError, match="--to hf"):
        export_run(run, tmp_path / "refused", to="gguf")
    cfg = load_config("nanogpt-cpu")
    cfg.model = shrunk(cfg.model, char_tok.vocab_size)
    run = make_run(tmp_path / "unicode", cfg, random_model(cfg.model), char_tok)
    with pytest.raises(ConfigError, match="ASCII"):
        export_run(run, tmp_path / "refused", to="gguf")
