"""Facts about common architectures (dbgcli.rules._known) on the names real models use.

The names are those of transformers 5.25 models built from their configs
(``AutoModel.from_config``), of torch's ``nn.MultiheadAttention`` and Keras's
``MultiHeadAttention``, timm's ViT blocks and Meta's reference Llama.
"""

from __future__ import annotations

import pytest

from dbgcli.rules._known import (
    added_or_scaling_parameter,
    attention_query_or_key,
    zero_gradient_by_construction,
)

QUERY_OR_KEY = [
    "bert.encoder.layer.0.attention.self.query.weight",
    "bert.encoder.layer.0.attention.self.key.bias",
    "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.key.weight",
    "deberta.encoder.layer.0.attention.self.query_proj.weight",
    "deberta.encoder.layer.0.attention.self.pos_key_proj.weight",
    "deberta.encoder.layer.0.attention.self.q_bias",
    "longformer.encoder.layer.0.attention.self.key_global.weight",
    "distilbert.transformer.layer.0.attention.q_lin.weight",
    "grad/distilbert.transformer.layer.0.attention.k_lin.bias",
    "transformer.attentions.0.k_lin.weight",  # XLM, FlauBERT
    "encoder.block.0.layer.0.SelfAttention.q.weight",  # T5
    "decoder.block.0.layer.1.EncDecAttention.k.weight",
    "encoder.layer.0.attention.attn.k.weight",  # MPNet
    "transformer.layer.0.rel_attn.q",  # XLNet's bare parameter
    "transformer.h.0.multi_head_attention.Wq.weight",  # CTRL
    "layers.0.attention.wk.weight",  # Meta's reference Llama
    "model.layers.0.self_attn.q_proj.weight",  # Llama, Mistral, Qwen, Gemma, OPT, BART
    "transformer.h.0.attn.attention.k_proj.weight",  # GPT-Neo
    "h.0.crossattention.q_attn.weight",  # GPT-2's cross-attention
    "encoder.layers.0.attention.self_attention.query_key.weight",  # Reformer (shared)
    "model.layers.0.self_attn.k_norm.weight",  # QK-norm (Qwen3, OLMo2)
    "blocks.0.attn.q.weight",  # PVT's separate query
    "model.layers.0.self_attn.q_proj.lora_A.default.weight",  # PEFT's LoRA on q_proj
    "model.layers.0.self_attn.k_proj.lora_B.weight",
    "model.layers.0.self_attn.q_proj.base_layer.weight",  # PEFT's wrapped base layer
    "bert.encoder.layer.0.attention.self.query.weight_orig",  # torch's pruning
    "bert.encoder.layer.0.attention.self.query.parametrizations.weight.original",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",  # diffusers
    "encoder.layers.0.self_attn.q_proj_weight",  # nn.MultiheadAttention with kdim
    "multi_head_attention/key/kernel:0",  # Keras
    # Gradients as people name them by hand (the calibration corpus's conventions).
    "bert.encoder.layer.1.attention.self.key/grad",
    "bert.encoder.layer.1.attention.self.key/bias_grad",
    "gradients/bert.encoder.layer.1.attention.self.query/kernel:0",
]

