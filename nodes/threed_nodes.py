"""Nodes between LumiX and 3D software: render passes in (depth and normals in LumiX's conventions), a
relightable mesh out (.glb in ComfyUI's output folder, shown by core's Preview 3D)."""
from __future__ import annotations

import errno
import logging
import os
import re
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

import folder_paths
from comfy_api.v0_0_2 import io, ui

from ..lumix_core import mesh as lm
from ..lumix_core import render_passes as rp
from ..lumix_core.conventions import decode_depth, decode_normals
from ..lumix_core.export import check_prefix
from ..lumix_core.finite_check import check_finite_settings
from ..lumix_core.given_maps import check_tool_map
from ..lumix_core.maps import DEFAULT_FOV_DEGREES, ENCODINGS
from ..lumix_core.metrics import geometric_residual
from . import categories

_LOG = logging.getLogger("LumiX")
NO_FILE = "(none)"
# Above this mean angle between the normal pass and the normals implied by the depth pass, the two passes
# (or the field of view) are probably read with the wrong convention.
DISAGREEMENT_DEGREES = 25.0
CHECK_SIDE = 128  # the agreement check runs on a copy at most this large (it is a hint, not a metric)


def input_pass_files() -> list[str]:
    """Files under ComfyUI's input folder that can hold a render pass (relative, '/'-separated)."""
    root = folder_paths.get_input_directory()
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if os.path.splitext(name)[1].lower() in rp.FILE_EXTENSIONS:
                found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return sorted(found)


def input_file_path(node: str, name: str) -> str:
    """The absolute path of `name` inside ComfyUI's input folder; anything else is refused (the message
    names only what the user typed)."""
    root = os.path.realpath(folder_paths.get_input_directory())
    path = os.path.realpath(os.path.join(root, name))
    if os.path.isabs(name) or os.path.commonpath([root, path]) != root:
        raise ValueError(f"{node}: {name!r} is not a file in ComfyUI's input folder; put the pass into input/ "
                         "and pick it from the list.")
    if not os.path.isfile(path):
        raise ValueError(f"{node}: {name!r} is not in ComfyUI's input folder (any more); refresh the list (R) and "
                         "pick it again.")
    return path


def _image_batch(node: str, label: str, image) -> np.ndarray:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] == 0 or min(image.shape[1:3]) < 1:
        raise ValueError(f"{node}: {label} is not an IMAGE batch [images, height, width, channels].")
    return image.detach().double().cpu().numpy()


