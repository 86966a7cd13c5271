"""Task-agnostic recovery (saten.recover): the compressed layers move towards the dense hidden states, nothing
else changes, the result is cached, bad values are refused, and a run records the errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_pipeline import ONE_STEP, compose_config, shrink_overrides

from saten.compress import compress
from saten.errors import ConfigError
from saten.recover import cache_key, check_recover_config, recover, relative_error
from saten.recover_inputs import rows, special_tokens, task_inputs, text_chunks, text_inputs

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning", "ignore:.*LeafSpec")
CFG = {"steps": 15, "lr": 3e-3, "batch_size": 4, "seq_len": 32, "holdout": 4, "seed": 0,
       "corpus": "tinyshakespeare"}
WORDS = ["king", "queen", "road"] * 40
TEXT = " ".join(f"the {w} of day {i} was bright and cold" for i, w in enumerate(WORDS))


@pytest.fixture
def dense_and_compressed(tiny_bert_cfg):
    from saten.models import load_model, load_tokenizer

    torch.manual_seed(0)
    model = load_model(tiny_bert_cfg, head="sequence_classification", num_labels=2)
    reference = copy.deepcopy(model)
    replaced = compress(model, {"method": "saten", "eps": 0.6, "density": 0.05})
    return model, reference, replaced, load_tokenizer(tiny_bert_cfg)


def test_special_tokens_wrap_every_chunk(tiny_bert_cfg):
    from saten.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert_cfg)
    prefix, suffix = special_tokens(tokenizer)
    assert prefix == [tokenizer.cls_token_id] and suffix == [tokenizer.sep_token_id]
    chunks = text_chunks(tokenizer, TEXT, seq_len=16)
    assert chunks.shape[1] == 16 and len(chunks) > 10
    assert (chunks[:, 0] == tokenizer.cls_token_id).all() and (chunks[:, -1] == tokenizer.sep_token_id).all()


def test_recovery_lowers_the_held_out_error_and_touches_only_compressed_layers(dense_and_compressed):
    model, reference, replaced, tokenizer = dense_and_compressed
    model.train()
    untouched = {n: p.detach().clone() for n, p in model.named_parameters()
                 if not any(n.startswith(r + ".") for r in replaced)}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    result = recover(model, replaced, reference, text_inputs(tokenizer, TEXT, CFG["seq_len"]), CFG)
    assert result["recover/error_after"] < 0.8 * result["recover/error_before"]
    assert not result["recover/cached"]
    for name, value in untouched.items():  # embeddings, norms, the head: as they were
        assert torch.equal(dict(model.named_parameters())[name], value), name
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags and model.training
    assert not any(p.requires_grad for p in reference.base_model.parameters())


def test_a_second_identical_compression_loads_the_cached_values(dense_and_compressed, tmp_path):
    model, reference, replaced, tokenizer = dense_and_compressed
    twin, inputs = copy.deepcopy(model), text_inputs(tokenizer, TEXT, CFG["seq_len"])
    first = recover(model, replaced, reference, inputs, CFG, tmp_path, "tiny")
    second = recover(twin, replaced, reference, inputs, CFG, tmp_path, "tiny")
    assert second["recover/cached"] and second["recover/error_after"] == pytest.approx(
        first["recover/error_after"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
    other = recover(copy.deepcopy(twin), replaced, reference, inputs, {**CFG, "steps": 2}, tmp_path, "tiny")
    assert not other["recover/cached"]  # another config: its own entry
    assert len(list((tmp_path / "recovered").glob("*.safetensors"))) == 2


@pytest.mark.parametrize(("change", "match"), [
    ({"steps": -1}, "recover.steps=-1"), ({"lr": 0}, "recover.lr=0"), ({"seq_len": 4}, "recover.seq_len=4"),
    ({"batch_size": 0}, "recover.batch_size=0")])
def test_bad_recover_values_are_refused_in_one_line(change, match):
    with pytest.raises(ConfigError, match=match):
        check_recover_config({**CFG, **change}, {"method": "saten"})


def test_recovery_needs_a_compressed_model_and_no_progressive_schedule():
    with pytest.raises(ConfigError, match="saten=dense"):
        check_recover_config(CFG, {"method": "dense"})
    schedule = {"progressive": True, "start_eps": 0.5, "steps": 4, "end": 0.5}
    with pytest.raises(ConfigError, match="schedule=progressive"):
        check_recover_config(CFG, {"method": "saten"}, schedule)
    check_recover_config({"steps": 0}, {"method": "dense"})  # off: nothing to check


def test_a_run_with_recovery_records_the_errors(mini_glue, data_dir, tmp_path):
    from saten.train import run

    overrides = [*shrink_overrides(mini_glue, "mrpc", "saten_u"), *ONE_STEP, "recover=text",
                 "recover.steps=3", "recover.seq_len=32", "recover.batch_size=4",
                 f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path / 'cache'}"]
    run(compose_config(overrides, tmp_path / "run"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["recover/error_after"] < summary["recover/error_before"]
    assert list((tmp_path / "cache" / "recovered").glob("*.safetensors"))
    with pytest.raises(ConfigError, match="recover.corpus=nowhere"):
        run(compose_config([*overrides, "recover.corpus=nowhere"], tmp_path / "bad"))


def test_run_tag_names_the_recovery():
    from saten.train import run_tag

    saten = {"method": "saten", "density": 0.1, "eps": 0.85}
    assert run_tag("saten_u", saten, recover={"steps": 300}) == "saten_u_d0.1_e0.85_rec300"
    assert run_tag("saten_u", saten, recover={"steps": 0}) == "saten_u_d0.1_e0.85"


def test_recovery_works_on_a_llama_model(tiny_llama_cfg):
    from saten.models import load_model, load_tokenizer

    torch.manual_seed(0)
    model = load_model(tiny_llama_cfg, head="causal_lm")
    reference = copy.deepcopy(model)
    replaced = compress(model, {"method": "saten", "eps": 0.6, "density": 0.05})
    inputs = text_inputs(load_tokenizer(tiny_llama_cfg), TEXT, CFG["seq_len"])
    result = recover(model, replaced, reference, inputs, CFG)
    assert result["recover/error_after"] < result["recover/error_before"]


def test_rows_drop_the_columns_that_are_padding_in_every_row():
    inputs = {"input_ids": torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]]),
              "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])}
    assert rows(inputs, slice(None))["input_ids"].tolist() == [[5, 6], [7, 0]]
    assert rows(inputs, torch.tensor([1]))["input_ids"].tolist() == [[7]]


def test_padding_does_not_change_the_error(dense_and_compressed):
    model, reference, _, tokenizer = dense_and_compressed
    sentences = ["the king", "a bright and cold day on the road", "queen", "the road of day nine was long"]
    padded = tokenizer(sentences, padding=True, return_tensors="pt")
    inputs = {key: value.to(torch.int64) for key, value in padded.items()}
    together = relative_error(model.base_model.eval(), reference.base_model.eval(), inputs, batch_size=4)
    alone = relative_error(model.base_model, reference.base_model, inputs, batch_size=1)  # no padding
    assert together == pytest.approx(alone, rel=1e-5)


@pytest.fixture
def mrpc_module(mini_glue, tiny_bert_cfg):
    from saten.data.glue_module import GlueDataModule
    from saten.models import load_tokenizer

    module = GlueDataModule("mrpc", load_tokenizer(tiny_bert_cfg), glue_dir=mini_glue, max_seq_length=64,
                            train_limit=12, seed=3)
    module.setup("fit")
    return module


def test_task_inputs_are_the_training_examples_without_labels(mrpc_module):
    inputs, dataset = task_inputs(mrpc_module), mrpc_module.train_dataset()
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"} and len(inputs["input_ids"]) == 12
    for i in (0, 11):
        row = rows(inputs, slice(i, i + 1))
        assert row["input_ids"][0].tolist() == dataset[i]["input_ids"]
        assert row["token_type_ids"][0].tolist() == dataset[i]["token_type_ids"]


def test_task_recovery_lowers_the_error_and_is_cached_per_example_set(dense_and_compressed, mrpc_module,
                                                                        tmp_path):
    model, reference, replaced, tokenizer = dense_and_compressed
    cfg = {**CFG, "corpus": "task"}
    inputs = task_inputs(mrpc_module)
    result = recover(model, replaced, reference, inputs, cfg, tmp_path, "tiny")
    assert result["recover/error_after"] < 0.8 * result["recover/error_before"]
    params = {"w": torch.ones(2)}
    other = {**inputs, "input_ids": inputs["input_ids"].flip(0)}
    assert cache_key(params, "tiny", cfg, inputs) != cache_key(params, "tiny", cfg, other)
    chunks = text_inputs(tokenizer, TEXT, CFG["seq_len"])  # a text corpus: keyed by its name, as before
    assert cache_key(params, "tiny", CFG, chunks) == cache_key(params, "tiny", CFG)


def test_task_corpus_is_refused_for_language_modelling():
    with pytest.raises(ConfigError, match="recover.corpus=task"):
        check_recover_config({**CFG, "corpus": "task"}, {"method": "saten"}, kind="lm")
    check_recover_config({**CFG, "corpus": "task"}, {"method": "saten"}, kind="glue")


def test_a_run_recovers_on_its_own_training_examples(mini_glue, data_dir, tmp_path):
    from saten.train import run, run_tag

    overrides = [*shrink_overrides(mini_glue, "rte", "saten_u"), *ONE_STEP, "recover=task", "recover.steps=3",
                 "recover.batch_size=4", "recover.holdout=4", f"paths.cache_dir={tmp_path / 'cache'}"]
    cfg = compose_config(overrides, tmp_path / "run")
    assert run_tag("saten_u", cfg.saten, recover=cfg.recover).endswith("_rec3task")
    run(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["recover/error_after"] < summary["recover/error_before"]


def test_a_compressed_teacher_recovers_towards_the_teacher(mini_glue, tmp_path, monkeypatch):
    """With ``distill.init_from_teacher`` the reference of recovery is the fine-tuned teacher, not the
    pretrained model, and the run still lowers the error."""
    import saten.recover as recover_module
    from saten.lit import load_run
    from saten.train import run

    teacher_dir = tmp_path / "teacher"
    run(compose_config([*shrink_overrides(mini_glue, "rte", "dense"), *ONE_STEP], teacher_dir))
    teacher = load_run(teacher_dir).model.state_dict()
    references = []

    def spy(model, replaced, reference, *args, **kwargs):
        references.append(reference)
        return recover(model, replaced, reference, *args, **kwargs)

    monkeypatch.setattr(recover_module, "recover", spy)
    overrides = [*shrink_overrides(mini_glue, "rte", "saten_u"), *ONE_STEP, "recover=task", "recover.steps=3",
                 "recover.batch_size=4", "recover.holdout=4", f"paths.cache_dir={tmp_path / 'cache'}",
                 "distill=kd", f"distill.teacher={teacher_dir}", "distill.init_from_teacher=true"]
    summary = run(compose_config(overrides, tmp_path / "student"))
    (reference,) = references
    for name, value in reference.state_dict().items():
        assert torch.equal(value, teacher[name])
    assert summary["recover/error_after"] < summary["recover/error_before"]
