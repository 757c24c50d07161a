"""The foundation: packages import, the verl pin, the tiny model loads and generates."""


def test_packages_import():
    import verl

    import data_prep
    import recipe.lte
    import verl_ext

    assert verl.__version__ == "0.9.1"
    assert recipe.lte.__doc__ and verl_ext.__doc__ and data_prep.__doc__


def test_required_verl_pin_matches_installed():
    from importlib.resources import files

    import verl

    pin = files("recipe.lte").joinpath("REQUIRED_VERL.txt").read_text().split()
    assert pin == [f"verl=={verl.__version__}"]


def test_tiny_model_loads_with_chat_template_and_generates(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.hidden_size // model.config.num_attention_heads == 64
    ids = tok.apply_chat_template([{"role": "user", "content": "Compute (3*4) mod 10."}], add_generation_prompt=True)
    if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    out = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > len(ids)
    assert tok.decode(tok.encode("\\boxed{42}")) == "\\boxed{42}"