class LumiXRenderPassesToMaps(io.ComfyNode):
    NODE = "LumiX Render Passes to Maps"

    @classmethod
    def define_schema(cls):
        files = [NO_FILE] + input_pass_files()
        return io.Schema(
            node_id="LumiXRenderPassesToMaps", display_name=cls.NODE, category=categories.THREED,
            is_output_node=True,
            description="Converts depth and normal passes rendered by 3D software (Blender, Houdini, Unreal, ...) "
                        "into LumiX's depth and normal maps, to hold in the LumiX sampler while albedo, irradiance "
                        "and color are generated. Reads float EXR and 16-bit PNG from ComfyUI's input folder at "
                        "full precision (core Load Image reads 8 bits), or IMAGE inputs.",
            inputs=[
                io.Combo.Input("depth_file", options=files, default=NO_FILE,
                               tooltip="A depth pass in ComfyUI's input folder (.exr, 16-bit .png, .tif). An EXR may "
                                       "hold several passes (e.g. Blender's ViewLayer.Depth.Z and ViewLayer.Normal.X/Y/Z): "
                                       "pick the same file for normal_file."),
                io.Combo.Input("normal_file", options=files, default=NO_FILE,
                               tooltip="A normal pass in ComfyUI's input folder (.exr, 16-bit .png, .tif)."),
                io.Combo.Input("depth_encoding", options=list(rp.DEPTH_ENCODINGS), default=rp.DEPTH_Z,
                               tooltip="What the depth pass holds: planar Z (distance from the camera plane; e.g. "
                                       "EEVEE's Z pass) or the distance along each pixel's ray (e.g. Cycles' Z "
                                       "pass), in scene units; or Z normalised between near and far (needs "
                                       "near/far). LumiX wants distance, so planar Z is converted with the field of "
                                       "view. A wrong choice shows as depth and normals disagreeing in the readout."),
                io.Combo.Input("depth_range", options=list(rp.DEPTH_RANGES), default=rp.RANGE_IMAGE,
                               tooltip="Which distances LumiX's 0 and 1 stand for: the image's nearest and farthest "
                                       "surface (LumiX's own convention), or near and far below (clamped). "
                                       "Background (no surface) becomes 1."),
                io.Float.Input("near", default=0.1, min=0.0, max=1e6, step=0.1,
                               tooltip="Scene units: where normalised Z is 0 (or 1 when near is bright), and "
                                       "LumiX's 0 with depth_range 'near..far'."),
                io.Float.Input("far", default=100.0, min=0.0, max=1e6, step=1.0,
                               tooltip="Scene units: where normalised Z is 1 (or 0 when near is bright), and "
                                       "LumiX's 1 with depth_range 'near..far'."),
                io.Combo.Input("normal_space", options=list(rp.NORMAL_SPACES), default=rp.NORMAL_WORLD,
                               tooltip="The normal pass's axes. Blender's Normal pass is world space (set the "
                                       "camera's rotation below); camera-space maps are OpenGL (+y up) or DirectX "
                                       "(+y down). LumiX: " + ENCODINGS["normal"] + "."),
                io.Combo.Input("normal_values", options=list(rp.NORMAL_VALUES), default=rp.VALUES_AUTO,
                               tooltip="Whether the pass stores the vectors themselves (-1..1, float EXR) or "
                                       "(n + 1) / 2 (PNG normal maps). auto: vectors from an EXR file; otherwise "
                                       "vectors if any value is negative, else (n + 1) / 2."),
                io.Float.Input("camera_rot_x", default=90.0, min=-360.0, max=360.0, step=1.0,
                               tooltip="World-space normals only: the camera's rotation X in degrees (XYZ Euler, "
                                       "as Blender's Rotation fields; the camera looks down its local -Z, +Y up)."),
                io.Float.Input("camera_rot_y", default=0.0, min=-360.0, max=360.0, step=1.0,
                               tooltip="World-space normals only: the camera's rotation Y in degrees."),
                io.Float.Input("camera_rot_z", default=0.0, min=-360.0, max=360.0, step=1.0,
                               tooltip="World-space normals only: the camera's rotation Z in degrees."),
                io.Float.Input("fov_degrees", default=DEFAULT_FOV_DEGREES, min=1.0, max=170.0, step=0.5,
                               tooltip="The render camera's horizontal field of view (Blender: Sensor Fit "
                                       "Horizontal, 2 atan(sensor width / (2 focal length))); converts planar Z to "
                                       "distance and checks the passes agree."),
                io.Image.Input("depth_image", optional=True,
                               tooltip="Instead of depth_file: a depth pass as IMAGE (its values as they are, "
                                       "mean of the RGB channels)."),
                io.Image.Input("normal_image", optional=True,
                               tooltip="Instead of normal_file: a normal pass as IMAGE (first three channels)."),
            ],
            outputs=[io.Image.Output("depth", display_name="depth",
                                     tooltip="LumiX depth: " + ENCODINGS["depth"] + ". Connect to the sampler's depth."),
                     io.Image.Output("normal", display_name="normal",
                                     tooltip="LumiX normals: " + ENCODINGS["normal"] + ". Connect to the sampler's "
                                             "normal.")],
        )

    @classmethod
    def _load(cls, file_name, image, what):
        """[(array, is_exr, label)] per image: from a file in input/, or from an IMAGE batch."""
        if file_name not in (None, NO_FILE) and image is not None:
            raise ValueError(f"{cls.NODE}: both {what}_file and {what}_image are set; use one of them (set "
                             f"{what}_file to {NO_FILE} to use the IMAGE input).")
        if image is not None:
            batch = _image_batch(cls.NODE, f"{what}_image", image)
            return [(frame, False, f"{what}_image {i + 1}") for i, frame in enumerate(batch)]
        if file_name in (None, NO_FILE):
            return []
        passes = rp.read_pass_file(input_file_path(cls.NODE, file_name), file_name)
        data = rp.depth_channel(passes)[..., None] if what == "depth" else rp.normal_channels(passes)
        return [(data, passes.is_exr, file_name)]

    @classmethod
    def execute(cls, depth_file, normal_file, depth_encoding, depth_range, near, far, normal_space, normal_values,
                camera_rot_x, camera_rot_y, camera_rot_z, fov_degrees, depth_image=None, normal_image=None) -> io.NodeOutput:
        check_finite_settings(cls.NODE, near=near, far=far, camera_rot_x=camera_rot_x, camera_rot_y=camera_rot_y,
                              camera_rot_z=camera_rot_z, fov_degrees=fov_degrees)
        depths = cls._load(depth_file, depth_image, "depth")
        normals = cls._load(normal_file, normal_image, "normal")
        if not depths and not normals:
            raise ValueError(f"{cls.NODE}: no pass given; pick a depth_file and/or normal_file from ComfyUI's input "
                             "folder, or connect depth_image / normal_image.")
        if depths and normals:
            if len(depths) != len(normals) or depths[0][0].shape[:2] != normals[0][0].shape[:2]:
                raise ValueError(f"{cls.NODE}: the depth ({len(depths)} x {depths[0][0].shape[1]}x{depths[0][0].shape[0]}) "
                                 f"and normal ({len(normals)} x {normals[0][0].shape[1]}x{normals[0][0].shape[0]}) "
                                 "passes differ in count or size (images x width x height); render both from the "
                                 "same camera at the same resolution.")
        lines, warnings, depth_out, normal_out, empty = [], [], [], [], []
        for data, is_exr, label in normals:  # first: where the normal pass is empty there is no surface
            result = rp.normals_to_lumix(data[..., :3], normal_space, normal_values, is_exr,
                                         (camera_rot_x, camera_rot_y, camera_rot_z))
            normal_out.append(result.image)
            empty.append(result.empty_mask if result.empty < result.empty_mask.size else None)
            lines.append(f"normal ({label}): read as {result.values}, {normal_space.split(' (')[0]}"
                         + (f"; {result.empty} pixels without a normal set to face the camera" if result.empty else ""))
            surface = result.image.shape[0] * result.image.shape[1] - result.empty
            if surface and result.away > 0.05 * surface:
                warnings.append(f"normal ({label}): {100 * result.away / surface:.0f}% of the normals point away from "
                                "the camera; check normal_space (world space needs the camera's rotation) and "
                                "normal_values.")
        for i, (data, _, label) in enumerate(depths):
            values = data[..., 0] if data.shape[-1] <= 2 else data[..., :3].mean(-1)  # grey (+alpha) or RGB(A)
            result = rp.depth_to_lumix(values, depth_encoding, fov_degrees, depth_range, near, far,
                                       no_surface=empty[i] if empty else None)
            depth_out.append(result.value)
            low, high = result.distance_range
            lines.insert(i, f"depth ({label}): distance {low:.4g}..{high:.4g} scene units -> 0..1"
                         + (f"; {result.background} background pixels (no surface) set to 1 (farthest)"
                            if result.background else ""))
        depth_t = torch.from_numpy(np.stack(depth_out)).float()[..., None].expand(-1, -1, -1, 3).contiguous() \
            if depth_out else None
        normal_t = torch.from_numpy(np.stack(normal_out)).float() if normal_out else None
        if depth_t is not None and normal_t is not None:
            for i in range(depth_t.shape[0]):
                angle = cls._agreement(depth_t[i], normal_t[i], fov_degrees)
                if not np.isfinite(angle):
                    lines.append("depth and normal agreement: not measurable (the depth is flat or all edges)")
                    continue
                lines.append(f"depth and normal agree to {angle:.1f} deg (mean angle to the normals implied by the depth)")
                if angle > DISAGREEMENT_DEGREES:
                    warnings.append(f"the normals differ from the depth's shape by {angle:.0f} deg on average: check "
                                    "normal_space, the camera rotation, depth_encoding and fov_degrees.")
        for warning in warnings:
            _LOG.warning("%s: %s", cls.NODE, warning)
        text = "\n".join([f"WARNING: {w}" for w in warnings] + lines)
        return io.NodeOutput(depth_t, normal_t, ui=ui.PreviewText(text))

    @staticmethod
    def _agreement(depth: torch.Tensor, normal: torch.Tensor, fov_degrees: float) -> float:
        return _small_geometric_residual(depth, normal, fov_degrees)["mean_degrees"]


