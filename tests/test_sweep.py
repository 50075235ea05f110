"""``vlgraft sweep``: expansion and naming, validation by key, and a small sweep end to end (child
processes, resume, a failing variant)."""

import json

import pytest
import yaml

from vlgraft.cli import main
from vlgraft.config import to_dict
from vlgraft.errors import ConfigError
from vlgraft.sweep import is_recipe_key, load_sweep, run_sweep


@pytest.fixture
def base(tiny_recipe, tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(to_dict(tiny_recipe(max_steps=2))))
    return p


def _sweep(tmp_path, base_recipe, **body) -> str:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump({"base": str(base_recipe), "out": str(tmp_path / "out"), **body}, sort_keys=False))
    return str(p)


def test_recipe_keys():
    assert is_recipe_key("train.batch_size") and is_recipe_key("methods") and is_recipe_key("vision_hr.grid")
    assert is_recipe_key("train.modality_groups.image")  # inside a free-form mapping
    assert not is_recipe_key("lr") and not is_recipe_key("train.batchsize") and not is_recipe_key("vision.name.x")


def test_variants_times_grid(tmp_path, base):
    s = load_sweep(_sweep(tmp_path, base, overrides={"train.max_steps": 3},
                          variants={"A": None,
                                    "B": {"train.seed": 1, "trainable": [{"name": "c", "params": ["connector"]}]}},
                          grid={"train.batch_size": [2, 4], "size": {"s": {"data.max_length": 96}, "m": {}}}))
    names = [v.name for v in s.variants]
    assert names == [f"{a}_batch_size={b}_{c}" for a in "AB" for b in (2, 4) for c in "sm"]
    r = {v.name: v.recipe for v in s.variants}
    assert r["B_batch_size=4_s"].train.seed == 1 and r["B_batch_size=4_s"].train.batch_size == 4
    assert r["B_batch_size=4_s"].data.max_length == 96 and r["A_batch_size=2_m"].data.max_length == 128
    assert [g.name for g in r["B_batch_size=2_m"].trainable] == ["c"] and len(r["A_batch_size=2_m"].trainable) == 2
    assert all(x.train.max_steps == 3 for x in r.values())
    assert r["A_batch_size=2_s"].train.output_dir == str(tmp_path / "out" / "A_batch_size=2_s")


def test_named_values_of_a_recipe_key(tmp_path, base):
    s = load_sweep(_sweep(tmp_path, base, grid={"connector": {"lin": {"name": "linear"}, "mlp": {"name": "mlp"}},
                                                "train.schedule": ["cosine", "constant"]}))
    assert [v.name for v in s.variants] == ["lin_schedule=cosine", "lin_schedule=constant", "mlp_schedule=cosine",
                                            "mlp_schedule=constant"]
    assert s.variants[0].recipe.connector.name == "linear" and s.variants[1].recipe.train.schedule == "constant"


@pytest.mark.parametrize("body, needle", [
    ({"variants": {"A": {}, "B": {"train.max_stepz": 3}}}, "variant 'B': "),
    ({"variants": {"A": {}, "B": {"train.max_stepz": 3}}}, "unknown key 'train.max_stepz'"),
    ({"grid": {"lr": [1, 2]}}, "key 'grid.lr': 'lr' is not a recipe key"),
    ({"grid": {"train.seed": []}}, "key 'grid.train.seed' has no values"),
    ({"grid": {"train.seed": 3}}, "key 'grid.train.seed' expects a list"),
    ({"grid": {"size": {"s": 2}}}, "key 'grid.size.s' expects a mapping"),
    ({"variants": {"A": [1]}}, "key 'variants.A' expects a mapping"),
    ({"variants": {"A": {}}, "evaluation": {}}, "unknown key 'evaluation'"),
    ({"variants": {"A": {}}, "eval": {"limt": 3}}, "unknown key 'eval.limt'"),
    ({"variants": {"A": {}}, "eval": {"limit": "all"}}, "key 'eval.limit' expects int"),
    ({}, "give 'variants'"),
    ({"base": "nowhere.yaml", "variants": {"A": {}}}, "key 'base': recipe file not found: nowhere.yaml"),
    ({"variants": {"A": {"train.batch_size": 0}}}, "variant 'A': "),
])
def test_validation_names_the_key(tmp_path, base, body, needle):
    with pytest.raises(ConfigError) as e:
        load_sweep(_sweep(tmp_path, base, **body))
    assert needle in str(e.value) and "sweep.yaml" in str(e.value), str(e.value)


