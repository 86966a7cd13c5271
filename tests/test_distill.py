"""Knowledge distillation (saten.distill): loss terms, config checks, a teacher run feeding a student."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_pipeline import ONE_STEP, compose_config, shrink_overrides
from torch.nn import functional as F

from saten.distill import Distiller, check_distill_config
from saten.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning", "ignore:.*LeafSpec")


def _batch(size=3, length=7):
    ids = torch.randint(5, 100, (size, length))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (size,))}


@pytest.fixture
def tiny_classifier(tiny_bert_cfg):
    from saten.models import load_model

    torch.manual_seed(0)
    return load_model(tiny_bert_cfg, head="sequence_classification", num_labels=2)


def test_a_teacher_equal_to_the_student_adds_nothing(tiny_classifier):
    batch = _batch()
    teacher = copy.deepcopy(tiny_classifier).eval()
    distiller = Distiller(teacher, kd_weight=0.5, temperature=2.0, hidden_weight=1.0)
    student = tiny_classifier.eval()
    out = student(**batch, output_hidden_states=True)
    loss, parts = distiller.loss(out, batch)
    assert parts["kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert parts["hidden"].item() == pytest.approx(0.0, abs=1e-10)
    assert loss.item() == pytest.approx(0.5 * out.loss.item(), rel=1e-6)


def test_logit_and_hidden_terms_follow_their_formulas(tiny_classifier):
    torch.manual_seed(1)
    student_logits, teacher_logits = torch.randn(4, 3), torch.randn(4, 3)
    distiller = Distiller(tiny_classifier, kd_weight=1.0, temperature=3.0, hidden_weight=0.0)
    p_teacher = F.softmax(teacher_logits / 3, dim=-1)
    expected = (p_teacher * (p_teacher.log() - F.log_softmax(student_logits / 3, dim=-1))).sum(-1).mean() * 9
    term = distiller._logit_term(student_logits, teacher_logits)
    assert term.item() == pytest.approx(expected.item(), rel=1e-5)
    regression = Distiller(tiny_classifier, 1.0, 3.0, 0.0, regression=True)
    assert regression._logit_term(torch.ones(4, 1), torch.zeros(4, 1)).item() == pytest.approx(1.0)
    # hidden states: padding positions do not count
    student = (torch.zeros(1, 2, 4),)
    teacher = (torch.tensor([[[1.0] * 4, [5.0] * 4]]),)
    mask = torch.tensor([[1, 0]])
    assert Distiller._hidden_term(student, teacher, mask).item() == pytest.approx(1.0)


def test_the_student_learns_towards_the_teacher(tiny_classifier):
    """A few distillation-only steps shrink the KD term: gradients flow from the teacher's logits."""
    torch.manual_seed(2)
    teacher = copy.deepcopy(tiny_classifier)
    with torch.no_grad():
        teacher.classifier.weight.mul_(5).add_(1)
    distiller = Distiller(teacher.eval(), kd_weight=1.0, temperature=1.0, hidden_weight=0.0)
    student = tiny_classifier.train()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    batch = _batch(size=8)
    first = None
    for _ in range(15):
        loss, parts = distiller.loss(student(**batch), batch)
        first = parts["kd"].item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert parts["kd"].item() < 0.5 * first


@pytest.mark.parametrize(("key", "value"), [("kd_weight", 1.5), ("hidden_weight", -1.0), ("temperature", 0.0),
                                            ("teacher", None)])
def test_bad_distill_values_are_refused_in_one_line(key, value):
    cfg = {"teacher": "somewhere", "kd_weight": 0.5, "temperature": 2.0, "hidden_weight": 1.0, key: value}
    with pytest.raises(ConfigError, match=f"distill.{key}="):
        check_distill_config(cfg)
    check_distill_config({"teacher": None, "kd_weight": 0.0, "hidden_weight": 0.0})  # off: nothing to check


def test_dense_teacher_run_then_distilled_student_run(mini_glue, tmp_path):
    from saten.train import run

    teacher_dir = tmp_path / "teacher"
    run(compose_config([*shrink_overrides(mini_glue, "mrpc", "dense"), *ONE_STEP], teacher_dir))
    assert (teacher_dir / "model.safetensors").is_file()
    overrides = [*shrink_overrides(mini_glue, "mrpc", "saten_u"), *ONE_STEP, "distill=kd",
                 f"distill.teacher={teacher_dir}"]
    summary = run(compose_config(overrides, tmp_path / "student"))
    assert math.isfinite(summary["best/f1"])
    wrong_task = [*shrink_overrides(mini_glue, "rte", "saten_u"), *ONE_STEP, "distill=kd",
                  f"distill.teacher={teacher_dir}"]
    with pytest.raises(ConfigError, match="trained on mrpc"):
        run(compose_config(wrong_task, tmp_path / "wrong"))


