"""Node-menu categories: one sub-menu per job under LumiX."""
ROOT = "LumiX"
MODEL = f"{ROOT}/model"        # loaders and patches that turn FLUX into LumiX
SAMPLING = f"{ROOT}/sampling"  # latents, held maps, schedules, samplers
TOOLS = f"{ROOT}/tools"        # metrics, relighting, display, saving
TRAINING = f"{ROOT}/training"  # datasets and trainers
THREED = f"{ROOT}/3D"          # to and from 3D software: render passes in, meshes out
