"""Nodes that make the maps useful after sampling: consistency metrics, relighting, display, export."""
from __future__ import annotations

import json
import logging
import os
from io import BytesIO

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import folder_paths
from comfy.cli_args import args as comfy_args
from comfy_api.v0_0_2 import io, ui

from ..lumix_core import MAP_NAMES, MAPS
from ..lumix_core.conventions import flip_normal_y
from ..lumix_core.display import COLORMAPS, apply_colormap, colorize_depth
from ..lumix_core.finite_check import check_finite_settings
from ..lumix_core.given_maps import check_tool_map
from ..lumix_core.export import (EXR_INSTALL_HINT, check_prefix, exr_available, linear_channels, saveable_map, scene_folder,
                                 to_uint16, write_bytes, write_exr, write_png16, write_sidecar)
from ..lumix_core.multilayer_exr import write_multilayer_exr
from ..lumix_core.sampling import scene_seed
from ..lumix_core.maps import DEFAULT_FOV_DEGREES, ENCODINGS
from ..lumix_core.metrics import consistency
from ..lumix_core.relight import light_direction, parse_hex_color, relight
from ..lumix_core.tool_readout import consistency_warnings, depth_readout, normal_readout, relight_readout
from . import categories
from .provenance import generation_info

_LOG = logging.getLogger("LumiX")
DEPTH_CONVENTIONS = ["far is bright (LumiX)", "near is bright"]
NEAR_ON_TOP, NEAR_AT_BOTTOM = "at the warm/bright end", "at the cool/dark end"
MULTILAYER_EXR = "layers.exr"
MULTILAYER_EXR_CONVENTION = ("layers.exr: albedo/irradiance/color.R/G/B linear RGB, depth.Z relative distance, "
                             "normal.X/Y/Z unit vector (camera space, OpenGL); float32; fov and depth range in "
                             "its header (lumix:*)")
# Heat-map scales: the value shown at the top of the colour map.
PHOTOMETRIC_TOP, GEOMETRIC_TOP_DEGREES = 0.25, 45.0


def _map_inputs():
    """One optional IMAGE socket per map, in the registry's order."""
    return [io.Image.Input(spec.name, optional=True, tooltip=f"{spec.name}: {spec.meaning}.") for spec in MAPS]


def _readout(node: str, lines: list[str], warnings: list[str]) -> ui.PreviewText:
    """The text a tool node shows in the UI: warnings first (also logged), then its numbers."""
    for warning in warnings:
        _LOG.warning("%s: %s", node, warning)
    return ui.PreviewText("\n".join([f"WARNING: {w}" for w in warnings] + lines))


def _checked(node: str, maps: dict) -> dict:
    """The connected maps as float RGB 0..1, or a clear error naming the map (lumix_core.given_maps rules:
    NaN/Inf, other ranges, channel counts and empty images refused; grey to RGB, alpha dropped)."""
    return {name: check_tool_map(node, name, image) for name, image in maps.items() if image is not None}


def _per_image(label: str, index: int, count: int) -> str:
    return f"{label} {index + 1}: " if count > 1 else ""


def _given_scenes(maps: dict) -> tuple[int, int, int]:
    """(scenes, height, width) shared by every given map batch, or a clear error."""
    if not maps:
        raise ValueError("LumiX: connect at least one map.")
    shapes = {name: tuple(t.shape[:3]) for name, t in maps.items()}
    if len(set(shapes.values())) != 1:
        listing = ", ".join(f"{n} {s[0]}x{s[2]}x{s[1]}" for n, s in shapes.items())
        raise ValueError(f"LumiX: the maps differ in batch or size ({listing}: images x width x height); connect "
                         "maps of the same scenes, straight from one LumiX Intrinsic Sampler.")
    return next(iter(shapes.values()))


