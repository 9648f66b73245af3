"""ComfyUI entry point of the LumiX extension (ComfyUI loads this folder as a package).

Outside ComfyUI (host-free tests, scripts using lumix_core) the ComfyUI modules are missing; then
this package simply offers no nodes instead of failing to import.
"""
try:
    from .nodes import comfy_entrypoint  # noqa: F401
except ModuleNotFoundError as exc:  # only "ComfyUI is not here" is tolerated
    if (exc.name or "").split(".")[0] not in {"comfy", "comfy_api", "folder_paths", "latent_preview",
                                               "node_helpers", "comfy_execution", "server"}:
        raise

WEB_DIRECTORY = None
