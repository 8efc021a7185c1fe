"""FAT5 stand-in for transformers' `tests/exporters/test_export.py` (not shipped in the transformers sdist).

Upstream, `ExportTesterMixin` holds the export tests (torch.export / ONNX / ExecuTorch / ...) that every model test
class inherits through `ModelTesterMixin`. FAT5 does not run them, so the stand-in is an empty base class.
"""


class ExportTesterMixin:
    """Empty stand-in: no export tests are collected from it."""