def _small_geometric_residual(depth: torch.Tensor, normal: torch.Tensor, fov_degrees: float) -> dict:
    """The consistency metric's geometric residual (mean angle between the normal map and the normals
    implied by the depth, with the fitted depth offset) on a copy at most CHECK_SIDE pixels across."""
    h, w = depth.shape[:2]
    scale = min(1.0, CHECK_SIDE / max(h, w))
    if scale < 1.0:
        size = (max(3, round(h * scale)), max(3, round(w * scale)))
        depth, normal = (F.interpolate(t.permute(2, 0, 1)[None].float(), size=size, mode="area")[0].permute(1, 2, 0)
                         for t in (depth, normal))
    return geometric_residual(depth, normal, fov_degrees)


def write_new_output_file(prefix: str, extension: str, data: bytes, node: str) -> str:
    """`data` to output/<prefix>_NNNNN<extension>, the first free number, never over an existing file and
    never half-written (a temporary name, then a hard link to the final name). Returns the path relative to
    the output folder with '/' (what core's Preview 3D takes)."""
    check_prefix(prefix)
    output_dir = os.path.realpath(folder_paths.get_output_directory())
    base = os.path.realpath(os.path.join(output_dir, prefix))
    if os.path.commonpath([output_dir, base]) != output_dir or base == output_dir:
        raise ValueError(f"{node}: filename_prefix {prefix!r} leads outside ComfyUI's output folder.")
    folder, stem = os.path.split(base)
    os.makedirs(folder, exist_ok=True)
    pattern = re.compile(re.escape(stem) + r"_(\d+)" + re.escape(extension) + "$")
    handle, temporary = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part", dir=folder)
    os.close(handle)
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        while True:
            taken = [int(m.group(1)) for m in map(pattern.match, os.listdir(folder)) if m]
            final = os.path.join(folder, f"{stem}_{max(taken, default=0) + 1:05d}{extension}")
            try:
                os.link(temporary, final)  # fails rather than replace a file saved meanwhile
                break
            except FileExistsError:
                continue
            except OSError as exc:  # a file system without hard links
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV) or os.path.exists(final):
                    raise
                os.rename(temporary, final)
                break
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return os.path.relpath(final, output_dir).replace(os.sep, "/")