NOT_QUERY_OR_KEY = [
    "bert.encoder.layer.0.attention.self.value.weight",
    "bert.encoder.layer.0.attention.output.dense.weight",
    "distilbert.transformer.layer.0.attention.v_lin.weight",
    "distilbert.transformer.layer.0.attention.out_lin.weight",
    "encoder.block.0.layer.0.SelfAttention.o.weight",
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
    # Fused projections: the values' part of the gradient is not damped.
    "gpt_neox.layers.0.attention.query_key_value.weight",
    "transformer.h.0.self_attention.query_key_value.bias",  # BLOOM, Falcon
    "transformer.h.0.attn.c_attn.weight",  # GPT-2
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_qkv.weight",  # diffusers, fused
    "model.layers.0.self_attn.v_proj.lora_A.default.weight",  # LoRA on the values
    "blocks.0.attn.qkv.weight",  # timm
    "blocks.0.attn.kv.weight",  # PVT
    "transformer.blocks.0.attn.Wqkv.weight",  # MPT
    "transformer.h.0.attn.qkv_proj.weight",  # CodeGen
    "encoder.layers.0.self_attn.in_proj_weight",  # nn.MultiheadAttention
    "deberta.encoder.layer.0.attention.self.in_proj.weight",
    # Words of attention elsewhere, or a query/key outside attention.
    "model.layers.0.post_attention_layernorm.weight",
    "mlp.k.weight",
    "keypoint_head.weight",
    "key_encoder.fc.weight",
    "attention.key_value.weight",
    "attn.topk.weight",
    "agent.q_head.weight",  # a DQN's Q-value head, no attention
    "transformer.layer.0.rel_attn.r_w_bias",
]


@pytest.mark.parametrize("tag", QUERY_OR_KEY)
def test_query_or_key_projections_of_real_models(tag: str) -> None:
    assert attention_query_or_key(tag)


@pytest.mark.parametrize("tag", NOT_QUERY_OR_KEY)
def test_not_query_or_key_projections(tag: str) -> None:
    assert not attention_query_or_key(tag)


def test_zero_gradient_only_for_the_bias_of_a_key_only_projection() -> None:
    """A key bias shifts every logit of a query alike; a query bias does not, and a fused
    bias holds the query and value parts."""
    zero = [
        "bert.encoder.layer.0.attention.self.key.bias",
        "distilbert.transformer.layer.0.attention.k_lin.bias",
        "model.layers.0.self_attn.k_proj.bias",
        "encoder.layer.0.attention.attn.k.bias",
        "transformer.h.0.multi_head_attention.Wk.bias",
        "multi_head_attention/key/bias:0",
        "bert.encoder.layer.1.attention.self.key/bias_grad",
    ]
    not_zero = [
        "bert.encoder.layer.0.attention.self.key.weight",
        "bert.encoder.layer.0.attention.self.query.bias",
        "distilbert.transformer.layer.0.attention.q_lin.bias",
        "transformer.h.0.self_attention.query_key_value.bias",
        "blocks.0.attn.qkv.bias",
        "h.0.attn.c_attn.bias",
        "bert.encoder.layer.1.attention.self.key/grad",
    ]
    assert all(zero_gradient_by_construction(tag) for tag in zero)
    assert not any(zero_gradient_by_construction(tag) for tag in not_zero)


def test_added_or_scaling_parameters_by_their_own_name() -> None:
    added = [
        "pos",  # a positional table registered on the root module
        "pos_embedding",
        "pos_embed",  # timm
        "vit.embeddings.position_embeddings",  # transformers ViT
        "positional_embedding",  # CLIP
        "cls_token",
        "vit.embeddings.cls_token",
        "beit.embeddings.mask_token",
        "dist_token",  # DeiT
        "register_tokens",
        "query_tokens",  # BLIP-2
        "blocks.0.ls1.gamma",  # timm LayerScale
        "blocks.0.gamma_1",  # CaiT
        "beit.encoder.layer.0.lambda_1",
        "encoder.stages.0.layers.0.layer_scale_parameter",  # ConvNeXt
        "layers.0.resweight",  # ReZero
    ]
    layers = [
        "fc1.weight",
        "pos_embedding.weight",  # an nn.Embedding table
        "bert.embeddings.position_embeddings.weight",
        "encoder.layers.0.self_attn.in_proj_weight",
        "rnn.weight_ih_l0",
        "dense/kernel:0",
        "W1",
        "layer0",
        "embed.weight",
    ]
    assert all(added_or_scaling_parameter(tag) for tag in added)
    assert not any(added_or_scaling_parameter(tag) for tag in layers)
