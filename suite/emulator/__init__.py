"""The stand-in engine (`pdsuite emulate`): an OpenAI-compatible server that speaks vLLM's or SGLang's API,
metrics and P/D hand-off, with timing from a cost model. Everything it produces is labelled "emulated".

Layers: hardware.py (profiles) -> costmodel.py (seconds per step / transfer) -> scheduler.py (pure simulation,
injected clock) -> engine.py (asyncio driver) -> server.py + handoff.py (HTTP). See docs/emulator.md.
"""