class LumiXConsistency(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LumiXConsistency", display_name="LumiX Map Consistency", category=categories.TOOLS,
            # Tool nodes are output nodes: they run and show their readout with nothing connected, and
            # ComfyUI sends a cached output node's readout again (not a cached intermediate node's).
            is_output_node=True,
            description="Measures whether the maps of each scene agree and shows the numbers in the node, "
                        "with a warning where a map looks misaligned or a number out of range. Any map may be "
                        "missing; each check runs when its maps are there.",
            inputs=[*_map_inputs(),
                    io.Float.Input("fov_degrees", default=DEFAULT_FOV_DEGREES, min=10.0, max=150.0, step=1.0,
                                   tooltip="Horizontal field of view assumed to back-project depth (Hypersim-like 60)."),
                    io.Combo.Input("depth_convention", options=DEPTH_CONVENTIONS, default=DEPTH_CONVENTIONS[0],
                                   tooltip=f"How the depth image encodes distance. LumiX: {ENCODINGS['depth']}.")],
            outputs=[
                io.Image.Output("photometric_heatmap", display_name="photometric_heatmap",
                                tooltip="Per pixel |color - s*albedo*irradiance| in linear RGB, s the least-squares "
                                        f"global scale; top of the colour map = {PHOTOMETRIC_TOP}."),
                io.Image.Output("geometric_heatmap", display_name="geometric_heatmap",
                                tooltip="Per pixel angle between the normal map and normals derived from depth "
                                        f"(back-projected, depth offset fitted); top = {GEOMETRIC_TOP_DEGREES:g} deg; "
                                        "black where depth jumps."),
                io.Image.Output("structural_heatmap", display_name="structural_heatmap",
                                tooltip="Per pixel disagreement of edge strength (Sobel) between each map and color."),
                io.String.Output("report", display_name="report",
                                 tooltip="The three numbers per scene: photometric residual (lower is better), "
                                         "geometric residual in degrees (lower is better), structural alignment = "
                                         "mean edge correlation with color at zero offset (higher is better), "
                                         "with each map's best-matching pixel offset."),
            ],
        )

    @classmethod
    def execute(cls, fov_degrees, depth_convention, **maps) -> io.NodeOutput:
        check_finite_settings("LumiX Map Consistency", fov_degrees=fov_degrees)
        maps = _checked("LumiX Map Consistency", maps)
        scenes, height, width = _given_scenes(maps)
        heat = {key: [] for key in ("photometric", "geometric", "structural")}
        lines, warnings = [], []
        for s in range(scenes):
            report = consistency({name: image[s] for name, image in maps.items()}, fov_degrees,
                                 near_is_bright=depth_convention == DEPTH_CONVENTIONS[1])
            if scenes > 1:
                lines.append(f"scene {s + 1}:")
            lines.append(report.text())
            warnings += [_per_image("scene", s, scenes) + w for w in consistency_warnings(report)]
            for key, top in (("photometric", PHOTOMETRIC_TOP), ("geometric", GEOMETRIC_TOP_DEGREES), ("structural", 1.0)):
                result = getattr(report, key)
                values = result["map"] / top if result is not None else torch.zeros(height, width, dtype=torch.float64)
                heat[key].append(apply_colormap(values, "inferno").float())
        text = "\n".join(lines)
        outputs = [torch.stack(heat[key]) for key in ("photometric", "geometric", "structural")]
        # The report output carries the numbers only; the node also shows what looks wrong, first.
        return io.NodeOutput(*outputs, text, ui=_readout("LumiX Map Consistency", lines, warnings))


