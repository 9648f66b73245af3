"""Input files for check_3d.mjs: a Blender-style multilayer EXR (ViewLayer.Depth.Z planar, ViewLayer.Normal.X/Y/Z
world space, camera XYZ Euler 75, 0, 0, horizontal fov 60) and an albedo stand-in, the scene of
scripts/docs_from_3d_picture.py, written into a ComfyUI's input folder.
    python scripts/ui_check/prepare_3d.py /path/to/ComfyUI
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import docs_from_3d_picture as scene  # noqa: E402


def main(comfyui: Path):
    import OpenEXR

    folder = comfyui / "input"
    folder.mkdir(exist_ok=True)
    z, normal, albedo = scene.passes()
    channels = {"ViewLayer.Depth.Z": z.astype(np.float32)}
    for k, axis in enumerate("XYZ"):
        channels[f"ViewLayer.Normal.{axis}"] = normal[..., k].astype(np.float32)
    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, channels) as f:
        f.write(str(folder / "render_passes.exr"))
    Image.fromarray(np.round(albedo * 255).astype(np.uint8)).save(folder / "albedo_standin.png")
    print("wrote", folder / "render_passes.exr", "and", folder / "albedo_standin.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
