"""agentfleet: a Kubernetes operator for distributed LLM agent applications."""

__all__ = ["__version__"]
__version__ = "0.1.0"
