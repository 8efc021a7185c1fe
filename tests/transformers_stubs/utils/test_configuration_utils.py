"""FAT5 stand-in for transformers' `tests/utils/test_configuration_utils.py` (not shipped in the transformers sdist).

`ConfigTester.check_config_arguments_init` builds a config with `config_common_kwargs` and checks that every key comes
back unchanged (`dtype` is compared with `torch.float16`). The keys are the common `PreTrainedConfig` arguments of
transformers 5.x; every value differs from its default so that a config class dropping one is caught.
"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",  # ConfigTester checks this one against torch.float16
    "chunk_size_feed_forward": 5,
    "architectures": ["FAT5Model"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
