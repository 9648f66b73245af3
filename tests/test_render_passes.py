"""Render passes -> LumiX maps: an analytic sphere and plane (tests/render_pass_scene.py, float64) rendered
in every input convention give the LumiX maps computed directly in the test.

Tolerances: 1e-9 for float64 arrays, 2e-6 through a float32 EXR, 1e-4 through a 16-bit PNG (one step of
1/65535 in the pass, spread by normalisation)."""
import numpy as np
import pytest

from lumix_core import render_passes as rp
from render_pass_scene import FOV, blender_rotation, lumix_depth, lumix_normal, render

NEAR, FAR = 2.0, 12.0


@pytest.fixture(scope="module")
def sc():
    return render()


def z_normalised(Z):
    return (Z - NEAR) / (FAR - NEAR)


DEPTH_CASES = {
    rp.DEPTH_Z: lambda s: s["Z"],
    rp.DEPTH_DISTANCE: lambda s: s["D"],
    rp.DEPTH_Z_NORMALISED: lambda s: z_normalised(s["Z"]),
    rp.DEPTH_Z_NORMALISED_NEAR_BRIGHT: lambda s: 1 - z_normalised(s["Z"]),
    rp.DEPTH_LUMIX: lambda s: lumix_depth(s["D"]),
}


@pytest.mark.parametrize("encoding", list(DEPTH_CASES))
def test_every_depth_encoding_gives_lumix_relative_distance(sc, encoding):
    out = rp.depth_to_lumix(DEPTH_CASES[encoding](sc), encoding, FOV, rp.RANGE_IMAGE, NEAR, FAR)
    assert np.abs(out.value - lumix_depth(sc["D"])).max() < 1e-9
    if encoding != rp.DEPTH_LUMIX:
        assert out.distance_range == pytest.approx((sc["D"].min(), sc["D"].max()), rel=1e-9)
    assert out.background == 0


def test_planar_z_is_not_distance(sc):
    """Reading a Z pass as distance (or the other way round) is wrong away from the centre: the test
    above would fail for a swapped conversion."""
    wrong = rp.depth_to_lumix(sc["Z"], rp.DEPTH_DISTANCE, FOV).value
    assert np.abs(wrong - lumix_depth(sc["D"])).max() > 0.02


def test_near_far_range_and_background(sc):
    Z = np.where(render(sky_rows=5)["sky"], 1e10, sc["Z"])  # Blender's background depth
    out = rp.depth_to_lumix(Z, rp.DEPTH_Z, FOV, rp.RANGE_NEAR_FAR, NEAR, FAR)
    sky = render(sky_rows=5)["sky"]
    want = np.where(sky, 1.0, np.clip((sc["D"] - NEAR) / (FAR - NEAR), 0, 1))
    assert np.abs(out.value - want).max() < 1e-9 and out.background == sky.sum() and out.distance_range == (NEAR, FAR)
    image_range = rp.depth_to_lumix(Z, rp.DEPTH_Z, FOV).value  # the image's own range ignores the sky
    assert np.abs(image_range - lumix_depth(np.where(sky, 0, sc["D"]), sky)).max() < 1e-9


def test_depth_errors(sc):
    with pytest.raises(ValueError, match="0 < near < far"):
        rp.depth_to_lumix(z_normalised(sc["Z"]), rp.DEPTH_Z_NORMALISED, FOV, rp.RANGE_IMAGE, 5.0, 1.0)
    with pytest.raises(ValueError, match="no surface"):
        rp.depth_to_lumix(np.full((4, 4), 1e10), rp.DEPTH_Z, FOV)
    with pytest.raises(ValueError, match="unknown depth encoding"):
        rp.depth_to_lumix(sc["Z"], "inverse depth", FOV)
    with pytest.raises(ValueError, match="one channel"):
        rp.depth_to_lumix(np.zeros((4, 4, 3)), rp.DEPTH_Z, FOV)


ROTATION = (72.0, -8.0, 35.0)


def world(N):
    return N @ blender_rotation(*ROTATION).T  # n_world = R n_camera


