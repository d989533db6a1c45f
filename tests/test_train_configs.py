"""Every recipe in train/configs parses into its script's arguments: a misspelt key would
otherwise surface only when a run of an hour is launched."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("trl")

from erank_fast.training.arguments import RLScriptArguments, SFTScriptArguments  # noqa: E402

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "train" / "configs").glob("*.yaml"))


def _parser(config: Path):
    from trl import GRPOConfig, SFTConfig, TrlParser

    if "rl" in config.stem.split("_"):
        return TrlParser((RLScriptArguments, GRPOConfig))
    return TrlParser((SFTScriptArguments, SFTConfig))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_recipe_parses_into_its_script_arguments(config, tmp_path):
    # bf16 false: the configs meant for a GPU ask for it, which this CPU refuses
    args, training = _parser(config).parse_args_and_config(
        ["--config", str(config), "--bf16", "false", "--output_dir", str(tmp_path)])
    assert args.model and args.data
    assert training.output_dir == str(tmp_path)


def test_a_misspelt_key_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: smollm2-135m-instruct\ndata: d.jsonl\nlearning_rat: 1.0e-4\n")
    with pytest.raises(ValueError, match="learning_rat"):
        _parser(bad).parse_args_and_config(["--config", str(bad), "--bf16", "false",
                                            "--output_dir", str(tmp_path)])


def test_precision_follows_the_machine_unless_forced():
    from types import SimpleNamespace

    from erank_fast.cpu import fast_bf16
    from erank_fast.training.policy import apply_precision

    def config(**kw):
        return SimpleNamespace(**{"bf16": False, "fp16": False, "use_cpu": False, **kw})

    c = config(bf16=True)  # TRL's default, refused on a CPU: "float32" clears it
    assert apply_precision(c, "float32") == "float32" and not c.bf16
    c = config()
    assert apply_precision(c, "bf16") == "bf16" and c.bf16
    import torch

    if not torch.cuda.is_available():
        assert c.use_cpu  # transformers asks for it before bf16 on a CPU-only setup
        c = config()
        want = "bf16" if fast_bf16() else "float32"
        assert apply_precision(c, "auto") == want and c.bf16 == (want == "bf16")
    c = config(fp16=True)
    assert apply_precision(c, "auto") == "fp16" and not c.bf16
    with pytest.raises(ValueError, match="precision must be one of"):
        apply_precision(config(), "int8")


def test_forced_bf16_on_a_cpu_slower_at_it_is_warned_about(monkeypatch, caplog):
    """--precision bf16 on a CPU that multiplies bfloat16 slower than float32 (no bf16 units):
    trained as asked, with one warning that names both rates; none where bf16 is faster."""
    from types import SimpleNamespace

    import torch

    from erank_fast import cpu
    from erank_fast.training.policy import apply_precision

    if torch.cuda.is_available():
        pytest.skip("the CPU check applies where no CUDA device trains")
    for rates, warned in (({"float32": 141.0, "bfloat16": 1.4}, True),
                          ({"float32": 300.0, "bfloat16": 2500.0}, False)):
        cpu.warn_if_slower_than_float32.cache_clear()
        monkeypatch.setattr(cpu, "gemm_gflops", lambda rates=rates: rates)
        caplog.clear()
        c = SimpleNamespace(bf16=False, fp16=False, use_cpu=False)
        with caplog.at_level("WARNING", logger="erank_fast"):
            assert apply_precision(c, "bf16") == "bf16" and c.bf16
        text = [r.getMessage() for r in caplog.records if "was asked for" in r.getMessage()]
        assert len(text) == warned, text
        if warned:
            assert "1 GFLOP/s against float32's 141 (0.01x)" in text[0]
    cpu.warn_if_slower_than_float32.cache_clear()


@pytest.mark.parametrize("config", ["sft.yaml", "rl.yaml"])
def test_bf16_chosen_after_parsing_turns_autocast_on(config, tmp_path):
    """The arguments are parsed with bf16 false (a CPU refuses TRL's default), then the chosen
    precision is applied: the mixed precision transformers hands the Accelerator (derived when
    parsing) must follow, or the run is float32 under a bf16 label."""
    from erank_fast.training.policy import apply_precision

    path = CONFIGS[0].parent / config
    _, training = _parser(path).parse_args_and_config(
        ["--config", str(path), "--bf16", "false", "--output_dir", str(tmp_path)])
    assert training.mixed_precision == "no"
    assert apply_precision(training, "bf16") == "bf16"
    assert training.bf16 and training.mixed_precision == "bf16"
    assert apply_precision(training, "float32") == "float32"
    assert not training.bf16 and training.mixed_precision == "no"
