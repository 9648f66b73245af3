"""The adapters inside ComfyUI's memory manager, and the loader cache's memory (one copy, nothing
of a refused file, replaced files noticed), on the tiny FLUX inside a real ComfyUI."""
import gc
import os
import shutil
import weakref

import pytest
import torch
from safetensors.torch import save_file

from comfy_host import DOUBLE, HIDDEN, SINGLE, extension_module, folder_paths, load_extension, model_inputs, run_model, tiny_flux
from tiny_flux import official_state_dict

import comfy.model_management as model_management

NODES = load_extension()
Loader = NODES["LumiXTensorLoRALoader"]
M, R = 5, 4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lumix_memory")
    save_file(official_state_dict(hidden=HIDDEN, R=R, double=DOUBLE, single=SINGLE, scale=0.5),
              str(folder / "mem_lumix.safetensors"))
    save_file(official_state_dict(hidden=2 * HIDDEN, R=R, double=DOUBLE, single=SINGLE),
              str(folder / "mem_wide.safetensors"))
    folder_paths.add_model_folder_path("lumix", str(folder))
    return folder


def load(model, name="mem_lumix.safetensors", strength=1.0, adapter_dtype="auto"):
    return Loader.execute(model, name, strength, True, adapter_dtype).result[0]


def planned_size(patcher):
    """What load_models_gpu plans for this model: itself plus the models its patches report."""
    return patcher.model_size() + sum(m.model_size() for m in set(patcher.model_patches_models()))


def expected_adapter_bytes(itemsize):
    """Factors plus the merged weight and G3 each adapter caches, from the shapes alone."""
    total = 0
    for _ in range(DOUBLE + SINGLE):
        for d_out in (2 * HIDDEN, HIDDEN):
            factors = M * M * R + M * HIDDEN * R * R + M * d_out * R
            cached = M * HIDDEN * M * R + M * R * d_out
            total += (factors + cached) * itemsize
    return total


def cache():
    return extension_module().nodes.model_nodes._CACHE


def adapter_model(patched):
    return extension_module().nodes.patch.lumix_settings(patched).adapter_model


@pytest.mark.parametrize("dtype,itemsize", [("float32", 4), ("bfloat16", 2)])
def test_patched_model_size_grows_by_the_adapters_bytes(folder, dtype, itemsize):
    base = tiny_flux(seed=1)
    patched = load(base, adapter_dtype=dtype)
    assert planned_size(patched) - planned_size(base) == expected_adapter_bytes(itemsize)
    assert len(set(patched.model_patches_models())) == 1
    assert all(p.dtype == getattr(torch, dtype) for p in adapter_model(patched).model.parameters())
    # strength 0 skips the adapters: nothing to load for them
    assert planned_size(load(base, strength=0.0, adapter_dtype=dtype)) == planned_size(base)


