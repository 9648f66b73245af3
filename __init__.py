"""ComfyUI entry point of the LumiX extension (ComfyUI loads this folder as a package).

Outside ComfyUI (host-free tests, scripts using lumix_core) there is no comfy_api to import; and
pytest may import this file as a plain module (the checkout's folder name need not be a valid
package name). In both cases this file offers no nodes instead of failing to import.
"""
import importlib.util

if __package__ and importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint  # noqa: F401

# web/lumix_readout.js shows the text the nodes send to the UI (reports, warnings) inside them.
WEB_DIRECTORY = "./web"
