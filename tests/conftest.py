import pytest


@pytest.fixture
def line_corpus(tmp_path, monkeypatch):
    """400 short lines of text, with the token cache kept inside the test's folder."""
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}\n"
                            for i in range(400)))
    return path