NORMAL_CASES = {
    "opengl raw": (rp.NORMAL_CAMERA_OPENGL, rp.VALUES_RAW, lambda N: N),
    "opengl encoded": (rp.NORMAL_CAMERA_OPENGL, rp.VALUES_ENCODED, lambda N: (N + 1) / 2),
    "directx raw": (rp.NORMAL_CAMERA_DIRECTX, rp.VALUES_RAW, lambda N: N * [1, -1, 1]),
    "directx encoded": (rp.NORMAL_CAMERA_DIRECTX, rp.VALUES_ENCODED, lambda N: (N * [1, -1, 1] + 1) / 2),
    "world raw": (rp.NORMAL_WORLD, rp.VALUES_RAW, world),
    "world encoded": (rp.NORMAL_WORLD, rp.VALUES_ENCODED, lambda N: (world(N) + 1) / 2),
    "opengl auto (negative values)": (rp.NORMAL_CAMERA_OPENGL, rp.VALUES_AUTO, lambda N: N),
    "opengl auto (0..1)": (rp.NORMAL_CAMERA_OPENGL, rp.VALUES_AUTO, lambda N: (N + 1) / 2),
}


@pytest.mark.parametrize("case", list(NORMAL_CASES))
def test_every_normal_convention_gives_lumix_normals(sc, case):
    space, values, make = NORMAL_CASES[case]
    out = rp.normals_to_lumix(make(sc["N"]), space, values, camera_rotation_xyz=ROTATION)
    assert np.abs(out.image - lumix_normal(sc["N"])).max() < 1e-9
    assert out.empty == 0 and out.away == 0


def test_blender_camera_rotation_convention():
    """A Blender camera at rotation (90, 0, 0) looks along world +Y with world +Z up: a wall facing it
    (world normal -Y) faces the camera, the floor (world +Z) points up in the image."""
    out = rp.normals_to_lumix(np.array([[[0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]]), rp.NORMAL_WORLD, rp.VALUES_RAW,
                              camera_rotation_xyz=(90.0, 0.0, 0.0))
    assert np.abs(out.image[0, 0] - [0.5, 0.5, 1.0]).max() < 1e-12
    assert np.abs(out.image[0, 1] - [0.5, 1.0, 0.5]).max() < 1e-12


def test_wrong_convention_is_visible(sc):
    """DirectX normals read as OpenGL give other maps (so the round-trip tests above can fail), and
    normals pointing away from the camera are counted for the node's warning."""
    out = rp.normals_to_lumix(sc["N"] * [1, -1, 1], rp.NORMAL_CAMERA_OPENGL, rp.VALUES_RAW)
    assert np.abs(out.image - lumix_normal(sc["N"])).max() > 0.3
    backwards = rp.normals_to_lumix(-sc["N"], rp.NORMAL_CAMERA_OPENGL, rp.VALUES_RAW)
    assert backwards.away == sc["N"].shape[0] * sc["N"].shape[1]


def test_background_normals_and_errors(sc):
    N = sc["N"].copy()
    N[:3] = 0.0  # Blender's normal pass where nothing was hit
    out = rp.normals_to_lumix(N, rp.NORMAL_CAMERA_OPENGL, rp.VALUES_RAW)
    assert out.empty == 3 * N.shape[1] and np.array_equal(out.image[0, 0], [0.5, 0.5, 1.0])
    encoded_black = rp.normals_to_lumix(np.where(N == 0, 0, (N + 1) / 2), rp.NORMAL_CAMERA_OPENGL, rp.VALUES_ENCODED)
    assert encoded_black.empty == 3 * N.shape[1]
    with pytest.raises(ValueError, match="must lie in 0..1"):
        rp.normals_to_lumix(sc["N"], rp.NORMAL_CAMERA_OPENGL, rp.VALUES_ENCODED)
    with pytest.raises(ValueError, match="NaN/Inf"):
        rp.normals_to_lumix(np.full((2, 2, 3), np.nan), rp.NORMAL_CAMERA_OPENGL)
    with pytest.raises(ValueError, match="three channels"):
        rp.normals_to_lumix(np.zeros((2, 2)), rp.NORMAL_CAMERA_OPENGL)


# ---- files at full precision ---------------------------------------------------------------------

def test_blender_multilayer_exr_round_trip(sc, tmp_path):
    OpenEXR = pytest.importorskip("OpenEXR", reason="the optional openexr package is not installed")
    channels = {"ViewLayer.Depth.Z": sc["Z"].astype(np.float32),
                "ViewLayer.Combined.R": np.zeros_like(sc["Z"], dtype=np.float32)}
    for k, axis in enumerate("XYZ"):
        channels[f"ViewLayer.Normal.{axis}"] = world(sc["N"])[..., k].astype(np.float32)
    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, channels) as f:
        f.write(str(tmp_path / "passes.exr"))
    passes = rp.read_pass_file(str(tmp_path / "passes.exr"), "passes.exr")
    assert passes.is_exr
    depth = rp.depth_to_lumix(rp.depth_channel(passes), rp.DEPTH_Z, FOV)
    normal = rp.normals_to_lumix(rp.normal_channels(passes), rp.NORMAL_WORLD, rp.VALUES_AUTO, passes.is_exr, ROTATION)
    assert normal.values == rp.VALUES_RAW
    assert np.abs(depth.value - lumix_depth(sc["D"])).max() < 2e-6
    assert np.abs(normal.image - lumix_normal(sc["N"])).max() < 2e-6
    # full float precision, not 8 bits: the error is far below one 8-bit step
    assert np.abs(depth.value - lumix_depth(sc["D"])).max() < 0.01 / 255