def test_memory_manager_loads_and_offloads_the_adapters(folder, monkeypatch):
    base = tiny_flux(seed=2)
    weights_before = {k: v.clone() for k, v in base.model.state_dict().items()}
    patched = load(base)
    adapters = adapter_model(patched)
    moves = []
    real_to = torch.nn.Module.to

    def spy(module, *args, **kwargs):
        if type(module).__name__ in ("TensorLoRA", "LumiXAdapterSet"):
            moves.append((type(module).__name__, torch.device(args[0] if args else kwargs["device"])))
        return real_to(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", spy)
    model_management.unload_all_models()
    model_management.load_models_gpu([patched])
    try:
        assert adapters in model_management.loaded_models()
        assert adapters.loaded_size() == adapters.model_size() > 0
        assert {d for _, d in moves} == {torch.device(adapters.load_device)}
        assert all(p.device == torch.device(adapters.load_device) for p in adapters.model.parameters())
        inputs = {k: v.to(adapters.load_device) for k, v in model_inputs(5, seed=3).items()}
        out = run_model(patched, inputs)
        lora = next(iter(adapters.model.adapters.values()))
        assert lora._weights_cache is not None  # the merged weight, made on the load device
    finally:
        moves.clear()
        model_management.unload_all_models()
    assert adapters not in model_management.loaded_models() and adapters.loaded_size() == 0
    assert ("LumiXAdapterSet", torch.device(adapters.offload_device)) in moves
    assert all(p.device == torch.device(adapters.offload_device) for p in adapters.model.parameters())
    assert lora._weights_cache is None  # offloading dropped the cached merge with the factors
    assert all(torch.equal(v.cpu(), weights_before[k]) for k, v in base.model.state_dict().items())
    assert torch.isfinite(out).all()


def test_cache_keeps_one_copy_shared_with_the_adapters(folder):
    base = tiny_flux(seed=4)
    for dtype in ("float32", "bfloat16"):
        patched = load(base, adapter_dtype=dtype)
        entry = cache().value
        params = {id(p): p for p in adapter_model(patched).model.parameters()}
        storages, nbytes = set(), 0
        for block in entry.checkpoint.adapters.values():
            for factors in block.values():
                for t in (factors.G1, factors.G2, factors.G3):
                    assert id(t) in params  # the checkpoint's factors are the adapters' parameters
                    storages.add(t.untyped_storage().data_ptr())
                    nbytes += t.untyped_storage().nbytes()
        assert len(storages) == len(params)
        assert nbytes == sum(p.numel() * p.element_size() for p in params.values())
        assert all(p.dtype == getattr(torch, dtype) for p in params.values())


def test_cache_reuses_an_unchanged_file(folder, monkeypatch):
    base = tiny_flux(seed=5)
    first = adapter_model(load(base))
    module = extension_module().nodes.checkpoint_cache
    calls = []
    real = module.load_checkpoint
    monkeypatch.setattr(module, "load_checkpoint", lambda path: calls.append(path) or real(path))
    again = adapter_model(load(base, strength=0.5))
    assert again is first and not calls
    adapter_model(load(base, adapter_dtype="bfloat16"))  # another dtype: read again
    assert len(calls) == 1


def test_refused_file_leaves_nothing_behind(folder, monkeypatch):
    base = tiny_flux(seed=6)
    load(base)
    kept_key, kept_value = cache().key, cache().value
    module = extension_module().nodes.checkpoint_cache
    refs = []
    real = module.load_checkpoint

    def recording(path):
        checkpoint = real(path)
        refs.extend(weakref.ref(t) for block in checkpoint.adapters.values() for f in block.values()
                    for t in (f.G1, f.G2, f.G3))
        return checkpoint

    monkeypatch.setattr(module, "load_checkpoint", recording)
    with pytest.raises(ValueError, match="width 128, but the model has width 64"):
        load(base, "mem_wide.safetensors")
    gc.collect()
    assert refs and all(r() is None for r in refs)  # not one tensor of the refused file is alive
    assert cache().key == kept_key and cache().value is kept_value


def test_replaced_file_with_preserved_mtime_is_noticed(folder):
    path = folder / "swap_lumix.safetensors"
    save_file(official_state_dict(hidden=HIDDEN, R=R, double=DOUBLE, single=SINGLE, seed=10), str(path))
    base = tiny_flux(seed=7)
    inputs = model_inputs(5, seed=8)
    first = run_model(load(base, "swap_lumix.safetensors"), inputs)
    stat = os.stat(path)
    replacement = folder / "replacement_lumix.safetensors"
    save_file(official_state_dict(hidden=HIDDEN, R=R, double=DOUBLE, single=SINGLE, seed=11), str(replacement))
    assert os.path.getsize(replacement) == stat.st_size  # same shapes, same header length
    shutil.copyfile(replacement, path)  # overwrite in place, then restore the time as cp -p does
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == stat.st_mtime_ns and os.stat(path).st_size == stat.st_size
    second = run_model(load(base, "swap_lumix.safetensors"), inputs)
    assert not torch.equal(first, second)
    assert torch.equal(second, run_model(load(base, "replacement_lumix.safetensors"), inputs))


def test_content_fingerprint_sees_data_behind_an_identical_header(tmp_path):
    fingerprint = extension_module().nodes.checkpoint_cache.content_fingerprint
    a, b, c = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    save_file(official_state_dict(hidden=HIDDEN, R=R, double=1, single=1, seed=1), str(a))
    save_file(official_state_dict(hidden=HIDDEN, R=R, double=1, single=1, seed=2), str(b))
    shutil.copyfile(a, c)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        head_a, head_b = fa.read(), fb.read()
    header_len = int.from_bytes(head_a[:8], "little")
    assert head_a[:8 + header_len] == head_b[:8 + header_len]  # only the data differs
    assert fingerprint(str(a)) == fingerprint(str(c)) != fingerprint(str(b))


def test_unknown_adapter_dtype_is_refused(folder):
    with pytest.raises(ValueError, match="adapter_dtype 'float8' is not one of auto, bfloat16, float16, float32"):
        load(tiny_flux(seed=9), adapter_dtype="float8")


def test_loaded_adapters_do_not_change_when_the_file_is_overwritten_in_place(folder):
    path = folder / "inplace_lumix.safetensors"
    save_file(official_state_dict(hidden=HIDDEN, R=R, double=DOUBLE, single=SINGLE, seed=20), str(path))
    base = tiny_flux(seed=11)
    inputs = model_inputs(5, seed=12)
    patched = load(base, "inplace_lumix.safetensors", adapter_dtype="float32")
    before = run_model(patched, inputs)
    other = folder / "other_lumix.safetensors"
    save_file(official_state_dict(hidden=HIDDEN, R=R, double=DOUBLE, single=SINGLE, seed=21), str(other))
    with open(other, "rb") as src, open(path, "r+b") as dst:  # same inode, new bytes
        dst.write(src.read())
    assert torch.equal(run_model(patched, inputs), before)


def test_models_sharing_adapters_keep_their_own_strengths(folder):
    base = tiny_flux(seed=13)
    inputs = model_inputs(5, seed=14)
    full, half = load(base), load(base, strength=0.5)
    assert adapter_model(full) is adapter_model(half)  # one copy, two strengths
    first, halved, again = run_model(full, inputs), run_model(half, inputs), run_model(full, inputs)
    assert torch.equal(first, again) and not torch.equal(first, halved)
    cache().clear()
    fresh = load(base, strength=0.5)  # new adapter modules, nothing cached yet
    assert adapter_model(fresh) is not adapter_model(half)
    assert torch.equal(run_model(fresh, inputs), halved)
