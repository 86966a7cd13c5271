"""compress(): targeting on tiny BERT and tiny LLaMA, overrides, knob dropping, parameter groups."""

import logging

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from saten import SatenConfig, SatenEmbedding, SatenLinear, SVDLinear, compress, parameter_groups
from saten.compress import SatenTiedHead
from saten.errors import ConfigError

BERT_BLOCK = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
]
LLAMA_BLOCK = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]


def tiny_bert():
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    return BertForSequenceClassification(cfg).eval()


def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


def test_default_targets_on_bert_are_the_block_linears():
    model = tiny_bert()
    names = compress(model, {"method": "saten", "eps": 0.5, "density": 0.1})
    assert names == [f"bert.encoder.layer.{i}.{s}" for i in range(2) for s in BERT_BLOCK]
    assert all(isinstance(model.get_submodule(n), SatenLinear) for n in names)
    assert isinstance(model.classifier, torch.nn.Linear) and isinstance(
        model.bert.pooler.dense, torch.nn.Linear
    )
    assert model.saten_info["replaced"] == names and model.saten_info["seconds"] >= 0


def test_default_targets_on_llama_include_gqa_projections():
    model = tiny_llama()
    names = compress(model, {"method": "saten", "eps": 0.5, "density": 0.1})
    assert names == [f"model.layers.{i}.{s}" for i in range(2) for s in LLAMA_BLOCK]
    k_proj = model.get_submodule("model.layers.0.self_attn.k_proj")
    assert (k_proj.in_features, k_proj.out_features) == (48, 24)  # GQA: 2 kv heads of 12
    assert isinstance(model.lm_head, torch.nn.Linear)
    out = model(torch.randint(0, 96, (2, 7))).logits
    assert out.shape == (2, 7, 96) and torch.isfinite(out).all()


def test_eps_zero_density_zero_keeps_the_model_function():
    model = tiny_bert()
    x = torch.randint(0, 120, (2, 9))
    before = model(x).logits
    compress(model, {"method": "tt", "eps": 0.0})
    assert torch.allclose(model(x).logits, before, atol=1e-5)


def test_regex_suffix_list_all_linear_and_exclude():
    assert (
        len(compress(tiny_bert(), {"method": "tt", "eps": 0.5, "targets": r".*attention\.self\.query"})) == 2
    )
    names = compress(
        tiny_bert(),
        {"method": "tt", "eps": 0.5, "targets": ["query", "value"], "exclude": ["0.attention.self.value"]},
    )
    assert names == [
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.1.attention.self.query",
        "bert.encoder.layer.1.attention.self.value",
    ]
    names = compress(tiny_bert(), {"method": "tt", "eps": 0.5, "targets": "all-linear"})
    assert "bert.pooler.dense" not in names and "classifier" not in names and len(names) == 12


def test_unknown_target_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"saten.targets=.*matches no Linear"):
        compress(tiny_bert(), {"method": "tt", "eps": 0.5, "targets": "nothing_like_this"})


def test_per_layer_overrides_and_svd_and_dense():
    model = tiny_bert()
    compress(
        model,
        {
            "method": "saten",
            "eps": 0.9,
            "density": 0.1,
            "overrides": {"intermediate.dense": {"eps": 0.0, "density": 0.0}},
        },
    )
    assert model.bert.encoder.layer[0].intermediate.dense.nnz == 0
    assert model.bert.encoder.layer[0].intermediate.dense.rel_error_tt < 1e-5
    assert model.bert.encoder.layer[0].output.dense.rel_error_tt > 0.1
    model = tiny_bert()
    compress(model, {"method": "svd", "svd_ratio": 0.5})
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, SVDLinear)
    assert compress(tiny_bert(), {"method": "dense"}) == []


def test_unused_knobs_are_dropped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = SatenConfig.from_any(
            {"method": "svd", "eps": 0.8, "density": 0.1, "sparsity": "unstructured", "svd_ratio": 0.33}
        )
    assert cfg.eps is None and cfg.density is None and cfg.sparsity is None
    assert sorted(cfg.dropped) == ["density", "eps", "sparsity"]
    assert "saten.eps=0.8 is not used by method=svd" in caplog.text
    switched = SatenConfig.from_any({"method": "svd", "eps": 0.85, "density": 0.1, "svd_ratio": None})
    assert switched.svd_ratio == 0.33 and "using 0.33" in caplog.text
    nm = SatenConfig.from_any({"method": "saten", "eps": 1.0, "sparsity": "nm", "nm": [2, 4], "density": 0.1})
    assert nm.density is None and nm.effective_density == 0.5


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"method": "saten", "eps": 0.5, "density": 1.5}, "saten.density=1.5"),
        ({"method": "saten", "eps": -1, "density": 0.1}, "saten.eps=-1"),
        ({"method": "saten", "eps": 1, "sparsity": "nm", "nm": [4, 2]}, r"saten.nm=\[4, 2\]"),
        ({"method": "svd", "svd_ratio": 0}, "saten.svd_ratio=0"),
        ({"method": "saten", "eps": 0.5, "density": 0.1, "max_rank": 0}, "saten.max_rank=0"),
        ({"method": "lowrank"}, "saten.method=lowrank"),
        ({"method": "tt", "eps": 0.5, "epsilon": 1}, "saten.epsilon"),
    ],
)
def test_bad_values_give_one_line_errors(cfg, match):
    with pytest.raises(ConfigError, match=match) as err:
        SatenConfig.from_any(cfg)
    assert "\n" not in str(err.value)


def test_nm_needs_divisible_inputs():
    with pytest.raises(ConfigError, match="not divisible by M=7"):
        compress(tiny_bert(), {"method": "saten", "eps": 1.0, "sparsity": "nm", "nm": [2, 7]})


def test_parameter_groups_split_cores_sparse_rest():
    model = tiny_bert()
    compress(model, {"method": "saten", "eps": 0.5, "density": 0.1})
    groups = parameter_groups(model)
    assert len(groups["cores"]) == 12 * 4 and len(groups["sparse"]) == 12
    total = sum(p.numel() for g in groups.values() for p in g)
    assert total == sum(p.numel() for p in model.parameters())


def test_freeze_and_embeddings_on_tied_llama():
    model = tiny_llama()
    names = compress(
        model, {"method": "saten", "eps": 0.5, "density": 0.05, "embeddings": True, "freeze": True}
    )
    assert names[-1] == "model.embed_tokens" and isinstance(model.model.embed_tokens, SatenEmbedding)
    assert isinstance(model.lm_head, SatenTiedHead)
    assert not any(p.requires_grad for n in names for p in model.get_submodule(n).parameters())
    ids = torch.randint(0, 96, (2, 5))
    hidden = model.model(ids).last_hidden_state
    assert torch.allclose(model(ids).logits, hidden @ model.model.embed_tokens.weight.T, atol=1e-5)


def test_defaults_the_caller_never_set_drop_silently(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = SatenConfig.from_any({"method": "tt", "eps": 0.6})
    assert cfg.density is None and cfg.sparsity is None
    assert "not used by" not in caplog.text