def write_png16(path, array):
    import png
    h, w = array.shape[:2]
    planes = 1 if array.ndim == 2 else array.shape[2]
    pixels = np.round(np.clip(array, 0, 1) * 65535).astype(np.uint16)
    png.Writer(w, h, greyscale=planes == 1, bitdepth=16).write(open(path, "wb"), pixels.reshape(h, -1).tolist())


def test_16bit_png_round_trip(sc, tmp_path):
    write_png16(tmp_path / "depth.png", 1 - z_normalised(sc["Z"]))
    write_png16(tmp_path / "normal.png", (sc["N"] * [1, -1, 1] + 1) / 2)
    depth_file = rp.read_pass_file(str(tmp_path / "depth.png"), "depth.png")
    normal_file = rp.read_pass_file(str(tmp_path / "normal.png"), "normal.png")
    assert set(depth_file.channels) == {"Y"} and set(normal_file.channels) == {"R", "G", "B"}
    depth = rp.depth_to_lumix(rp.depth_channel(depth_file), rp.DEPTH_Z_NORMALISED_NEAR_BRIGHT, FOV, near=NEAR, far=FAR)
    normal = rp.normals_to_lumix(rp.normal_channels(normal_file), rp.NORMAL_CAMERA_DIRECTX)
    assert normal.values == rp.VALUES_ENCODED
    assert np.abs(depth.value - lumix_depth(sc["D"])).max() < 1e-4
    assert np.abs(normal.image - lumix_normal(sc["N"])).max() < 1e-4
    # an 8-bit copy of the same pass is measurably coarser: the reader really kept 16 bits
    from PIL import Image
    Image.fromarray(np.round(255 * (1 - z_normalised(sc["Z"]))).astype(np.uint8)).save(tmp_path / "depth8.png")
    coarse = rp.depth_to_lumix(rp.depth_channel(rp.read_pass_file(str(tmp_path / "depth8.png"), "d8")),
                               rp.DEPTH_Z_NORMALISED_NEAR_BRIGHT, FOV, near=NEAR, far=FAR)
    assert np.abs(coarse.value - lumix_depth(sc["D"])).max() > 5e-4


def test_unreadable_files_are_refused_without_paths(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="^broken.png could not be read as a PNG") as info:
        rp.read_pass_file(str(tmp_path / "broken.png"), "broken.png")
    assert str(tmp_path) not in str(info.value)
    with pytest.raises(ValueError, match="unsupported file type"):
        rp.read_pass_file(str(tmp_path / "x.jpg"), "x.jpg")
    channels = rp.PassFile({"foo.A": np.zeros((2, 2)), "bar.A": np.zeros((2, 2))}, True, "odd.exr")
    with pytest.raises(ValueError, match="no depth channel"):
        rp.depth_channel(channels)
    with pytest.raises(ValueError, match="no normal channels"):
        rp.normal_channels(channels)


def test_pixels_without_a_normal_are_background_for_depth(sc):
    """Some renderers write the far clip distance (not 1e10) where nothing was hit: the empty normal pass
    marks those pixels, so they do not stretch the depth range."""
    sky = render(sky_rows=4)["sky"]
    Z = np.where(sky, 100.0, sc["Z"])  # EEVEE-like: the clip end
    N = np.where(sky[..., None], 0.0, sc["N"])
    normal = rp.normals_to_lumix(N, rp.NORMAL_CAMERA_OPENGL, rp.VALUES_RAW)
    assert np.array_equal(normal.empty_mask, sky)
    depth = rp.depth_to_lumix(Z, rp.DEPTH_Z, FOV, no_surface=normal.empty_mask)
    assert np.abs(depth.value - lumix_depth(np.where(sky, 0, sc["D"]), sky)).max() < 1e-9
    assert depth.background == sky.sum()
    stretched = rp.depth_to_lumix(Z, rp.DEPTH_Z, FOV).value  # without the mask the sky is the farthest surface
    assert stretched[~sky].max() < 0.2
    with pytest.raises(ValueError, match="does not match"):
        rp.depth_to_lumix(Z, rp.DEPTH_Z, FOV, no_surface=sky[:2])
