"""Test-only ComfyUI nodes for the host tests' real ComfyUI server: a tiny FLUX, CLIP and VAE
standing in for the model files that cannot be downloaded. Never installed for users."""
import os
import sys

_HOST_TESTS = os.path.normpath(os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", ".."))
sys.path[:0] = [_HOST_TESTS]  # tests/host, where tiny_comfy lives

import tiny_comfy  # noqa: E402


class LumiXTestTinyFlux:
    CATEGORY = "LumiX/tests"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        return (tiny_comfy.tiny_flux(seed=1),)


class LumiXTestTinyCLIP(LumiXTestTinyFlux):
    RETURN_TYPES = ("CLIP",)

    def load(self):
        return (tiny_comfy.TinyCLIP(),)


class LumiXTestTinyVAE(LumiXTestTinyFlux):
    RETURN_TYPES = ("VAE",)

    def load(self):
        return (tiny_comfy.TinyVAE(),)


NODE_CLASS_MAPPINGS = {"LumiXTestTinyFlux": LumiXTestTinyFlux, "LumiXTestTinyCLIP": LumiXTestTinyCLIP,
                       "LumiXTestTinyVAE": LumiXTestTinyVAE}
