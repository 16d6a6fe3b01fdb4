import json
import math

import pytest

from speedrun.cli import main
from speedrun.config import ConfigError, load_config, to_toml
from speedrun.verify import (
    Claim,
    betainc,
    binomial_tail,
    build_record,
    claim_for,
    claim_overrides,
    config_hash,
    finished_summary,
    format_record,
    judge,
    seed_entry,
    seeds_needed,
    student_t_cdf,
    t_test_below,
)

LOSS = Claim("test_loss", 1.8857, "loss", "time_to_target")
EXACT = Claim("exact_match", 1.0, "pass_fail", "time_to_verified")


# ---------------------------------------------------------------- the distributions

@pytest.mark.parametrize("a, b", [(0.5, 0.5), (2.0, 3.0), (7.5, 0.5), (40.0, 0.5)])
@pytest.mark.parametrize("x", [0.01, 0.3, 0.5, 0.77, 0.999])
def test_betainc_against_closed_forms(a, b, x):
    assert betainc(1.0, 1.0, x) == pytest.approx(x)
    assert betainc(a, 1.0, x) == pytest.approx(x ** a)
    assert betainc(1.0, b, x) == pytest.approx(1 - (1 - x) ** b)
    assert betainc(a, a, 0.5) == pytest.approx(0.5)
    assert betainc(a, b, x) + betainc(b, a, 1 - x) == pytest.approx(1.0)
    # I_x(1/2, 1/2) is the arcsine distribution
    assert betainc(0.5, 0.5, x) == pytest.approx(2 / math.pi * math.asin(math.sqrt(x)))


@pytest.mark.parametrize("t", [-30.0, -3.0, -0.5, 0.0, 0.7, 2.5, 12.0])
def test_student_t_against_closed_forms(t):
    assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi)  # Cauchy
    assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)))


@pytest.mark.parametrize("df, t, p", [(4, 3.747, 0.99), (4, 2.132, 0.95), (10, 1.812, 0.95), (10, 2.764, 0.99),
                                      (30, 2.750, 0.995), (1_000_000, 1.95996, 0.975)])
def test_student_t_against_table_values(df, t, p):
    assert student_t_cdf(t, df) == pytest.approx(p, abs=2e-4)
    assert student_t_cdf(-t, df) == pytest.approx(1 - p, abs=2e-4)


def test_binomial_tail():
    assert binomial_tail(5, 5, 0.5) == pytest.approx(1 / 32)
    assert binomial_tail(4, 5, 0.5) == pytest.approx(6 / 32)
    assert binomial_tail(0, 5, 0.5) == pytest.approx(1.0)
    assert binomial_tail(7, 7, 0.5) < 0.01 < binomial_tail(6, 6, 0.5)
    assert seeds_needed() == 7


# ---------------------------------------------------------------- the statistic on hand-made records

def test_clear_pass():
    test = judge(LOSS, [1.801, 1.812, 1.795, 1.808, 1.803])
    assert test["holds"] and test["p_value"] < 1e-4 and test["df"] == 4 and test["t"] < -20


def test_clear_fail():
    test = judge(LOSS, [1.901, 1.912, 1.895, 1.908, 1.903])
    assert not test["holds"] and test["p_value"] > 0.99


def test_borderline_mean_below_the_target_is_not_enough():
    # every seed below the target, but by too little for their spread: p = 0.0371 exactly (df 2 closed form)
    values = [1.0, 2.0, 3.0]
    t = t_test_below(values, 4.0)
    assert t["t"] == pytest.approx(-2 * math.sqrt(3))
    assert t["p_value"] == pytest.approx(0.5 - 2 * math.sqrt(3) / (2 * math.sqrt(14)))
    assert not judge(Claim("val_loss", 4.0, "loss", "time_to_target"), values)["holds"]
    # one seed over the target with the mean well under it still holds
    assert judge(LOSS, [1.850, 1.852, 1.848, 1.851, 1.887])["holds"]


def test_edge_cases_of_the_t_test():
    assert t_test_below([1.8], 1.9)["p_value"] is None  # one seed: no spread, no test
    assert t_test_below([1.8, 1.8], 1.9)["p_value"] == 0.0 and t_test_below([2.0, 2.0], 1.9)["p_value"] == 1.0
    test = judge(LOSS, [1.80, None, 1.79])  # a run that did not finish counts against the claim
    assert not test["holds"] and test["unfinished"] == 1


def test_pass_fail_claims_use_the_binomial_test():
    assert judge(EXACT, [1.0] * 7)["holds"]
    five = judge(EXACT, [1.0] * 5)
    assert not five["holds"] and five["p_value"] == pytest.approx(1 / 32) and five["passed"] == 5
    assert judge(EXACT, [1.0] * 6 + [0.999999, None])["passed"] == 6


