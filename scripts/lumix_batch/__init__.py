"""The LumiX batch client (standard library only): scenes over several ComfyUI servers, resumable.
Entry point: scripts/lumix_client.py (cli.main)."""
