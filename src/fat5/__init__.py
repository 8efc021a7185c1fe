"""FAT5 (Flash Attention T5) as a native transformers model.

Importing this package registers the model type `flash_t5` with transformers' Auto classes and the `fat5` attention
implementation (the Triton kernels), so that `AutoModelForSeq2SeqLM.from_pretrained(folder)` and friends load FAT5
checkpoints without `trust_remote_code`.
"""

import importlib


# In a transformers source tree the auto mappings name the config; as a plugin, auto_docstring needs to be told.
importlib.import_module("transformers.utils.auto_docstring").HARDCODED_CONFIG_FOR_MODELS.setdefault(
    "flash-t5", "FlashT5Config"
)

from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTextEncoding,
    AutoModelForTokenClassification,
)

from .models.flash_t5 import (  # noqa: E402
    FlashT5Config,
    FlashT5EncoderModel,
    FlashT5ForConditionalGeneration,
    FlashT5ForQuestionAnswering,
    FlashT5ForSequenceClassification,
    FlashT5ForTokenClassification,
    FlashT5Model,
    FlashT5PreTrainedModel,
)
from .models.flash_t5.kernels import kernelize, register_fat5_attention  # noqa: E402
from .models.flash_t5.weight_conversion import register_legacy_checkpoint_conversion  # noqa: E402
from .packing import DataCollatorWithPacking  # noqa: E402


__version__ = "0.1.0"

AUTO_CLASSES = {
    AutoModel: FlashT5Model,
    AutoModelForSeq2SeqLM: FlashT5ForConditionalGeneration,
    AutoModelForSequenceClassification: FlashT5ForSequenceClassification,
    AutoModelForQuestionAnswering: FlashT5ForQuestionAnswering,
    AutoModelForTokenClassification: FlashT5ForTokenClassification,
    AutoModelForTextEncoding: FlashT5EncoderModel,
}

AutoConfig.register(FlashT5Config.model_type, FlashT5Config, exist_ok=True)
for _auto_class, _model_class in AUTO_CLASSES.items():
    _auto_class.register(FlashT5Config, _model_class, exist_ok=True)
register_legacy_checkpoint_conversion()
register_fat5_attention()

__all__ = [
    "AUTO_CLASSES",
    "DataCollatorWithPacking",
    "FlashT5Config",
    "FlashT5EncoderModel",
    "FlashT5ForConditionalGeneration",
    "FlashT5ForQuestionAnswering",
    "FlashT5ForSequenceClassification",
    "FlashT5ForTokenClassification",
    "FlashT5Model",
    "FlashT5PreTrainedModel",
    "kernelize",
]