class LumiXRelight(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LumiXRelight", display_name="LumiX Relight", category=categories.TOOLS,
            is_output_node=True,
            description="Lambertian preview from albedo and normals under a directional light: a quick check "
                        "that geometry and materials hold together.",
            inputs=[
                io.Image.Input("albedo", tooltip="albedo map (sRGB)."),
                io.Image.Input("normal", tooltip="normal map (camera space, OpenGL axes)."),
                io.Float.Input("azimuth", default=45.0, min=-360.0, max=360.0, step=1.0,
                               tooltip="Light direction within the image plane: 0 = from the right, 90 = from above."),
                io.Float.Input("elevation", default=45.0, min=-90.0, max=90.0, step=1.0,
                               tooltip="Angle of the light out of the image plane towards the viewer: 90 = from the camera."),
                io.String.Input("light_color", default="#ffffff", tooltip="Light colour as hex, e.g. #ffe8c0."),
                io.Float.Input("intensity", default=1.0, min=0.0, max=20.0, step=0.05, tooltip="Directional light strength."),
                io.Float.Input("ambient", default=0.15, min=0.0, max=5.0, step=0.01,
                               tooltip="Ambient light: times the generated irradiance where connected, else white."),
                io.Image.Input("irradiance", optional=True, tooltip="Optional irradiance map, used for the ambient term."),
            ],
            outputs=[io.Image.Output("relit", display_name="image",
                                     tooltip="The albedo lit by the light set here (sRGB).")],
        )

    @classmethod
    def execute(cls, albedo, normal, azimuth, elevation, light_color, intensity, ambient, irradiance=None) -> io.NodeOutput:
        check_finite_settings("LumiX Relight", azimuth=azimuth, elevation=elevation, intensity=intensity,
                              ambient=ambient)
        given = _checked("LumiX Relight", {"albedo": albedo, "normal": normal, "irradiance": irradiance})
        albedo, normal, irradiance = given["albedo"], given["normal"], given.get("irradiance")
        _given_scenes(given)
        try:
            rgb = parse_hex_color(light_color)
        except ValueError as exc:
            raise ValueError(f"LumiX Relight: {exc}") from None
        out = relight(albedo, normal, azimuth, elevation, rgb, intensity, ambient, irradiance).float()
        direction = light_direction(azimuth, elevation)
        # short lines: the node shows them in a small box (direction in camera space, +z towards the viewer)
        lines = [f"light from ({direction[0]:+.2f}, {direction[1]:+.2f}, {direction[2]:+.2f}), colour "
                 f"({rgb[0]:.2f}, {rgb[1]:.2f}, {rgb[2]:.2f}) x {intensity:g}, "
                 f"ambient {ambient:g} x {'irradiance' if irradiance is not None else 'white'}"]
        warnings = []
        for i in range(out.shape[0]):
            stats, light_warnings = relight_readout(normal[i], direction, out[i])
            _, normal_warnings = normal_readout(normal[i])
            prefix = _per_image("image", i, out.shape[0])
            lines.append(f"{prefix}light reaches {100 * stats['lit']:.0f}% of pixels; "
                         f"{100 * stats['clipped']:.1f}% clipped at white")
            warnings += [prefix + w for w in normal_warnings + light_warnings]
        return io.NodeOutput(out, ui=_readout("LumiX Relight", lines, warnings))


class LumiXDepthColormap(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LumiXDepthColormap", display_name="LumiX Depth Colormap", category=categories.TOOLS,
            is_output_node=True,
            description="Shows a depth map in colour, normalised per image.",
            inputs=[io.Image.Input("depth", tooltip="A depth map, e.g. the sampler's depth output."),
                    io.Combo.Input("colormap", options=list(COLORMAPS), default="turbo",
                                   tooltip="The colour scale the depth is shown with."),
                    # Second widget, where the former near_is_high toggle was (same values, same meaning), so
                    # saved UI workflows, whose widget values are positional, load unchanged.
                    io.Boolean.Input("near_points", default=True, label_on=NEAR_ON_TOP, label_off=NEAR_AT_BOTTOM,
                                     tooltip="Where the nearest points land on the colour map: the warm/bright top "
                                             "(turbo red, inferno yellow, gray white) or the cool/dark bottom."),
                    io.Combo.Input("depth_convention", options=DEPTH_CONVENTIONS, default=DEPTH_CONVENTIONS[0],
                                   tooltip="How the depth image you connect encodes distance (not how it is shown). "
                                           f"LumiX depth: {ENCODINGS['depth']}.")],
            outputs=[io.Image.Output("colored", display_name="image",
                                     tooltip="The depth in colour, stretched to the full scale per image.")],
        )

    @classmethod
    def execute(cls, depth, colormap, near_points, depth_convention) -> io.NodeOutput:
        depth = check_tool_map("LumiX Depth Colormap", "depth", depth)
        input_near_is_bright = depth_convention == DEPTH_CONVENTIONS[1]
        out = colorize_depth(depth.double(), colormap, input_near_is_bright, near_points)
        end = "top (warm/bright)" if near_points else "bottom (cool/dark)"
        lines, warnings = [f"near points at the {end} end of {colormap}, range stretched per image"], []
        for i in range(depth.shape[0]):
            line, flat = depth_readout(depth[i], input_near_is_bright)
            prefix = _per_image("image", i, depth.shape[0])
            lines.append(prefix + line)
            warnings += [prefix + w for w in flat]
        return io.NodeOutput(out.float(), ui=_readout("LumiX Depth Colormap", lines, warnings))


