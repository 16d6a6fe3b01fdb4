import pytest


@pytest.fixture(autouse=True)
def measured_peak(monkeypatch):
    """A fixed matmul peak (100 GFLOP/s) instead of measuring one: a measurement takes 1-4 s, and a
    test that trains on a fresh cache would spend it inside its time budget. Tests of the
    measurement itself call the real `measure_peak`."""
    monkeypatch.setattr("speedrun.flops.measure_peak", lambda device, dtype, size=None, trials=None: 1e11)


@pytest.fixture
def line_corpus(tmp_path, monkeypatch):
    """400 short lines of text, with the token cache kept inside the test's folder."""
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}\n"
                            for i in range(400)))
    return path


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """150 lines of words, two of them with non-ASCII letters, with the token cache inside the test's folder."""
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "café", "naïve"]
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(8)) for i in range(150)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory):
    """A run directory holding an untrained chat model: the chat tokenizer and a
    tiny GPT with random weights, as `speedrun chat` and `speedrun serve` load it."""
    import torch

    from speedrun.chat.template import train_chat_tokenizer
    from speedrun.checkpoint import save_checkpoint
    from speedrun.config import ChatData, Config, ModelConfig, to_dict
    from speedrun.model import GPT
    from speedrun.rundir import RunDir

    path = tmp_path_factory.mktemp("chat_run")
    tok = train_chat_tokenizer([f"What is {i} plus {i * 7}? Spell the word garden. g a r d e n" for i in range(200)],
                               vocab_size=300)
    cfg = Config(task="chat", dtype="float32", data=ChatData(),
                 model=ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=96, vocab_size=tok.vocab_size,
                                   pos="rope"))
    torch.manual_seed(0)
    model = GPT(cfg.model)
    run = RunDir(path)
    run.checkpoints.mkdir(parents=True)
    (path / "tokenizer.json").write_text(tok.to_json(), encoding="utf-8")
    save_checkpoint(run.checkpoint("last"), model.state_dict(), {"config": to_dict(cfg), "tokenizer": tok.to_json()})
    return path


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; skipped without one")
