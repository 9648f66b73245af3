"""ComfyUI layer of LumiX: node classes, model patching and sampler glue (imports ComfyUI)."""
from .extension import comfy_entrypoint  # noqa: F401
