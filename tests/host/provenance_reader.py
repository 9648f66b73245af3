"""The extension's provenance reader and the training dataset reader, from the extension ComfyUI loaded."""
import importlib
import sys

from comfy_host import load_extension

load_extension()
_ROOT = next(name for name in sys.modules if name.endswith(".nodes.provenance"))[:-len(".nodes.provenance")]
generation_info = importlib.import_module(_ROOT + ".nodes.provenance").generation_info
scan_dataset = importlib.import_module(_ROOT + ".lumix_core.training.data").scan_dataset
