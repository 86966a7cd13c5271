"""Up-front validation: every bad input stops the run before any weights load, with one line naming the key,
the value and the fix (``run.py``: ``error: ...`` and exit code 2, no traceback unless ``SATEN_DEBUG=1``).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from test_pipeline import compose_config
from test_run import run_py

from saten.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning", "ignore:.*LeafSpec")
ONE_LINE = re.compile(r"^.+?: .+; .+$")  # <key>=<value>: <what is wrong>; <fix>
WORDS = "the a cat dog sat ran on under mat house big small red blue quickly slowly".split()


def write_mrpc(root: Path, train: int = 32, dev: int = 16, seed: int = 0) -> Path:
    """An invented MRPC folder (original TSV layout) with ``train`` and ``dev`` rows; returns the GLUE dir."""
    rng = random.Random(seed)
    (root / "MRPC").mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.tsv", train), ("dev.tsv", dev)):
        lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(rows):  # learnable: a paraphrase repeats the sentence and says "same"
            label = rng.randint(0, 1)
            one = " ".join(rng.choices(WORDS, k=8))
            two = f"same {one}" if label else f"other {' '.join(rng.choices(WORDS, k=8))}"
            lines.append(f"{label}\t{i}\t{i + 1000}\t{one}\t{two}")
        (root / "MRPC" / name).write_text("\n".join(lines) + "\n")
    return root


def tiny(glue_dir: Path, *extra: str) -> list[str]:
    """Overrides of a seconds-long tiny_bert MRPC run."""
    return ["model=tiny_bert", "logger=none", f"data.glue_dir={glue_dir}", "data.cache_dir=null",
            "data.batch_size=8", "data.eval_batch_size=8", "data.max_seq_length=32", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", *extra]


@pytest.fixture
def no_weights(monkeypatch):
    """Make loading any weights fail the test: validation must come first."""
    import saten.lit
    import saten.models

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the bad value was reported")

    monkeypatch.setattr(saten.models, "load_model", refuse)
    monkeypatch.setattr(saten.lit, "build_module", refuse)


def config_error(overrides: list[str], tmp_path: Path) -> str:
    from saten.train import run

    with pytest.raises(ConfigError) as info:
        run(compose_config(overrides, tmp_path / "run"))
    message = str(info.value)
    assert "\n" not in message and ONE_LINE.match(message), message
    return message


@pytest.mark.parametrize(("overrides", "start"), [
    (["saten.density=1.5"], "saten.density=1.5: "),
    (["saten.eps=-0.1"], "saten.eps=-0.1: "),
    (["saten=saten_24", "saten.nm=[4,2]"], "saten.nm=[4, 2]: "),
    (["saten=saten_24", "saten.nm=[3,5]"], "saten.nm=[3, 5]: bert.encoder.layer.0"),  # 32 inputs, M=5
    (["tt_shape.shapes={query:[[4,4],[4,4]]}"], "tt_shape.shapes.query=[[4, 4], [4, 4]]: products 16x16"),
    (["tt_shape.shapes={nothing:[[4,8],[4,8]]}"], "tt_shape.shapes.nothing: matches no"),
    (["tt_shape.in_order=0"], "tt_shape.in_order=0: "),
    (["saten.targets=nothing"], "saten.targets=nothing: matches no"),
    (["saten.overrides={query:{density:3}}"], "saten.overrides (layer "),
    (["saten.max_rank=0"], "saten.max_rank=0: "),
    (["saten=svd", "saten.svd_ratio=1.5"], "saten.svd_ratio=1.5: "),
    (["saten=svd", "saten.svd_ratio=0"], "saten.svd_ratio=0: "),
    (["model.pretrained=nobody/no-model", "model.source=hub"], "model.pretrained=nobody/no-model: "),
])
def test_bad_value_is_one_line_before_weights_load(overrides, start, tmp_path, no_weights):
    message = config_error(tiny(write_mrpc(tmp_path / "glue"), *overrides), tmp_path)
    assert message.startswith(start), message


def test_model_device_key(tmp_path, tiny_bert_cfg, no_weights):
    import torch

    from saten.models import model_device

    assert model_device(tiny_bert_cfg) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert model_device(tiny_bert_cfg | {"device": "auto"}).type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^model.device=cuda: no CUDA device"):
            model_device(tiny_bert_cfg | {"device": "cuda"})
    message = config_error(tiny(write_mrpc(tmp_path / "glue"), "model.device=tpu"), tmp_path)
    assert message.startswith("model.device=tpu: not supported; use one of cpu, cuda, auto")


def test_offline_hub_model_names_the_offline_alternative(tmp_path, no_weights):
    message = config_error(tiny(write_mrpc(tmp_path / "glue"), "model=bert_base",
                                "model.pretrained=nobody/bert"), tmp_path)
    assert "HF_HUB_OFFLINE" in message and "model=minilm" in message


@pytest.mark.parametrize("case", ["missing_dir", "missing_file", "malformed_row", "offline_hub"])
def test_data_problems_are_reported_before_weights_load(case, tmp_path, no_weights):
    glue = write_mrpc(tmp_path / "glue")
    if case == "missing_dir":
        glue = tmp_path / "nowhere"
    elif case == "missing_file":
        (glue / "MRPC" / "dev.tsv").unlink()
    elif case == "malformed_row":
        with open(glue / "MRPC" / "train.tsv", "a") as handle:
            handle.write("1\t7\tonly three fields\n")
    elif case == "offline_hub":
        glue = "hub"
    message = config_error(tiny(glue), tmp_path)
    expected = {"missing_dir": f"data.glue_dir={glue}: ", "missing_file": "dev.tsv not found",
                "malformed_row": f"{glue}/MRPC/train.tsv:34: malformed row", "offline_hub": "GLUE_DIR"}[case]
    assert expected in message, message


def test_unknown_group_option_lists_the_valid_ones(tmp_path):
    from saten.validate import check_group_choices

    conf = Path(__file__).resolve().parents[1] / "conf"
    with pytest.raises(ConfigError, match=r"^task=mrpcx: no such task .*choose one of .*mrpc, qnli"):
        check_group_choices(["task=mrpcx"], conf)
    with pytest.raises(ConfigError, match=r"^model=minilmx: "):
        check_group_choices(["-m", "model=minilm,minilmx", "saten.density=0.1"], conf)
    check_group_choices(["-m", "task=mrpc,rte", "+saten.foo=1", "hydra/launcher=basic", "experiment=quick"],
                        conf)


@pytest.mark.parametrize(("argv", "start"), [
    (["saten.densty=0.1"], "saten.densty=0.1: no such key in the config; "),
    (["-m", "saten.densty=0.1,0.2", "task=mrpc,rte"], "saten.densty=0.1,0.2: no such key"),
    (["+saten.eps=3"], "+saten.eps=3: saten.eps already exists; drop the +"),
    (["~saten.nothing"], "~saten.nothing: saten.nothing does not exist"),
    (["-m", "experiment=mrpc_lr_optuna", "optim.lr=interval(1e-5,1e-3)"], None),
    (["-m", "hydra/launcher=slurm", "saten.density=range(0.1,0.3,0.1)", "+foo=1", "~tags"], None),
])
def test_unknown_keys_are_one_line(argv, start):
    from saten.validate import check_overrides

    conf = Path(__file__).resolve().parents[1] / "conf"
    if start is None:
        check_overrides(argv, conf)
        return
    with pytest.raises(ConfigError) as info:
        check_overrides(argv, conf)
    assert str(info.value).startswith(start) and ONE_LINE.match(str(info.value))


def test_run_py_exits_2_with_one_line_and_no_traceback(tmp_path):
    result = run_py(["model=minilmx", f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith("error: model=minilmx: no such model"), lines
    # after Hydra composed: the default run dir (its ${run_tag:...} resolver) and a check at run time
    result = run_py(tiny(write_mrpc(tmp_path / "glue"), "saten.targets=nothing", f"paths.log_dir={tmp_path}"),
                    cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: saten.targets=nothing: matches no")
    (run_dir,) = tmp_path.glob("runs/mrpc/saten_u_d0.1_e0.85/*/.hydra")
    assert not (run_dir.parent / "config.yaml").exists()  # stopped before writing anything of its own


def test_saten_debug_shows_the_traceback(tmp_path):
    import os

    os.environ["SATEN_DEBUG"] = "1"
    try:
        result = run_py(["task=nope", f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    finally:
        del os.environ["SATEN_DEBUG"]
    assert result.returncode == 2 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: task=nope: ")


def test_unknown_objective_is_refused(tmp_path):
    from saten.validate import check_config

    with pytest.raises(ConfigError, match="objective=accuracy"):
        check_config(compose_config(["model=tiny_bert", "objective=accuracy"], tmp_path))


def test_method_preset_without_matched_values_names_the_benchmark(tmp_path):
    from saten.validate import check_config

    with pytest.raises(ConfigError, match="matched_ratios.py --model tiny_bert"):
        check_config(compose_config(["model=tiny_bert", "+method_preset=svd"], tmp_path))