def test_init_from_teacher_compresses_the_fine_tuned_model(mini_glue, tmp_path):
    """The student starts from the dense teacher's weights (head included); reloads need no teacher."""
    import shutil

    from saten.lit import load_run
    from saten.lit.classification import build_module
    from saten.train import run, run_tag

    teacher_dir = tmp_path / "teacher"
    run(compose_config([*shrink_overrides(mini_glue, "mrpc", "dense"), *ONE_STEP], teacher_dir))
    teacher = load_run(teacher_dir).model.state_dict()
    overrides = [*shrink_overrides(mini_glue, "mrpc", "saten_u"), *ONE_STEP, f"distill.teacher={teacher_dir}",
                 "distill.init_from_teacher=true"]
    cfg = compose_config(overrides, tmp_path / "student")
    fresh, reloaded = build_module(cfg, fresh=True).model, build_module(cfg).model
    for name in ("classifier.weight", "bert.embeddings.word_embeddings.weight"):
        assert torch.equal(fresh.state_dict()[name], teacher[name])
        assert not torch.equal(reloaded.state_dict()[name], teacher[name])  # a reload keeps its own init
    dense = compose_config([*shrink_overrides(mini_glue, "mrpc", "dense"), *ONE_STEP, *overrides[-2:]],
                           tmp_path / "dense")
    assert _same_weights(build_module(dense, fresh=True).model.state_dict(), teacher)

    assert run_tag("saten_u", cfg.saten, distill=cfg.distill).endswith("_fromteacher")
    summary = run(cfg)
    assert math.isfinite(summary["best/f1"])
    student = load_run(tmp_path / "student").model.state_dict()
    shutil.rmtree(teacher_dir)  # the finished student reloads without its teacher
    assert _same_weights(load_run(tmp_path / "student").model.state_dict(), student)


def _same_weights(state: dict, reference: dict) -> bool:
    return state.keys() == reference.keys() and all(torch.equal(v, reference[k]) for k, v in state.items())


def test_init_from_teacher_refuses_compressed_teachers_and_lm_tasks(mini_glue, tmp_path):
    from saten.train import run
    from saten.validate import check_method_config

    compressed = tmp_path / "compressed"
    run(compose_config([*shrink_overrides(mini_glue, "mrpc", "saten_u"), *ONE_STEP], compressed))
    overrides = [*shrink_overrides(mini_glue, "mrpc", "saten_u"), *ONE_STEP, f"distill.teacher={compressed}",
                 "distill.init_from_teacher=true"]
    with pytest.raises(ConfigError, match="a compressed run .*needs a dense run"):
        run(compose_config(overrides, tmp_path / "student"))
    lm = compose_config(["model=tiny_llama", "task=wikitext2", f"distill.teacher={compressed}",
                         "distill.init_from_teacher=true"], tmp_path / "lm")
    with pytest.raises(ConfigError, match="task.kind=lm; use distill=none"):
        check_method_config(lm)


def test_teacher_auto_picks_the_newest_dense_run_of_the_same_task_and_seed(mini_glue, tmp_path):
    from omegaconf import OmegaConf, open_dict

    from saten.distill import find_teacher
    from saten.train import run

    def config(task, method, seed, run_dir, *extra):
        cfg = compose_config([*shrink_overrides(mini_glue, task, method), *ONE_STEP, f"seed={seed}", *extra],
                             run_dir)
        with open_dict(cfg):
            cfg.paths.log_dir = str(tmp_path)
        return cfg

    student = ["distill=kd", "distill.teacher=auto"]
    with pytest.raises(ConfigError, match="distill.teacher=auto: no completed dense run .*task=mrpc seed=1"):
        run(config("mrpc", "saten_u", 1, tmp_path / "student0", *student))
    for name, task, method, seed in (("a", "mrpc", "dense", 1), ("b", "mrpc", "dense", 1),
                                     ("other_seed", "mrpc", "dense", 2), ("other_task", "rte", "dense", 1),
                                     ("compressed", "mrpc", "saten_u", 1)):
        run(config(task, method, seed, tmp_path / "runs" / name))
    assert find_teacher(tmp_path, config("mrpc", "saten_u", 1, tmp_path / "x")) == tmp_path / "runs" / "b"
    assert find_teacher(tmp_path, config("mrpc", "saten_u", 2, tmp_path / "x")).name == "other_seed"
    summary = run(config("mrpc", "saten_u", 1, tmp_path / "student", *student))
    assert math.isfinite(summary["best/f1"])
    # the run records the teacher it had, not "auto"
    recorded = OmegaConf.load(tmp_path / "student" / "config.yaml").distill.teacher
    assert recorded == str(tmp_path / "runs" / "b")
