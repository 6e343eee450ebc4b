"""Lecture 02 checkers: the right answers pass, the wrong answers learners write are rejected."""

from checker_tools import assert_accepts, assert_rejects


# --- 02.1: a GPT-2-style model -----------------------------------------------------------------------

def gpt2_params(vocab, d_model, n_layers, context, tied, *, positions=True, biases=True,
                layernorm=2, final_norm=True, head=True):
    """The solution; the keyword switches build the wrong answers below."""
    d = d_model
    b = 1 if biases else 0
    attention = 4 * (d * d + b * d)
    ffn = d * 4 * d + b * 4 * d + 4 * d * d + b * d
    block = attention + ffn + 2 * layernorm * d
    out = 0 if tied or not head else vocab * d
    return vocab * d + (context * d if positions else 0) + n_layers * block \
        + (layernorm * d if final_norm else 0) + out


def test_02_1_accepts_the_formula():
    assert_accepts("02.1", gpt2_params)


def test_02_1_rejects_missing_pieces():
    for wrong in (dict(positions=False), dict(biases=False), dict(layernorm=1), dict(final_norm=False)):
        assert_rejects("02.1", lambda *a, w=wrong: gpt2_params(*a, **w), "case 1 (GPT-2 small")


def test_02_1_rejects_ignoring_an_untied_head():
    assert_rejects("02.1", lambda *a: gpt2_params(*a, head=False), "separate output head")


def test_02_1_rejects_a_float_count():
    assert_rejects("02.1", lambda *a: gpt2_params(*a) / 1.0, "return an int")


# --- 02.2: one MoE layer -----------------------------------------------------------------------------

def moe_layer_params(d, expert_hidden, n_routed, n_shared, top_k, swiglu):
    expert = (3 if swiglu else 2) * d * expert_hidden
    router = n_routed * d
    return router + (n_routed + n_shared) * expert, router + (n_shared + top_k) * expert


def test_02_2_accepts_the_count():
    assert_accepts("02.2", moe_layer_params)


def test_02_2_rejects_forgetting_the_shared_experts_when_activated():
    def no_shared_active(d, h, n_routed, n_shared, top_k, swiglu):
        expert = (3 if swiglu else 2) * d * h
        return n_routed * d + (n_routed + n_shared) * expert, n_routed * d + top_k * expert

    assert_rejects("02.2", no_shared_active, "result 1")


def test_02_2_rejects_leaving_out_the_router():
    def no_router(d, h, n_routed, n_shared, top_k, swiglu):
        expert = (3 if swiglu else 2) * d * h
        return (n_routed + n_shared) * expert, (n_shared + top_k) * expert

    assert_rejects("02.2", no_router, "result 0")


def test_02_2_rejects_three_matrices_for_gelu_experts():
    def always_swiglu(d, h, n_routed, n_shared, top_k, swiglu):
        return moe_layer_params(d, h, n_routed, n_shared, top_k, True)

    assert_rejects("02.2", always_swiglu, "Switch-style")


def test_02_2_rejects_the_active_fraction_of_all_experts():
    # scaling the total by top_k / n_routed treats shared experts and the router as routed ones
    def scaled(d, h, n_routed, n_shared, top_k, swiglu):
        total, _ = moe_layer_params(d, h, n_routed, n_shared, top_k, swiglu)
        return total, total * top_k // n_routed

    assert_rejects("02.2", scaled, "result 1")


# --- 02.3: one MLA block -----------------------------------------------------------------------------

def mla_params(d, n_heads, q_lora_rank, kv_lora_rank, qk_nope, qk_rope, v_head,
               *, norms=True, rope_key=True, q_rope=True, v_width=True):
    """The solution; the keyword switches build the wrong answers below."""
    qk_head = qk_nope + (qk_rope if q_rope else 0)
    n = 1 if norms else 0
    if q_lora_rank is None:
        q = d * n_heads * qk_head
    else:
        q = d * q_lora_rank + n * q_lora_rank + q_lora_rank * n_heads * qk_head
    v = v_head if v_width else qk_nope
    kv = d * (kv_lora_rank + (qk_rope if rope_key else 0)) + n * kv_lora_rank \
        + kv_lora_rank * n_heads * (qk_nope + v)
    return q + kv + n_heads * v * d


def test_02_3_accepts_the_count():
    assert_accepts("02.3", mla_params)


def test_02_3_rejects_missing_pieces():
    for wrong in (dict(norms=False), dict(rope_key=False), dict(q_rope=False)):
        assert_rejects("02.3", lambda *a, w=wrong: mla_params(*a, **w), "case 1 (DeepSeek-V3")


def test_02_3_rejects_values_as_wide_as_keys():
    assert_rejects("02.3", lambda *a: mla_params(*a, v_width=False), "toy layer")


def test_02_3_rejects_a_query_latent_that_is_always_there():
    def always_compressed(d, n_heads, q_lora_rank, kv_lora_rank, qk_nope, qk_rope, v_head):
        return mla_params(d, n_heads, q_lora_rank or kv_lora_rank, kv_lora_rank, qk_nope, qk_rope, v_head)

    assert_rejects("02.3", always_compressed, "V2-Lite")
    assert_rejects("02.3", lambda d, h, q, *rest: mla_params(d, h, q, *rest) if q else None, "V2-Lite")