# ---------------------------------------------------------------- the record

def summary(value, metric="test_loss", **extra):
    return {"metrics": {metric: value}, "wall_seconds": 30.0 + value, "train_seconds": 19.0, "steps": 375,
            "time_to_target": 25.0, "dtype": "float32", "peak_flops": 2.0e11, **extra}


def test_record_fields():
    cfg = load_config("shakespeare-char", ["data.test_fraction=0.05"])
    values = [1.801, 1.812, 1.795, 1.808, 1.803]
    summaries = [summary(v) for v in values]
    seeds = [seed_entry(LOSS, k + 1, f"out/seed-{k + 1}", s, 0, 40.0) for k, s in enumerate(summaries)]
    record = build_record("shakespeare-char", ["data.test_fraction=0.05"], cfg, LOSS, seeds, summaries)
    assert record["holds"] and record["n_seeds"] == 5 and record["metric"] == "test_loss"
    assert record["test_loss"]["mean"] == pytest.approx(sum(values) / 5)
    assert record["test_loss"]["sd"] == pytest.approx(0.0065345237, rel=1e-6)
    assert record["time_to_target"] == {"mean": 25.0, "sd": 0.0, "n": 5}
    assert record["seeds"][0] == {"seed": 1, "run_dir": "out/seed-1", "exit_code": 0, "test_loss": 1.801,
                                  "reached": True, "time_to_target": 25.0, "wall_seconds": 31.801,
                                  "train_seconds": 19.0, "steps": 375, "process_seconds": 40.0}
    machine = record["machine"]
    assert machine["cpu"] and machine["peak_flops"] == {"float32": 2.0e11} and machine["torch_version"]
    assert isinstance(machine["cpu_flags"], list) and "gpu" in machine
    for key in ("git_commit", "python_version", "created", "config_sha256", "claim", "test"):
        assert key in record
    json.dumps(record)  # it is written as JSON
    table = format_record({**record, "out": "out"})
    assert "HOLDS at p < 0.01" in table and "1.8010" in table and "mean" in table and "t = " in table


def test_record_of_a_pass_fail_claim():
    cfg = load_config("addition")
    summaries = [{"metrics": {"exact_match": v}, "time_to_verified": 20.0, "wall_seconds": 22.0, "steps": 300}
                 for v in (1.0, 1.0, 0.999998, 1.0, 1.0)]
    seeds = [seed_entry(EXACT, k + 1, "x", s, 0, None) for k, s in enumerate(summaries)]
    record = build_record("addition", [], cfg, EXACT, seeds, summaries)
    assert [s["reached"] for s in record["seeds"]] == [True, True, False, True, True]
    assert record["test"]["p_value"] == pytest.approx(6 / 32) and not record["holds"]
    assert "NOT SHOWN" in format_record(record) and "4 of 5 seeds" in format_record(record)
    assert "takes 7 seeds" in format_record(record)


def test_claims_of_the_recipes():
    assert claim_for(load_config("addition")) == EXACT
    assert claim_for(load_config("shakespeare-char", ["data.test_fraction=0.05"]), 1.8857) == LOSS
    assert claim_for(load_config("shakespeare-char", ["train.target_val_loss=1.9", "data.test_fraction=0"])).metric \
        == "val_loss"
    assert claim_for(load_config("shakespeare-char", ["train.target_val_bpb=2.5"])) == \
        Claim("test_bpb", 2.5, "loss", "time_to_target")  # a per-byte target is judged per byte of test text
    with pytest.raises(ConfigError, match="give the loss to reach with --target"):
        claim_for(load_config("nanogpt-cpu"))
    with pytest.raises(ConfigError, match=r"give a value in \(0, 1\]"):
        claim_for(load_config("addition"), 2.0)


def test_a_target_verify_sets_times_the_run_without_stopping_it():
    """The claim is about the recipe's final test loss, so its runs keep their whole schedule."""
    cfg = load_config("shakespeare-char")
    overrides = claim_overrides(cfg, claim_for(cfg, 1.8857))
    assert overrides == ["train.target_val_loss=1.8857", "train.stop_at_target=false"]
    assert not load_config("shakespeare-char", overrides).train.stop_at_target
    own = load_config("shakespeare-char", ["train.target_val_loss=1.9"])  # the recipe's own target: left alone
    assert claim_overrides(own, claim_for(own)) == []
    assert claim_overrides(load_config("addition"), EXACT) == []
    per_byte = Claim("test_bpb", 2.72, "loss", "time_to_target")  # a per-byte claim times a per-byte target
    assert claim_overrides(cfg, per_byte) == ["train.target_val_bpb=2.72", "train.stop_at_target=false"]


