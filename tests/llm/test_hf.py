"""A Hugging Face Llama folder (config.json + safetensors + tokenizer.json) loads onto the one Transformer."""
import json

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import firstepoch.llm
from firstepoch import FirstEpochError
from firstepoch.models.transformer import Transformer, TransformerConfig

# Hugging Face's Llama names for our layer parameters, written out here independently of firstepoch/llm/hf.py
HF_NAMES = {"attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj", "attn.v_proj": "self_attn.v_proj",
            "attn.o_proj": "self_attn.o_proj", "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
            "mlp.down_proj": "mlp.down_proj", "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
TEXT = "The quick brown fox jumps over the lazy dog. " * 20 + "Pack my box with five dozen liquor jugs. " * 20


@pytest.fixture
def hf_folder(tmp_path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    config = TransformerConfig(vocab_size=tok.get_vocab_size(), dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                               hidden_dim=128, context=128, rope_theta=500000.0, tie_embeddings=False)
    torch.manual_seed(0)
    reference = Transformer(config).eval()
    for p in reference.parameters():
        p.data.normal_(0, 0.3)
    ours = reference.state_dict()
    hf = {"model.embed_tokens.weight": ours["embed_tokens.weight"], "model.norm.weight": ours["norm.weight"],
          "lm_head.weight": ours["lm_head.weight"]}
    for i in range(config.n_layers):
        for our_name, their_name in HF_NAMES.items():
            hf[f"model.layers.{i}.{their_name}.weight"] = ours[f"layers.{i}.{our_name}.weight"]
    save_file({k: v.contiguous() for k, v in hf.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": config.vocab_size,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
        "bos_token_id": 0, "eos_token_id": 1}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True,
        "chat_template": "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"}))
    return tmp_path, reference, tok


def test_a_hugging_face_folder_gives_the_same_tokens_and_logits(hf_folder):
    folder, reference, tok = hf_folder
    lm = firstepoch.llm.load(folder)
    text = "The lazy fox packs five jugs."
    ids = lm.encode(text)
    assert ids == [0, *tok.encode(text).ids]  # add_bos_token from tokenizer_config.json
    assert lm.tokenizer.decode(ids) == text and lm.tokenizer.end_ids == {1}
    with torch.no_grad():
        expected, got = reference(torch.tensor([ids])), lm.model(torch.tensor([ids]))
    # the loaded matrices are bf16: within bf16's three significant digits of the fp32 reference
    assert (got - expected).abs().max() < 0.02 * expected.abs().max()
    assert lm.render_chat([{"role": "user", "content": "hi"}]) == "<s>user: hi</s>"


def test_an_unsupported_architecture_is_refused(hf_folder):
    folder, _, _ = hf_folder
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["GPTNeoXForCausalLM"]}))
    with pytest.raises(FirstEpochError, match="GPTNeoXForCausalLM is not supported yet"):
        firstepoch.llm.load(folder)


@pytest.mark.parametrize("change, message", [
    ({"intermediate_size": 256}, "mlp.gate_proj.weight has shape [128, 64] but config.json implies [256, 64]"),
    ({"hidden_size": 128}, "has shape"),
    ({"num_attention_heads": 0}, "'num_attention_heads' is 0"),
    ({"num_hidden_layers": "2"}, "'num_hidden_layers' is '2', not a positive integer"),
    ({"num_hidden_layers": 10**9}, "'num_hidden_layers' is 1000000000, not a positive integer up to 512"),
    ({"max_position_embeddings": 2**40}, "'max_position_embeddings' is"),
    ({"rms_norm_eps": float("nan")}, "'rms_norm_eps'"),
    ({"vocab_size": None}, "'vocab_size' is missing"),
])
def test_a_config_that_lies_about_the_weights_is_one_clear_line(hf_folder, change, message):
    folder, _, _ = hf_folder
    config = {**json.loads((folder / "config.json").read_text()), **change}
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    with pytest.raises(FirstEpochError, match=message.replace("[", r"\[").replace("]", r"\]")):
        firstepoch.llm.load(folder)


def test_llama3_rope_scaling_gives_transformers_logits(hf_folder):
    """Llama 3.1's `rope_scaling` (rope_type llama3) against transformers' own LlamaForCausalLM on the same folder,
    at positions far enough for the scaled low frequencies to turn: as close as the unscaled model is to it (this
    fixture's large random weights leave about 0.03 between the two implementations even then), and far closer
    than the model read without its scaling."""
    transformers = pytest.importorskip("transformers")
    folder, _, _ = hf_folder
    ids = torch.tensor([list(range(2, 102))])
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 32}

    def logits(scaling, ours: bool) -> torch.Tensor:
        config = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k != "rope_scaling"}
        (folder / "config.json").write_text(json.dumps({**config, **({"rope_scaling": scaling} if scaling else {})}))
        with torch.no_grad():
            if ours:
                return firstepoch.llm.load(folder).model(ids)
            model = transformers.LlamaForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
            return model(ids).logits

    baseline = (logits(None, True) - logits(None, False)).abs().max()
    theirs = logits(llama3, False)
    scaled = (logits(llama3, True) - theirs).abs().max()
    unscaled = (logits(None, True) - theirs).abs().max()
    assert scaled <= 1.5 * baseline + 1e-3 and unscaled > 10 * scaled, (baseline, scaled, unscaled)
    from firstepoch.llm.hf import llama3_freq_factors

    factors = llama3_freq_factors(folder, llama3, 16, 500000.0)  # high frequencies kept, the lowest divided by 8
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(8.0) and factors == sorted(factors)
    (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()),
                                                    "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}))
    with pytest.raises(FirstEpochError, match=r"RoPE scaling \(yarn\) is not supported yet"):
        firstepoch.llm.load(folder)