def test_bad_base_and_cli_error_is_one_line(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"variants": {"A": {}}}))
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(p), "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "key 'base'" in err[0] and str(p) in err[0]


def test_dry_run_prints_trainable_params(tmp_path, base, capsys):
    s = _sweep(tmp_path, base, variants={"lora": {}, "conn": {"methods": [], "trainable": [
        {"name": "connector", "params": ["connector"]}]}})
    plan = run_sweep(s, dry_run=True)
    assert [p["name"] for p in plan] == ["lora", "conn"]
    assert plan[0]["trainable_params"] > plan[1]["trainable_params"] > 0
    out = capsys.readouterr().out
    assert "dry run" in out and f"{plan[1]['trainable_params']:,}" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sweep_end_to_end_resume_and_failure(tmp_path, base, capsys):
    s = _sweep(tmp_path, base, overrides={"train.max_steps": 2, "train.log_every": 1},
               variants={"lora": {}, "r2": {"methods": [{"name": "lora", "r": 2, "alpha": 4,
                                                         "target_modules": ["q_proj"]}]},
                         "broken": {"data.train": str(tmp_path / "missing.json")}},
               eval={"limit": 4, "loss_records": 2})
    res = run_sweep(s)
    out = tmp_path / "out"
    assert [r["name"] for r in res] == ["lora", "r2", "broken"]
    assert [r["status"] for r in res] == ["ok", "ok", "failed"]
    assert res[2]["error"].startswith("vlgraft: error: data file not found: ") and "missing.json" in res[2]["error"]
    lora, r2 = res[0], res[1]
    assert lora["trainable_params"] > r2["trainable_params"] and lora["curve"] != r2["curve"]
    assert len(lora["curve"]) == 2 and lora["eval_n"] == 4 and lora["val_loss"] is not None
    written = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in written["variants"]] == ["lora", "r2", "broken"]
    md = (out / "sweep.md").read_text()
    assert sum(line.startswith(("| lora |", "| r2 |", "| broken |")) for line in md.splitlines()) == 3
    assert "- broken: " in md and (out / "loss.png").stat().st_size > 1000
    log_mtime = (out / "logs" / "lora.log").stat().st_mtime_ns

    again = run_sweep(s, only=["lora", "r2"])  # finished variants are skipped, the failure is shown as recorded
    assert [r.get("reused") for r in again] == [True, True, None] and again[2]["status"] == "failed"
    assert (out / "logs" / "lora.log").stat().st_mtime_ns == log_mtime
    assert "finished earlier, skipped" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="unknown variant"):
        run_sweep(s, only=["lora", "nope"])


def test_table_with_text_ability_and_failures(tmp_path, base):
    from vlgraft.sweep import markdown

    s = load_sweep(_sweep(tmp_path, base, variants={"a": {}, "b": {}, "c": {}}))
    ok = {"status": "ok", "overrides": [], "trainable_params": 1234, "samples_per_s": 2.0, "final_train_loss": 0.5,
          "val_loss": None, "accuracy": 0.75, "by_type": {"color": 0.5, "shape": 1.0},
          "text_ability": {"before": {"ppl": 10.0, "qa_acc": 0.5},
                           "after": {"ppl": 12.5, "qa_acc": 0.25, "ppl_ci": [11.04, 14.2], "qa_ci": [0.1, 0.5]},
                           "change": {"ppl": 2.5, "qa_acc": -0.25}}}
    res = [{"name": "a", **ok},
           {"name": "b", "status": "failed", "overrides": ["x=1"], "error": "vlgraft: error: boom"},
           {"name": "c", "status": "not run", "overrides": []}]
    md = markdown(s, res).splitlines()
    head = next(line for line in md if line.startswith("| variant"))
    assert head.split(" | ")[-4:] == ["color", "shape", "text ppl before → after [95% CI]",
                                      "text QA before → after [95% CI] |"]
    assert ("| a | ok | 1,234 | 2.00 | 0.5000 | - | 75.00% | 50.0% | 100.0% | 10.00 → 12.50 [11.04, 14.20] | "
            "50.0% → 25.0% [10.0, 50.0] |") in md
    assert "| b | failed | - |" in "\n".join(md) and "- b: vlgraft: error: boom" in md