def test_config_hash_ignores_only_the_seed():
    base = config_hash(load_config("shakespeare-char"))
    assert config_hash(load_config("shakespeare-char", ["train.seed=7"])) == base
    assert config_hash(load_config("shakespeare-char", ["optim.lr=0.001"])) != base


def test_finished_seeds_are_reused_and_unfinished_ones_removed(tmp_path):
    cfg = load_config("shakespeare-char", ["train.seed=3"])
    digest = config_hash(cfg)
    run = tmp_path / "seed-3"
    run.mkdir()
    (run / "config.toml").write_text(to_toml(cfg))
    (run / "summary.json").write_text('{"metrics": {"val_loss": 1.9}}')
    assert finished_summary(run, digest) == {"metrics": {"val_loss": 1.9}}
    with pytest.raises(ConfigError, match="holds a run of another config"):
        finished_summary(run, config_hash(load_config("shakespeare-char", ["optim.lr=0.1"])))
    (run / "summary.json").unlink()  # a run that stopped before its summary: trained again
    assert finished_summary(run, digest) is None and not run.exists()
    assert finished_summary(run, digest) is None
    (tmp_path / "seed-4").mkdir()
    with pytest.raises(ConfigError, match="not a run directory"):
        finished_summary(tmp_path / "seed-4", digest)


# ---------------------------------------------------------------- end to end

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16", "train.batch_size=4",
        "train.steps=3", "train.eval_every=0", "train.log_every=1", "data.sample_tokens=0", "train.tensorboard=false",
        "data.val_fraction=0.1", "data.test_fraction=0.1", "dtype=float32"]


def test_verify_two_seeds_end_to_end(tmp_path, line_corpus, capsys):
    out = tmp_path / "verify"
    args = ["verify", "shakespeare-char", "--data", str(line_corpus), "--seeds", "2", "--target", "20",
            "--out", str(out), *TINY]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "HOLDS at p < 0.01" in printed and "verify.json" in printed
    record = json.loads((out / "verify.json").read_text())
    assert [s["seed"] for s in record["seeds"]] == [1, 2] and record["metric"] == "test_loss"
    assert all(s["test_loss"] < 20 and s["exit_code"] == 0 and s["reached"] for s in record["seeds"])
    assert record["seeds"][0]["test_loss"] != record["seeds"][1]["test_loss"]  # different seeds, different runs
    for k in (1, 2):
        config = (out / f"seed-{k}" / "config.toml").read_text()
        assert f"seed = {k}\n" in config and "target_val_loss = 20.0" in config
        assert (out / "logs" / f"seed-{k}.txt").is_file()
    # run again: both seeds are finished with this config, so nothing trains
    assert main(args) == 0
    assert capsys.readouterr().out.count("finished earlier") == 2
    assert json.loads((out / "verify.json").read_text())["seeds"][0]["test_loss"] == record["seeds"][0]["test_loss"]
    # another config in the same folder is refused
    assert main([*args, "optim.lr=0.01"]) == 2
    assert "holds a run of another config" in capsys.readouterr().err


def test_verify_reports_a_bad_override_as_one_line(tmp_path, line_corpus, capsys):
    assert main(["verify", "shakespeare-char", "--data", str(line_corpus), "--target", "2", "--out",
                 str(tmp_path / "v"), "train.stepz=3"]) == 2
    assert "unknown config key 'train.stepz'" in capsys.readouterr().err


def test_seeds_run_cold_unless_warm(tmp_path, line_corpus, monkeypatch, capsys):
    """Cold (the default): a seed prepares its data in an empty cache of its own, so the
    user's cache stays as it was; --warm shares it, and the record says which."""
    shared = tmp_path / "cache"
    monkeypatch.setenv("SPEEDRUN_CACHE", str(shared))
    base = ["verify", "shakespeare-char", "--data", str(line_corpus), "--seeds", "2", "--target", "20", *TINY]
    assert main([*base, "--out", str(tmp_path / "cold")]) == 0
    assert "caches: cold" in capsys.readouterr().out
    assert not shared.exists()
    assert json.loads((tmp_path / "cold" / "verify.json").read_text())["caches"].startswith("cold")
    assert main([*base, "--out", str(tmp_path / "warm"), "--warm"]) == 0
    assert "caches: warm" in capsys.readouterr().out
    assert any(shared.rglob("*"))  # the prepared corpus and the matmul peak stayed
    assert json.loads((tmp_path / "warm" / "verify.json").read_text())["caches"].startswith("warm")