SCALE_FIT = "fit to the normals"
SCALE_NEAR_FAR = "near..far"
DEPTH_SCALES = [SCALE_FIT, SCALE_NEAR_FAR]


class LumiXDepthToMesh(io.ComfyNode):
    NODE = "LumiX Depth to Mesh"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LumiXDepthToMesh", display_name=cls.NODE, category=categories.THREED, is_output_node=True,
            description="Turns a depth map (with its normal map and albedo) into a relightable mesh: each pixel "
                        "back-projected through a pinhole camera with fov_degrees (as the consistency metrics), no "
                        "triangle across a depth discontinuity, the normal map as vertex normals, the albedo as "
                        "base-colour texture. Saved as .glb (binary glTF, with the camera) in ComfyUI's output "
                        "folder; connect model_file to core's Preview 3D.",
            inputs=[
                io.Image.Input("depth", tooltip="LumiX depth: " + ENCODINGS["depth"] + "."),
                io.Image.Input("normal", optional=True,
                               tooltip="LumiX normals (camera space, OpenGL): the mesh's vertex normals, and the "
                                       "shape the depth scale is fitted to."),
                io.Image.Input("albedo", optional=True,
                               tooltip="The base-colour texture (any size): albedo for a mesh you relight, or color "
                                       "for the photo's look. Without it the mesh is grey."),
                io.Float.Input("fov_degrees", default=DEFAULT_FOV_DEGREES, min=1.0, max=170.0, step=0.5,
                               tooltip="Horizontal field of view of the pinhole camera (also written into the .glb "
                                       "as its camera)."),
                io.Combo.Input("depth_scale", options=DEPTH_SCALES, default=SCALE_FIT,
                               tooltip="LumiX depth is relative (0 nearest, 1 farthest). 'fit': the distance offset "
                                       "that makes the depth's shape agree best with the normal map (the consistency "
                                       "metric's fit), nearest point at `near`; needs the normal map. 'near..far': "
                                       "0 is `near`, 1 is `far` (use the range LumiX Render Passes to Maps shows)."),
                io.Float.Input("near", default=1.0, min=1e-4, max=1e6, step=0.1,
                               tooltip="Distance of the nearest point (scene units)."),
                io.Float.Input("far", default=3.0, min=1e-4, max=1e6, step=0.1,
                               tooltip="Distance of the farthest point with depth_scale 'near..far'."),
                io.Float.Input("discontinuity", default=lm.DEFAULT_DISCONTINUITY, min=0.001, max=10.0, step=0.01,
                               tooltip="Neighbouring pixels whose distances differ by more than this fraction (0.05 = "
                                       "5%) are not joined: objects do not melt into the background."),
                io.Int.Input("max_side", default=512, min=0, max=8192,
                             tooltip="At most this many vertices across (0: one per pixel). The texture keeps its "
                                     "full size."),
                io.String.Input("filename_prefix", default="LumiX/mesh",
                                tooltip="output/<prefix>_00001.glb, _00002, ... (never overwritten)."),
            ],
            outputs=[io.String.Output("model_file", display_name="model_file",
                                      tooltip="The first scene's .glb, relative to the output folder: connect to "
                                              "core's Preview 3D (model_file).")],
        )

    @classmethod
    def execute(cls, depth, fov_degrees, depth_scale, near, far, discontinuity, max_side, filename_prefix,
                normal=None, albedo=None) -> io.NodeOutput:
        check_finite_settings(cls.NODE, fov_degrees=fov_degrees, near=near, far=far, discontinuity=discontinuity)
        if depth_scale not in DEPTH_SCALES:
            raise ValueError(f"{cls.NODE}: unknown depth_scale {depth_scale!r}; choose one of {DEPTH_SCALES}.")
        depth = check_tool_map(cls.NODE, "depth", depth)
        normal = check_tool_map(cls.NODE, "normal", normal) if normal is not None else None
        albedo = check_tool_map(cls.NODE, "albedo", albedo) if albedo is not None else None
        scenes = depth.shape[0]
        if normal is not None and normal.shape[:3] != depth.shape[:3]:
            raise ValueError(f"{cls.NODE}: the normal map ({normal.shape[0]} x {normal.shape[2]}x{normal.shape[1]}) "
                             f"differs from the depth ({scenes} x {depth.shape[2]}x{depth.shape[1]}) in count or size; "
                             "connect maps of the same scenes.")
        if albedo is not None and albedo.shape[0] != scenes:
            raise ValueError(f"{cls.NODE}: {albedo.shape[0]} albedo images for {scenes} depth maps; connect one per scene.")
        if depth_scale == SCALE_NEAR_FAR and not near < far:
            raise ValueError(f"{cls.NODE}: near ({near}) must be below far ({far}).")
        check_prefix(filename_prefix)
        lines, warnings, files = [], [], []
        for s in range(scenes):
            value = decode_depth(depth[s].double()).cpu().numpy()
            normals = decode_normals(normal[s].double()).cpu().numpy() if normal is not None else None
            scale_note = f"depth {near:g}..{far:g}"
            if depth_scale == SCALE_FIT and normal is not None:
                fit = _small_geometric_residual(depth[s], normal[s], fov_degrees)
                if np.isfinite(fit["offset"]):
                    distance = lm.offset_to_distance(value, fit["offset"], near)
                    scale_note = (f"depth fitted to the normals (offset {fit['offset']:.2f} x range, "
                                  f"{fit['mean_degrees']:.1f} deg residual): {distance.min():.3g}..{distance.max():.3g}")
                else:
                    distance = lm.relative_to_distance(value, near, max(far, near * 1.001))
                    warnings.append(f"scene {s + 1}: the depth is flat or broken, no scale could be fitted; used near..far.")
            else:
                if depth_scale == SCALE_FIT:
                    warnings.append(f"scene {s + 1}: no normal map to fit the depth scale to; used near ({near:g}) to "
                                    f"far ({far:g}). Connect the normal map, or set depth_scale to 'near..far'.")
                distance = lm.relative_to_distance(value, near, max(far, near * 1.001))
            mesh = lm.depth_to_mesh(distance, fov_degrees, normals, discontinuity, max_side)
            texture = lm.png_bytes(albedo[s].cpu().numpy()) if albedo is not None else None
            h, w = value.shape
            data = lm.mesh_glb(mesh, fov_degrees, (w, h), texture, name=f"LumiX scene {s + 1}", extras={"lumix": {
                "fov_degrees": float(fov_degrees), "fov_axis": "horizontal", "axes": "camera space, OpenGL (glTF)",
                "depth_scale": depth_scale, "distance_range": [float(distance.min()), float(distance.max())],
                "discontinuity": float(discontinuity)}})
            try:
                files.append(write_new_output_file(filename_prefix, ".glb", data, cls.NODE))
            except OSError as exc:
                raise OSError(exc.errno, f"{cls.NODE}: could not write scene {s + 1}'s mesh ({exc.strerror or exc}); "
                                         "nothing half-written is left. Free disk space and run again.") from exc
            lines.append(f"{_prefix(s, scenes)}{files[-1]}: {len(mesh.positions)} vertices, {len(mesh.indices)} "
                         f"triangles ({mesh.dropped} left out at discontinuities); {scale_note}"
                         + ("" if texture else "; no texture (connect albedo)"))
        for warning in warnings:
            _LOG.warning("%s: %s", cls.NODE, warning)
        text = "\n".join([f"WARNING: {w}" for w in warnings] + lines)
        return io.NodeOutput(files[0], ui=ui.PreviewText(text))


def _prefix(index: int, count: int) -> str:
    return f"scene {index + 1}: " if count > 1 else ""
