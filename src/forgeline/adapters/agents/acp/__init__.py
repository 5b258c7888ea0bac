"""Any agent that speaks the Agent Client Protocol (JSON-RPC over stdio), as a provider."""

from forgeline.adapters.agents.acp.agent import PERMISSION_MODES, AcpAgent

__all__ = ["PERMISSION_MODES", "AcpAgent"]
