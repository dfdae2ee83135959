"""The simulated provider: a real HTTP server that rate-limits like OpenAI, Anthropic, Gemini
and GitHub do, following each one's documented status codes, headers and bodies.

It is the test double of every HTTP test and the engine of ``paceline demo``.

>>> from paceline.sim import KeyLimits, SimConfig, SimServer
>>> config = SimConfig(keys={"sk-one": KeyLimits(rpm=3), "sk-two": KeyLimits(rpm=3)})
>>> with SimServer(config) as sim:
...     base_url = sim.url  # POST f"{base_url}/v1/chat/completions" with a bearer key
"""

from paceline.sim.app import create_app
from paceline.sim.config import KeyLimits, SimConfig, parse_latency
from paceline.sim.server import SimServer, serve

__all__ = ["KeyLimits", "SimConfig", "SimServer", "create_app", "parse_latency", "serve"]