class LumiXNormalFlip(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LumiXNormalFlip", display_name="LumiX Normal OpenGL <-> DirectX", category=categories.TOOLS,
            is_output_node=True,
            description="Flips the green (y) axis of a normal map: LumiX writes OpenGL normals (+y up); "
                        "DirectX renderers (Unreal, 3ds Max) expect +y down.",
            inputs=[io.Image.Input("normal", tooltip="A normal map (LumiX's normal output is OpenGL).")],
            outputs=[io.Image.Output("flipped", display_name="normal",
                                     tooltip="The same normals with the green (y) axis flipped.")],
        )

    @classmethod
    def execute(cls, normal) -> io.NodeOutput:
        normal = check_tool_map("LumiX Normal Flip", "normal", normal)
        flipped = flip_normal_y(normal)
        lines, warnings = [], []
        for i in range(normal.shape[0]):
            before, not_normals = normal_readout(normal[i])
            after, _ = normal_readout(flipped[i])
            prefix = _per_image("image", i, normal.shape[0])
            lines.append(f"{prefix}mean y {before['mean_y']:+.3f} -> {after['mean_y']:+.3f}; "
                         f"{100 * before['facing']:.0f}% of pixels face the camera")
            warnings += [prefix + w for w in not_normals]
        return io.NodeOutput(flipped, ui=_readout("LumiX Normal Flip", lines, warnings))


class LumiXSaveMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LumiXSaveMaps", display_name="LumiX Save Maps", category=categories.TOOLS, is_output_node=True,
            description="Saves each scene's maps into its own new folder under ComfyUI's output: 8-bit PNGs, "
                        "16-bit PNG depth and normals, float32 EXR of every map (with the optional openexr "
                        "package) and lumix.json (prompt, seed, conventions, metrics). Nothing is overwritten.",
            inputs=[*_map_inputs(),
                    io.String.Input("filename_prefix", default="LumiX/scene",
                                    tooltip="Folder name under output/; each scene gets <prefix>_00001, _00002, ..."),
                    io.Float.Input("fov_degrees", default=DEFAULT_FOV_DEGREES, min=10.0, max=150.0, step=1.0,
                                   tooltip="Field of view for the geometric metric in the sidecar."),
                    io.Boolean.Input("multilayer_exr", default=False, optional=True,
                                     tooltip="Also write layers.exr: every map of the scene in one float32 EXR for "
                                             "Blender/Nuke (albedo/irradiance/color.R/G/B linear, depth.Z, "
                                             "normal.X/Y/Z), conventions, field of view and depth range in its "
                                             "header. Needs the optional openexr package.")],
            outputs=[],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo, io.Hidden.unique_id],
        )

    @classmethod
    def _png_metadata(cls):
        if comfy_args.disable_metadata or cls.hidden is None:
            return None
        metadata = PngInfo()
        if cls.hidden.prompt:
            metadata.add_text("prompt", json.dumps(cls.hidden.prompt))
        for key, value in (cls.hidden.extra_pnginfo or {}).items():
            metadata.add_text(key, json.dumps(value))
        return metadata

    @classmethod
    def execute(cls, filename_prefix, fov_degrees, multilayer_exr=False, **maps) -> io.NodeOutput:
        check_finite_settings("LumiX Save Maps", fov_degrees=fov_degrees)
        maps = {k: v for k, v in maps.items() if v is not None}
        scenes, _, _ = _given_scenes(maps)
        # every map checked and converted before any folder exists: odd inputs leave nothing behind
        prepared = {name: saveable_map(name, maps[name]) for name in MAP_NAMES if name in maps}
        images = {name: rgb for name, (rgb, _) in prepared.items()}
        check_prefix(filename_prefix)
        output_dir = os.path.realpath(folder_paths.get_output_directory())
        target = os.path.realpath(os.path.join(output_dir, filename_prefix))
        if os.path.commonpath([output_dir, target]) != output_dir:
            raise ValueError(f"LumiX Save Maps: filename_prefix {filename_prefix!r} leads outside ComfyUI's output folder.")
        with_exr = exr_available()
        if not with_exr:
            _LOG.warning("LumiX Save Maps: %s", EXR_INSTALL_HINT)
        info = generation_info(cls.hidden.prompt if cls.hidden else None, cls.hidden.unique_id if cls.hidden else None)
        metadata = cls._png_metadata()
        previews, saved, notes = [], [], []
        for s in range(scenes):
            non_finite = {name: bad[s] for name, (_, bad) in prepared.items()}
            scene_info = dict(info)
            if isinstance(scene_info.get("seed"), int):
                scene_info["seed"] = scene_seed(scene_info["seed"], s)  # scene s of a LumiX run
            try:
                with scene_folder(output_dir, filename_prefix) as scene:
                    files = cls._write_maps(scene.temporary, {n: image[s] for n, image in images.items()},
                                            metadata, with_exr)
                    if multilayer_exr and with_exr:
                        write_multilayer_exr(os.path.join(scene.temporary, MULTILAYER_EXR),
                                             {n: image[s] for n, image in images.items()}, fov_degrees)
                        files.append(MULTILAYER_EXR)
                    report = consistency({n: image[s] for n, image in images.items()}, fov_degrees)
                    write_sidecar(os.path.join(scene.temporary, "lumix.json"), {
                        "format": "lumix-maps", "format_version": 1, "scene_index": s, "generation": scene_info,
                        "files": files, "exr": with_exr if with_exr else EXR_INSTALL_HINT,
                        "non_finite_pixels": non_finite,
                        "conventions": {"maps": {m.name: m.encoding for m in MAPS if m.name in maps},
                                        "encodings": ENCODINGS,
                                        "exr": "albedo/irradiance/color linear RGB; depth Y = relative distance; "
                                               "normal RGB = unit vector (-1..1)",
                                        **({"multilayer_exr": MULTILAYER_EXR_CONVENTION}
                                           if multilayer_exr and with_exr else {}),
                                        "png16": "depth: grey = mean of the RGB channels; normal: RGB as the 8-bit "
                                                 "map, 16 bits",
                                        "non_finite": "NaN and -Inf written as 0, +Inf as 1"},
                        "metrics": report.numbers(), "metrics_text": report.text(),
                    })
            except OSError as exc:
                raise OSError(exc.errno, f"LumiX Save Maps: could not write scene {s + 1} of {scenes} "
                                         f"({exc.strerror or exc}); its folder was removed, nothing half-written "
                                         f"is left. Scenes saved before it: {', '.join(saved) or 'none'}. Free "
                                         "disk space (or fix the output folder's permissions) and run again.") from exc
            subfolder = os.path.relpath(scene.path, output_dir)
            saved.append(subfolder)
            previews += [ui.SavedResult(f"{name}.png", subfolder, io.FolderType.output) for name in images]
            bad = {n: c for n, c in non_finite.items() if c}
            if bad:
                notes.append(f"WARNING scene {s + 1} ({subfolder}): non-finite pixels (NaN/Inf) in "
                             + ", ".join(f"{n}: {c}" for n, c in bad.items())
                             + "; written as 0 (NaN, -Inf) or 1 (+Inf). Something before Save Maps produced "
                               "them: check the model, the checkpoint and the given maps.")
                _LOG.warning("LumiX Save Maps: %s", notes[-1])
        ui_out = ui.SavedImages(previews).as_dict()
        if not with_exr:
            notes.append(EXR_INSTALL_HINT)
        if notes:
            ui_out.update(ui.PreviewText("\n".join(notes)).as_dict())
        return io.NodeOutput(ui=ui_out)

    @classmethod
    def _write_maps(cls, folder, scene_maps, metadata, with_exr) -> list[str]:
        """One scene's files (each through a temporary name); returns their names."""
        files = []
        for name, image in scene_maps.items():
            pixels = np.clip(255.0 * image.cpu().numpy(), 0, 255).round().astype(np.uint8)
            buffer = BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=metadata, compress_level=4)
            write_bytes(os.path.join(folder, f"{name}.png"), buffer.getvalue())
            files.append(f"{name}.png")
            if name == "depth":
                write_png16(os.path.join(folder, "depth_16bit.png"), to_uint16(image.mean(-1).cpu().double().numpy()))
                files.append("depth_16bit.png")
            if name == "normal":
                write_png16(os.path.join(folder, "normal_16bit.png"), to_uint16(image.cpu().double().numpy()))
                files.append("normal_16bit.png")
            if with_exr:
                write_exr(os.path.join(folder, f"{name}.exr"), linear_channels(name, image))
                files.append(f"{name}.exr")
        return files
